"""lz4 for mfdcomp: an example third-party codec plugin (an mfdcomp extension; QEMU has no lz4).

mfdcomp finds it through the entry point in pyproject.toml, which names this
module; the registry calls :func:`mfdcomp_methods` once per process.
"""

from mfdcomp_lz4.codec import EXTENSION_ID, LZ4_INFO, Lz4Codec, Lz4Methods

__all__ = ["EXTENSION_ID", "LZ4_INFO", "Lz4Codec", "Lz4Methods", "mfdcomp_methods"]


def mfdcomp_methods() -> list[Lz4Codec]:
    """The plugin hook: the codecs this distribution provides."""
    return [Lz4Codec()]

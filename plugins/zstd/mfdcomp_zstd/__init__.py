"""QEMU's multifd zstd codec as an mfdcomp plugin (registered through the ``mfdcomp.methods`` entry points)."""

from mfdcomp_zstd.codec import FRAME_MAGIC, MAX_WINDOW, ZSTD_INFO, ZstdCodec, ZstdMethods

__all__ = ["FRAME_MAGIC", "MAX_WINDOW", "ZSTD_INFO", "ZstdCodec", "ZstdMethods", "mfdcomp_methods"]


def mfdcomp_methods() -> list[ZstdCodec]:
    """The plugin hook: the codecs this distribution provides."""
    return [ZstdCodec()]

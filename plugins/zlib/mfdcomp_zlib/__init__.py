"""QEMU's multifd zlib codec as an mfdcomp plugin (registered through the ``mfdcomp.methods`` entry points)."""

from mfdcomp_zlib.codec import SYNC_FLUSH_MARKER, ZLIB_INFO, ZlibCodec, ZlibMethods

__all__ = ["SYNC_FLUSH_MARKER", "ZLIB_INFO", "ZlibCodec", "ZlibMethods", "mfdcomp_methods"]


def mfdcomp_methods() -> list[ZlibCodec]:
    """The plugin hook: the codecs this distribution provides."""
    return [ZlibCodec()]

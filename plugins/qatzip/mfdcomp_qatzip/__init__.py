"""mfdcomp-qatzip: the QATzip codec (QEMU multifd flag 0x20) as an mfdcomp plugin.

Importing this package loads no library: libqatzip is looked for and loaded
the first time the codec is probed (see :mod:`mfdcomp_qatzip.locate` for where).
"""

from __future__ import annotations

from mfdcomp_qatzip.codec import QATZIP_INFO, QatzipCodec, QatzipMethods

__all__ = ["QATZIP_INFO", "QatzipCodec", "QatzipMethods", "mfdcomp_methods"]


def mfdcomp_methods() -> list[QatzipCodec]:
    """Hook implementation (entry point group ``mfdcomp.methods``)."""
    return [QatzipCodec()]

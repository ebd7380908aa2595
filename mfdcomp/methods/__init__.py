"""The codec contract (QEMU's MultiFDMethods) and the built-in nocomp."""

from mfdcomp.methods.contract import (
    ChannelOwner,
    Codec,
    CodecInfo,
    CodecPath,
    MultiFDMethods,
    PayloadSource,
    SendPayload,
)
from mfdcomp.methods.nocomp import NOCOMP_INFO, Nocomp, NocompMethods

__all__ = [
    "NOCOMP_INFO",
    "ChannelOwner",
    "Codec",
    "CodecInfo",
    "CodecPath",
    "MultiFDMethods",
    "Nocomp",
    "NocompMethods",
    "PayloadSource",
    "SendPayload",
]

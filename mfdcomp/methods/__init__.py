"""The codec contract (QEMU's MultiFDMethods) and the built-in nocomp."""

from mfdcomp.methods.contract import (
    ChannelOwner,
    Codec,
    CodecInfo,
    CodecPath,
    HasImplementations,
    MultiFDMethods,
    PacketCompressor,
    PacketDecompressor,
    PageViews,
    PathProbe,
    PayloadSource,
    SendPayload,
)
from mfdcomp.methods.nocomp import NOCOMP_INFO, Nocomp, NocompMethods
from mfdcomp.methods.policy import PathChoice, check_packet_path, choose_path

__all__ = [
    "NOCOMP_INFO",
    "ChannelOwner",
    "Codec",
    "CodecInfo",
    "CodecPath",
    "HasImplementations",
    "MultiFDMethods",
    "Nocomp",
    "NocompMethods",
    "PacketCompressor",
    "PacketDecompressor",
    "PageViews",
    "PathChoice",
    "PathProbe",
    "PayloadSource",
    "SendPayload",
    "check_packet_path",
    "choose_path",
]

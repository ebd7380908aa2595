"""mfdcomp: hardware-offload compression for multi-channel memory transfer,
byte-compatible with QEMU's multifd live migration."""

from mfdcomp.errors import (
    ChannelError,
    ChannelIdError,
    CodecError,
    MfdcompError,
    PluginError,
    TruncatedError,
    WireError,
)

__version__ = "0.1.0"

__all__ = [
    "ChannelError",
    "ChannelIdError",
    "CodecError",
    "MfdcompError",
    "PluginError",
    "TruncatedError",
    "WireError",
    "__version__",
]

"""mfdcomp: hardware-offload compression for multi-channel memory transfer,
byte-compatible with QEMU's multifd live migration."""

import os

# mfdcomp uses numpy for byte scans only, never linear algebra; OpenBLAS's idle
# threads would otherwise spin on the cores the channel threads need. Only a
# default: a caller's own setting wins, and numpy reads it once, at import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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

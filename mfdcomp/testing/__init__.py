"""Public helpers for testing codecs and the engine against real transports.

* :func:`run_loopback`: both ends of a session in one process over a real socket;
* :class:`AnonymousTargets`: a destination's target memory in fresh anonymous blocks;
* :class:`ForwardingStream`: the base of a stream wrapper that changes some calls;
* :mod:`mfdcomp.testing.checks`: the conformance checks, plain functions of a codec;
* :mod:`mfdcomp.testing.pytest_plugin`: the same as a pytest plugin.

Names are imported on first use: pytest loads the plugin module of this package
before coverage measurement starts, and must not pull the engine in with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mfdcomp.testing.loopback import (
        TRANSPORTS,
        AnonymousTargets,
        ForwardingStream,
        LoopbackOutcome,
        StreamWrapper,
        run_loopback,
    )

__all__ = ["TRANSPORTS", "AnonymousTargets", "ForwardingStream", "LoopbackOutcome", "StreamWrapper", "run_loopback"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("mfdcomp.testing.loopback"), name)
    raise AttributeError(f"module 'mfdcomp.testing' has no attribute {name!r}")

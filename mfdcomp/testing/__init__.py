"""Public helpers for testing codecs and the engine against real transports."""

from mfdcomp.testing.loopback import TRANSPORTS, LoopbackOutcome, StreamWrapper, run_loopback

__all__ = ["TRANSPORTS", "LoopbackOutcome", "StreamWrapper", "run_loopback"]

"""A main channel on a stream: whole messages in, whole messages out, one writer at a time."""

from __future__ import annotations

import contextlib
import threading

from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine.state import describe
from mfdcomp.errors import ChannelError, TruncatedError
from mfdcomp.transport.base import Stream

REPORT_TIMEOUT = 2.0
"""Seconds the error report may take: a peer that stopped reading must not hold up the failing side."""


class MainStream:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream  # set once
        self._write_lock = threading.Lock()  # serialises writers (main thread, error hooks)

    def write(self, data: bytes) -> None:
        with self._write_lock:
            self.stream.send_all([data])

    def report_error(self, exc: BaseException, timeout: float = REPORT_TIMEOUT) -> None:
        """Tell the peer about the first error, within ``timeout`` seconds; the peer may already be gone.

        A writer blocked on a peer that stopped reading holds the lock, and this write could block
        the same way: past the deadline the stream is shut down, which ends both.
        """
        message = mc.encode(mc.Message.ERROR, describe(exc).encode(errors="replace")[: mc.MAX_BODY])
        timer = threading.Timer(timeout, self.stream.shutdown)
        timer.daemon = True
        timer.start()
        try:
            if not self._write_lock.acquire(timeout=timeout):
                return
            try:
                with contextlib.suppress(ChannelError):
                    self.stream.send_all([message])
            finally:
                self._write_lock.release()
        finally:
            timer.cancel()
            timer.join()

    def read_opening(self) -> None:
        buf = bytearray(mc.OPENING.size)
        if self.stream.recv_exact_into(memoryview(buf)) == 0:
            raise ChannelError(f"{self.stream.name}: main channel closed before its opening")
        mc.check_opening(bytes(buf))

    def read(self) -> tuple[mc.Message, bytes] | None:
        """The next message, or None at a clean end of the stream."""
        head = bytearray(mc.MESSAGE.size)
        if self.stream.recv_exact_into(memoryview(head)) == 0:
            return None
        kind, length = mc.decode_head(bytes(head))
        body = bytearray(length)
        if length and self.stream.recv_exact_into(memoryview(body)) == 0:
            raise TruncatedError(f"main channel ended inside a {kind.name} message", field=kind.name, limit=length)
        return kind, bytes(body)

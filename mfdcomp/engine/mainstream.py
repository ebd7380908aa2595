"""A main channel on a stream: whole messages in, whole messages out, one writer at a time."""

from __future__ import annotations

import contextlib
import threading

from mfdcomp.engine import mainchannel as mc
from mfdcomp.errors import ChannelError, TruncatedError
from mfdcomp.transport.base import Stream


class MainStream:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream  # set once
        self._write_lock = threading.Lock()  # serialises writers (main thread, error hooks)

    def write(self, data: bytes) -> None:
        with self._write_lock:
            self.stream.send_all([data])

    def report_error(self, exc: BaseException) -> None:
        """Tell the peer about the first error; the peer may already be gone."""
        with contextlib.suppress(ChannelError):
            self.write(mc.encode(mc.Message.ERROR, str(exc).encode()[: mc.MAX_BODY]))

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

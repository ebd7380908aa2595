"""What the engine needs of a connection, whatever carries it.

A :class:`Stream` is one connected, ordered byte stream (a socket of some
family). Writes are scatter-gather and complete; reads land straight in the
caller's memory. ``shutdown()`` may be called from any thread and wakes every
thread blocked in the stream with a :class:`ChannelError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from typing_extensions import Buffer

from mfdcomp.errors import ChannelError


class PeerGoneError(ChannelError):
    """The peer's end went away (reset, broken pipe, ended early): the peer may say why on its main channel."""


class AcceptTimeout(ChannelError):
    """No connection arrived within accept()'s timeout."""


class ChannelEnd(Protocol):
    """What every channel's end has, a socket or a file: a name, and a way to stop it."""

    name: str
    """Printable peer description for error messages, e.g. 'tcp:127.0.0.1:4444'."""

    def shutdown(self) -> None:
        """Stop now; threads blocked in this end raise ChannelError."""

    def close(self) -> None: ...


class Stream(ChannelEnd, Protocol):
    def send_all(self, buffers: Sequence[Buffer]) -> None:
        """Write every byte of ``buffers`` in order (sendmsg, partial writes resumed)."""

    def recv_exact_into(self, view: memoryview) -> int:
        """Fill ``view`` completely; return 0 only at a clean end before the first byte.

        Ending after some bytes raises TruncatedError; reset or shutdown raises ChannelError.
        """

    def recv_into_all(self, views: Sequence[memoryview]) -> None:
        """Fill every view in order (recvmsg_into); any end before that raises."""

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes without consuming them (fewer only at end of stream)."""


@runtime_checkable
class DescriptorStream(Stream, Protocol):
    """A stream a compiled loop may read or write through its descriptor (mfdcomp.engine.fastrecv, fastsend)."""

    def readable_fd(self) -> int | None:
        """The descriptor to read from, or None while it may not be read directly (bytes are queued, say)."""

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of the stream: the next reads return it first."""

    def recv_error(self, exc: OSError) -> ChannelError:
        """The error a read of this stream that failed with ``exc`` raises."""

    def writable_fd(self) -> int | None:
        """The descriptor to write to, or None while it may not be written directly (shut down, say)."""

    def send_error(self, exc: OSError) -> ChannelError:
        """The error a write to this stream that failed with ``exc`` raises."""


@runtime_checkable
class ReaderStream(Stream, Protocol):
    """A stream without a descriptor (TLS) that the compiled receive loop reads through a method."""

    def read_some(self, view: memoryview) -> int:
        """Fill ``view`` as far as the stream goes: fewer bytes only at its end (0 there); errors raise."""

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of the stream: the next reads return it first."""


@runtime_checkable
class DirectTlsStream(Stream, Protocol):
    """A TLS stream whose session the compiled loops may read or write themselves (mfdcomp/_tlsdirect.c)."""

    def direct_session(self, writing: bool = False) -> AbstractContextManager[tuple[object, object, int, int] | None]:
        """The session spec a loop reads (or writes), held while the context lasts; None where it can't."""

    def direct_failed(self, err: int, reason: str | None, *, writing: bool = False) -> ChannelError:
        """The error a direct read (or write) raises that failed with errno ``err`` or OpenSSL's ``reason``."""


class Listener(Protocol):
    address: str
    """The address actually bound, e.g. with the port the kernel chose for port 0."""

    def accept(self, timeout: float | None = None) -> Stream:
        """The next incoming connection; raises AcceptTimeout on timeout, ChannelError after close()."""

    def close(self) -> None:
        """Stop listening; a thread blocked in accept() raises ChannelError."""

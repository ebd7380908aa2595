"""Faults on live connections of a real session: a channel or the main channel closed or reset mid-packet.

Each fault is injected into a real loopback session (``run_loopback``: the
source in the test's thread, the destination in another, real unix sockets)
by a stream wrapper that writes part of a packet and then closes the socket
(FIN) or resets it (SO_LINGER 0: RST), on the source's side or on the
destination's. Both ends must end within 10 s, each with a typed error, and
leave no thread and no descriptor behind.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typing_extensions import Buffer

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine.migrate import MigrateOptions
from mfdcomp.errors import ChannelError, MfdcompError
from mfdcomp.registry import get_codec
from mfdcomp.testing import ForwardingStream, run_loopback
from mfdcomp.transport.base import Stream
from mfdcomp.transport.sockets import SocketStream
from tests.test_engine_roundtrip import fill_mixed
from tests.test_faults_leaks import open_fds, settle

DEADLINE = 10.0

# An exception escaping a thread of either end (instead of ending as its typed error) fails the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def kill_socket(stream: Stream, how: str) -> None:
    """End the stream's TCP connection now: 'close' sends a FIN, 'reset' an RST (SO_LINGER 0, then close).

    A thread of this end may be blocked reading the same socket (the source's main-channel reader):
    shutdown(SHUT_RD) wakes it first, as the engine's own shutdown would, since closing a socket
    another thread is blocked on does not wake that thread (and keeps the connection open).
    """
    inner = stream
    while not isinstance(inner, SocketStream):
        inner = inner.inner  # type: ignore[attr-defined]
    sock: socket.socket = inner._sock  # the test needs the socket itself for SO_LINGER and shutdown
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # local only: no FIN, the close below sends the RST
    else:
        sock.shutdown(socket.SHUT_RDWR)
    inner.close()


class Injected(ChannelError):
    """The fault a wrapper injected; the end that did it reports this as its first error."""


class CutOnSend(ForwardingStream):
    """The source's end: after ``after`` whole writes, write ``cut`` bytes of the next longer one, and die."""

    def __init__(self, inner: Stream, after: int, cut: int, how: str) -> None:
        super().__init__(inner)
        self.after = after
        self.cut = cut
        self.how = how

    def send_all(self, buffers: Sequence[Buffer]) -> None:
        if self.after > 0:
            self.after -= 1
            self.inner.send_all(buffers)
            return
        data = b"".join(bytes(memoryview(b)) for b in buffers)
        if len(data) <= self.cut:  # a SYNC packet, say: the cut must fall inside this write
            self.inner.send_all([data])
            return
        self.inner.send_all([data[: self.cut]])
        kill_socket(self.inner, self.how)
        raise Injected(f"{self.name}: injected {self.how} after {min(self.cut, len(data))} of {len(data)} bytes")


class CutOnRecv(CutOnSend):
    """The destination's end: after ``after`` reads, read ``cut`` bytes of the next and die."""

    def send_all(self, buffers: Sequence[Buffer]) -> None:
        self.inner.send_all(buffers)

    def _maybe_die(self, views: Sequence[memoryview]) -> bool:
        if self.after > 0:
            self.after -= 1
            return False
        first = views[0].cast("B")
        if self.cut:
            self.inner.recv_exact_into(first[: min(self.cut, first.nbytes)])
        kill_socket(self.inner, self.how)
        raise Injected(f"{self.name}: injected {self.how} while reading")

    def recv_exact_into(self, view: memoryview) -> int:
        self._maybe_die([view])
        return self.inner.recv_exact_into(view)

    def recv_into_all(self, views: Sequence[memoryview]) -> None:
        self._maybe_die(views)
        self.inner.recv_into_all(views)


@pytest.fixture(scope="module")
def ram() -> Iterator[RamClient]:
    with RamClient.anonymous([("ram0", 8 << 20)]) as client:
        fill_mixed(client)
        yield client


@pytest.fixture(autouse=True)
def nothing_left() -> Iterator[None]:
    threads, fds = threading.active_count(), open_fds()
    yield
    settle(threads, fds)
    assert not [t for t in threading.enumerate() if t.name.startswith("mfdcomp-")]
    assert threading.active_count() <= threads
    assert not open_fds() - fds, "descriptors left open"


def session(ram: RamClient, tmp_path: Path, codec: str = "none", **wrappers: Any) -> tuple[Any, float]:
    started = time.monotonic()
    outcome = run_loopback(
        ram,
        get_codec(codec),
        MigrateOptions(channels=3, rounds=3, dirty_fraction=0.3, seed=2),
        workdir=tmp_path,
        transport="tcp",  # SO_LINGER 0 makes an RST on TCP only
        timeout=DEADLINE,
        **wrappers,
    )
    elapsed = time.monotonic() - started
    assert elapsed < DEADLINE, f"the session took {elapsed:.1f} s to end"
    return outcome, elapsed


def both_failed(outcome: Any) -> None:
    """Both ends ended with a typed error that is about the fault.

    Which end's error comes first is a race (first error wins on each side): the faulting end's
    own error, the peer's report of what it saw (a RemoteError), or the peer shutting its other
    connections down (a reset on another channel) may each be the first.
    """
    errors = (outcome.source_error, outcome.destination_error)
    for error in errors:
        assert isinstance(error, MfdcompError), repr(error)
    about_the_fault = ("injected", "reset", "ended", "closed", "broken pipe", "shut down")
    assert any(word in str(error) for error in errors for word in about_the_fault), errors


# A RAM packet header is 1344 bytes: cut inside it, or inside the payload that follows.
CUTS = {"mid-header": 700, "mid-payload": 1344 + 1000}


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("where", sorted(CUTS))
@pytest.mark.parametrize("codec", ["none", "zlib"])
def test_source_side_channel_closed_or_reset_mid_packet(
    ram: RamClient, tmp_path: Path, how: str, where: str, codec: str
) -> None:
    # Connections 1-3 are the channels. Idle channels take work themselves, so one given channel may write
    # only SYNCs after its 5th write (then no fault fired, 6 in 40 sessions): the cut goes to whichever
    # channel first writes a RAM packet longer than the cut, after its init packet, and only that one.
    armed = threading.Lock()

    class CutOnce(CutOnSend):
        def send_all(self, buffers: Sequence[Buffer]) -> None:
            long_write = self.after == 0 and sum(memoryview(b).nbytes for b in buffers) > self.cut
            if long_write and not armed.acquire(blocking=False):
                self.after = -1  # another channel took the fault
            if self.after < 0:
                self.inner.send_all(buffers)
                return
            CutOnSend.send_all(self, buffers)

    def wrap(index: int, stream: Stream) -> Stream:
        if index == 0:
            return stream
        return CutOnce(stream, after=1, cut=CUTS[where], how=how)

    outcome, _ = session(ram, tmp_path, codec, wrap=wrap)
    assert armed.locked(), "no channel wrote a packet to cut: the fault was never injected"
    both_failed(outcome)


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("cut", [0, 600])
def test_destination_side_channel_closed_or_reset_mid_packet(
    ram: RamClient, tmp_path: Path, how: str, cut: int
) -> None:
    def wrap(index: int, stream: Stream) -> Stream:
        return CutOnRecv(stream, after=6, cut=cut, how=how) if index == 1 else stream

    outcome, _ = session(ram, tmp_path, wrap_accepted=wrap)
    both_failed(outcome)


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("side", ["source", "destination"])
def test_the_main_channel_lost_mid_session(ram: RamClient, tmp_path: Path, how: str, side: str) -> None:
    """Connection 0 is the main channel on both sides; it dies after the first FLUSH."""
    if side == "source":

        def wrap(index: int, stream: Stream) -> Stream:
            return CutOnSend(stream, after=2, cut=3, how=how) if index == 0 else stream  # opening+SESSION, FLUSH

        outcome, _ = session(ram, tmp_path, wrap=wrap)
    else:

        def wrap(index: int, stream: Stream) -> Stream:
            return CutOnRecv(stream, after=4, cut=2, how=how) if index == 0 else stream

        outcome, _ = session(ram, tmp_path, wrap_accepted=wrap)
    both_failed(outcome)


def test_the_injected_faults_really_cut_a_packet(ram: RamClient, tmp_path: Path) -> None:
    """The cut-on-send wrapper hits RAM packets (not the init packet) at the write counts used above."""
    seen: list[int] = []

    class Recorder(CutOnSend):
        def send_all(self, buffers: Sequence[Buffer]) -> None:
            seen.append(sum(memoryview(b).nbytes for b in buffers))
            self.inner.send_all(buffers)

    def wrap(index: int, stream: Stream) -> Stream:
        return Recorder(stream, 0, 0, "close") if index == 2 else stream

    outcome, _ = session(ram, tmp_path, wrap=wrap)
    outcome.raise_for_errors()
    assert seen[0] == 64  # the init packet
    assert all(size > CUTS["mid-payload"] for size in seen[1:6] if size != 1344)

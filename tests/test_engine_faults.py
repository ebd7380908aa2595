"""Ordering under skewed channels, refusal of hostile connections, and failures that end both sides."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typing_extensions import Buffer

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine.incoming import Incoming
from mfdcomp.engine.migrate import MigrateOptions
from mfdcomp.errors import ChannelError, ChannelIdError, MfdcompError, WireError
from mfdcomp.registry import get_codec
from mfdcomp.testing import AnonymousTargets, ForwardingStream, run_loopback
from mfdcomp.transport.address import parse_address
from mfdcomp.transport.base import Stream
from mfdcomp.transport.sockets import listen
from mfdcomp.wire import InitPacket, RamPacket
from tests.test_engine_roundtrip import fill_mixed


class SlowStream(ForwardingStream):
    """A stream whose every write (or every read) first sleeps: one channel lags the others."""

    def __init__(self, inner: Stream, *, send_delay: float = 0.0, recv_delay: float = 0.0) -> None:
        super().__init__(inner)
        self.send_delay = send_delay
        self.recv_delay = recv_delay

    def send_all(self, buffers: Sequence[Buffer]) -> None:
        time.sleep(self.send_delay)
        self.inner.send_all(buffers)

    def recv_exact_into(self, view: memoryview) -> int:
        time.sleep(self.recv_delay)
        return self.inner.recv_exact_into(view)


@pytest.mark.parametrize("side", ["source", "destination"])
@pytest.mark.parametrize("slow_channel", [0, 2])
def test_redirtied_pages_land_in_their_newest_version(tmp_path: Path, side: str, slow_channel: int) -> None:
    """One channel lags by a millisecond per packet; later rounds' copies must still win."""

    def lag(index: int, stream: Stream) -> Stream:
        if index != slow_channel + 1:
            return stream
        if side == "source":
            return SlowStream(stream, send_delay=0.001)
        return SlowStream(stream, recv_delay=0.001)

    with RamClient.anonymous([("ram0", 2 << 20)]) as ram:
        fill_mixed(ram)
        options = MigrateOptions(channels=3, rounds=6, dirty_fraction=0.6, seed=5)
        kwargs: dict[str, Any] = {"wrap": lag} if side == "source" else {"wrap_accepted": lag}
        outcome = run_loopback(ram, get_codec("none"), options, workdir=tmp_path, **kwargs)
        outcome.raise_for_errors()
        assert outcome.destination is not None
        assert outcome.destination.digests == ram.digests()


# --- hostile connections against a real destination -------------------------------------------


# Bound on the destination's end once a test is done with it: a test fails on it, never hangs.
DESTINATION_DEADLINE = 10.0

# Every HostileSource of the running test, ended by end_hostile_sources however the test ended.
_LIVE: list[HostileSource] = []


class HostileSource:
    """A hand-driven source: a real main channel, then whatever channels a test opens."""

    def __init__(self, tmp_path: Path, channels: int = 2) -> None:
        self.sockets: list[socket.socket] = []
        self.uuid = uuidlib.uuid4()
        self.channels = channels
        self.listener = listen(parse_address(f"unix:{tmp_path / 'dst.sock'}"))
        self.path = str(tmp_path / "dst.sock")
        self.targets = AnonymousTargets()
        self.incoming = Incoming(
            self.listener,
            make_targets=self.targets,
            digests=self.targets.digests,
            find_codec=get_codec,
            connect_timeout=5.0,
        )
        self.error: BaseException | None = None
        # A daemon (and so are the threads Incoming starts from it): a test that fails before finish() must not
        # keep the interpreter in threading._shutdown waiting on a destination that waits on us.
        self.thread = threading.Thread(target=self._run, name="hostile-destination", daemon=True)
        self.thread.start()
        _LIVE.append(self)
        self.main = self.open()
        session = mc.Session(
            uuid=self.uuid.hex,
            page_size=4096,
            channels=channels,
            codec="none",
            level=None,
            zero_page_detection="multifd",
            blocks=[("ram0", 1 << 20)],
        )
        self.main.sendall(mc.opening() + mc.encode(mc.Message.SESSION, session.to_json()))

    def _run(self) -> None:
        try:
            self.incoming.run()
        except BaseException as exc:
            self.error = exc

    def open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sockets.append(sock)
        sock.connect(self.path)
        return sock

    def channel(self, channel_id: int, uuid: bytes | None = None) -> socket.socket:
        sock = self.open()
        sock.sendall(InitPacket(uuid=uuid or self.uuid.bytes, id=channel_id).encode())
        return sock

    def finish(self) -> BaseException | None:
        self.thread.join(DESTINATION_DEADLINE)
        if self.thread.is_alive():
            self.abort()
            pytest.fail(f"destination did not end within {DESTINATION_DEADLINE:.0f} s")
        self.targets.close()
        return self.error

    def abort(self) -> bool:
        """End the destination whatever it waits for (its peers gone, its state failed); whether it ended."""
        for sock in self.sockets:
            sock.close()
        if self.thread.is_alive():
            self.incoming.state.fail(ChannelError("the test ended"))
            self.thread.join(DESTINATION_DEADLINE)
        self.targets.close()
        return not self.thread.is_alive()

    def main_error_text(self) -> str:
        """What the destination wrote on the main channel: the ERROR message's text."""
        self.main.settimeout(5)
        data = b""
        while chunk := self.main.recv(65536):
            data += chunk
        return data.decode(errors="replace")


@pytest.fixture(autouse=True)
def end_hostile_sources() -> Iterator[None]:
    """After each test, passed or failed: end its destinations, and fail the test on one that would not end."""
    yield
    stuck = [src for src in _LIVE if not src.abort()]
    _LIVE.clear()
    if stuck:
        pytest.fail(f"{len(stuck)} destination thread(s) still running {DESTINATION_DEADLINE:.0f} s after the test")


def test_wrong_uuid_is_refused(tmp_path: Path) -> None:
    src = HostileSource(tmp_path)
    src.channel(0, uuid=uuidlib.uuid4().bytes)
    error = src.finish()
    assert isinstance(error, WireError) and error.field == "uuid"
    assert "uuid" in src.main_error_text()


def test_duplicate_channel_id_is_refused(tmp_path: Path) -> None:
    src = HostileSource(tmp_path)
    first = src.channel(0)
    second = src.channel(0)
    error = src.finish()
    assert isinstance(error, ChannelIdError) and "channel id 0 is already set up" in str(error)
    assert "channel" in src.main_error_text()
    first.close()
    second.close()


def test_channel_id_beyond_the_session_is_refused(tmp_path: Path) -> None:
    src = HostileSource(tmp_path, channels=2)
    src.channel(2)
    error = src.finish()
    assert isinstance(error, ChannelIdError)
    assert error.field == "id" and error.value == 2 and error.limit == 1
    assert "id" in src.main_error_text()


def test_connection_beyond_the_announced_channels_is_refused(tmp_path: Path) -> None:
    src = HostileSource(tmp_path, channels=2)
    held = [src.channel(0), src.channel(1)]
    time.sleep(0.2)  # let both be accepted before the extra one; order matters for the message
    held.append(src.channel(1))
    error = src.finish()
    assert isinstance(error, ChannelIdError)
    assert "beyond the session's 2 channels" in str(error)
    for sock in held:
        sock.close()


def test_unknown_magic_is_dropped_and_the_session_goes_on(tmp_path: Path) -> None:
    """A stranger's garbage (an HTTP probe) is dropped and counted; it never fails the session (was: WireError)."""
    src = HostileSource(tmp_path, channels=1)
    stranger = src.open()
    stranger.sendall(b"GET / HTTP/1.1\r\n\r\n")
    stranger.settimeout(DESTINATION_DEADLINE)
    with contextlib.suppress(ConnectionResetError):  # closed with our request unread: a reset
        assert stranger.recv(1) == b""  # closed by the destination
    channel = src.channel(0)
    channel.sendall(RamPacket.sync(0).encode())
    src.main.sendall(mc.encode(mc.Message.FLUSH))
    channel.close()
    src.main.sendall(mc.encode(mc.Message.EOS))
    digest = hashlib.sha256(bytes(1 << 20)).hexdigest()
    src.main.sendall(mc.encode_json(mc.Message.DIGESTS, {"digests": {"ram0": digest}}))
    assert src.finish() is None
    assert src.incoming.dropped and "unknown magic 47455420" in src.incoming.dropped[0]


def test_channel_that_never_sends_its_init_packet_ends_in_time(tmp_path: Path) -> None:
    src = HostileSource(tmp_path, channels=1)
    silent = src.open()
    src.main.sendall(mc.encode(mc.Message.FLUSH))
    started = time.monotonic()
    silent.close()
    error = src.finish()
    assert isinstance(error, ChannelError)
    assert time.monotonic() - started < 10


def test_packet_for_an_unknown_block_is_refused(tmp_path: Path) -> None:
    src = HostileSource(tmp_path, channels=1)
    sock = src.channel(0)
    packet = RamPacket.data(
        flags=0, ramblock="nope", normal=[0], zero=[], next_packet_size=4096, packet_num=0, page_size=4096
    )
    sock.sendall(packet.encode(4096) + bytes(4096))
    error = src.finish()
    assert isinstance(error, WireError) and error.field == "ramblock"
    assert "nope" in src.main_error_text()
    sock.close()


# --- a failing channel ends both sides ---------------------------------------------------------


class BreakingStream(SlowStream):
    """Fails the write after ``after`` writes (the engine then shuts every stream down)."""

    def __init__(self, inner: Stream, after: int) -> None:
        super().__init__(inner)
        self.after = after

    def send_all(self, buffers: Sequence[Buffer]) -> None:
        self.after -= 1
        if self.after < 0:
            raise ChannelError(f"{self.name}: injected failure")
        self.inner.send_all(buffers)


@pytest.mark.parametrize("broken", [0, 1, 2])
def test_one_broken_channel_ends_both_sides_with_the_first_error(tmp_path: Path, broken: int) -> None:
    def breaker(index: int, stream: Stream) -> Stream:
        return BreakingStream(stream, after=3) if index == broken else stream

    with RamClient.anonymous([("ram0", 4 << 20)]) as ram:
        fill_mixed(ram)
        started = time.monotonic()
        outcome = run_loopback(
            ram,
            get_codec("none"),
            MigrateOptions(channels=2, rounds=3, dirty_fraction=0.5),
            workdir=tmp_path,
            wrap=breaker,
            timeout=10,
        )
        elapsed = time.monotonic() - started
    assert elapsed < 5
    assert isinstance(outcome.source_error, MfdcompError)
    assert isinstance(outcome.destination_error, MfdcompError)
    assert "injected failure" in str(outcome.source_error)
    assert not [t for t in threading.enumerate() if t.name.startswith("mfdcomp-")]


def test_a_source_failing_before_it_connects_does_not_leave_the_destination_waiting(tmp_path: Path) -> None:
    with RamClient.anonymous([("ram0", 1 << 20)]) as ram:
        started = time.monotonic()
        outcome = run_loopback(ram, get_codec("none"), MigrateOptions(require_hw=True), workdir=tmp_path)
    assert time.monotonic() - started < 10
    assert isinstance(outcome.source_error, MfdcompError) and "no hardware path" in str(outcome.source_error)
    assert isinstance(outcome.destination_error, MfdcompError)
    assert "the source failed" in str(outcome.destination_error)


# --- fail() and the main channel's report -------------------------------------------------------


def test_fail_wakes_the_channels_even_when_the_peer_stopped_reading_the_main_channel() -> None:
    """Was: fail() wrote the report (blocking, the peer's buffer full) before shutting any stream down."""
    from mfdcomp.engine.mainstream import MainStream
    from mfdcomp.engine.state import RunState
    from mfdcomp.transport.sockets import SocketStream

    ours, theirs = socket.socketpair()
    main = MainStream(SocketStream(ours, "main"))  # widens the send buffer: fill it after
    ours.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            ours.send(bytes(65536))  # the peer never reads: its buffer and ours are full
    ours.setblocking(True)
    chan_ours, chan_theirs = socket.socketpair()
    channel = SocketStream(chan_ours, "channel")
    state = RunState()
    state.register(channel)
    state.register(main.stream)
    state.on_fail(main.report_error, keep=main.stream)
    woke: list[BaseException] = []

    def read() -> None:
        try:
            channel.recv_exact_into(memoryview(bytearray(4)))
        except BaseException as exc:
            woke.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    failer = threading.Thread(target=state.fail, args=(ChannelError("boom"),), daemon=True)
    started = time.monotonic()
    failer.start()
    reader.join(1.0)
    assert not reader.is_alive(), "a channel thread still blocked while fail() reported the error"
    failer.join(5)
    assert not failer.is_alive(), "fail() blocked on the report"
    assert time.monotonic() - started < 5
    assert woke and isinstance(woke[0], ChannelError)
    state.close()
    for end in (main.stream, channel):
        end.close()
    theirs.close()
    chan_theirs.close()


def test_a_failing_session_write_closes_the_main_channel(tmp_path: Path) -> None:
    """Was: the opening SESSION write was outside try/finally; a peer gone at once leaked the socket."""
    from mfdcomp.engine.migrate import migrate
    from mfdcomp.transport.sockets import connect

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "d.sock"))
    listener.listen(4)
    opened: list[Stream] = []

    def connect_then_lose_the_peer() -> Stream:
        stream = connect(parse_address(f"unix:{tmp_path / 'd.sock'}"))
        conn, _ = listener.accept()
        conn.close()  # gone before the opening: the write fails with EPIPE
        opened.append(stream)
        return stream

    fds = len(os.listdir("/proc/self/fd"))
    with RamClient.anonymous([("ram0", 1 << 20)]) as ram, pytest.raises(MfdcompError, match="broken pipe"):
        migrate(ram, connect_then_lose_the_peer, get_codec("none"), MigrateOptions(channels=1))
    listener.close()
    assert opened
    assert len(os.listdir("/proc/self/fd")) <= fds - 1, "the main channel's socket was left open"

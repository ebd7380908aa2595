"""A stalled peer: it stops sending (mid-packet, or altogether) but keeps its connections open.

Without a bound the destination would wait forever, as QEMU does. With
``listen(..., idle_timeout=S)`` (``mfdcomp recv --idle-timeout S``) every read
on an accepted connection gives up after S seconds of silence with a
ChannelError that says so; the first such error ends the session.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import make_image

from mfdcomp.engine import mainchannel as mc
from mfdcomp.errors import ChannelError
from mfdcomp.wire import InitPacket, RamPacket
from tests.test_hostile_peer import Peer, no_leaks  # noqa: F401  (the fixture: no thread or fd left)

IDLE = 1.0

# An exception escaping a thread of the destination (instead of ending as its typed error) fails the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def _stalled(error: BaseException | None) -> None:
    assert isinstance(error, ChannelError), repr(error)
    assert "the peer stalled (idle timeout)" in str(error)
    assert f"nothing received for {IDLE:g} s" in str(error)


def test_a_channel_stalled_mid_packet_ends_with_an_idle_timeout(tmp_path: Path) -> None:
    peer = Peer(tmp_path, channels=2, idle_timeout=IDLE, connect_timeout=30)
    stalled, fine = peer.all_channels()
    stalled.sendall(peer.data([0]).encode()[:600])  # and then nothing, the connection open
    fine.sendall(RamPacket.sync(1).encode())
    peer.send_main(mc.Message.FLUSH)
    _stalled(peer.finish())
    assert IDLE <= peer.elapsed < IDLE + 5
    assert "idle timeout" in peer.main_text


def test_a_channel_stalled_inside_its_payload_ends_with_an_idle_timeout(tmp_path: Path) -> None:
    peer = Peer(tmp_path, channels=1, idle_timeout=IDLE, connect_timeout=30)
    (sock,) = peer.all_channels()
    sock.sendall(peer.data([0, 4096]).encode() + bytes(5000))  # 5000 of the 8192 payload bytes
    _stalled(peer.finish())


def test_a_stalled_main_channel_ends_with_an_idle_timeout(tmp_path: Path) -> None:
    """The channels reach their SYNC; the FLUSH never comes."""
    peer = Peer(tmp_path, channels=2, idle_timeout=IDLE, connect_timeout=30)
    for sock in peer.all_channels():
        sock.sendall(RamPacket.sync(1).encode())
    _stalled(peer.finish())


def test_a_silent_connection_ends_before_the_connect_timeout(tmp_path: Path) -> None:
    """A connection that never sends its magic is dropped at its idle timeout (it no longer holds the
    acceptor); the session then ends on its main channel's own idle timeout."""
    peer = Peer(tmp_path, channels=2, idle_timeout=IDLE, connect_timeout=60)
    peer.open()
    _stalled(peer.finish())
    assert peer.elapsed < 10


def _recv(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    sock = tmp_path / "mfd.sock"
    out = tmp_path / "dst.img"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfdcomp", "recv", "--listen", f"unix:{sock}", "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc, sock


def test_recv_with_idle_timeout_ends_a_stalled_peer(tmp_path: Path) -> None:
    recv, path = _recv(tmp_path, "--idle-timeout", "1")
    session = mc.Session("00" * 16, 4096, 1, "none", None, "multifd", [("ram0", 1 << 20)])
    with socket.socket(socket.AF_UNIX) as main, socket.socket(socket.AF_UNIX) as channel:
        main.connect(str(path))
        main.sendall(mc.opening() + mc.encode(mc.Message.SESSION, session.to_json()))
        channel.connect(str(path))
        channel.sendall(InitPacket(uuid=bytes(16), id=0).encode() + b"\x11\x22\x33\x44\x00")  # a header's start
        started = time.monotonic()
        try:
            _, stderr = recv.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            recv.kill()
            recv.communicate()
            pytest.fail("mfdcomp recv --idle-timeout 1 still waited on a stalled peer 10 s later")
    assert recv.returncode != 0
    assert time.monotonic() - started < 10
    assert "the peer stalled (idle timeout)" in stderr, stderr


def test_a_good_session_is_not_cut_by_the_idle_timeout(tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "16M", seed=4)
    recv, path = _recv(tmp_path, "--idle-timeout", "5")
    send = subprocess.run(
        [sys.executable, "-m", "mfdcomp", "send", str(image), "--to", f"unix:{path}", "--multifd-channels", "4",
         "--rounds", "4", "--dirty-fraction", "0.2"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    stdout, stderr = recv.communicate(timeout=60)
    assert send.returncode == 0, send.stderr
    assert recv.returncode == 0, stderr
    assert stdout.strip().splitlines()[-1].startswith("xxh3-128 ")  # send's default digest


# --- the source's side: a destination that accepts and never reads, or never answers --------------


class SilentDestination:
    """A real listening socket that accepts every connection and keeps it, reading nothing.

    With ``ready``, it answers the main channel's SESSION with READY first (then reads no more).
    """

    def __init__(self, path: Path, ready: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.ready = ready
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.held.append(conn)
                if self.ready and len(self.held) == 1:
                    conn.recv(65536)  # the opening and SESSION
                    conn.sendall(mc.encode(mc.Message.READY))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
        for conn in self.held:
            conn.close()


def _send(tmp_path: Path, image: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "mfdcomp", "send", str(image), "--to", f"unix:{tmp_path / 'dst.sock'}", *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done, time.monotonic() - started


def test_send_with_idle_timeout_ends_on_a_destination_that_never_answers(tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "4M", seed=1)
    dest = SilentDestination(tmp_path / "dst.sock")
    try:
        done, elapsed = _send(tmp_path, image, "--idle-timeout", "1")
    finally:
        dest.close()
    assert done.returncode == 1, done.stderr
    assert elapsed < 15
    assert "waiting for the destination to accept the session" in done.stderr, done.stderr


def test_send_with_idle_timeout_ends_on_a_destination_that_never_reads(tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "32M", seed=2)
    dest = SilentDestination(tmp_path / "dst.sock", ready=True)
    try:
        done, elapsed = _send(tmp_path, image, "--idle-timeout", "1", "--zero-page-detection", "none")
    finally:
        dest.close()
    assert done.returncode == 1, done.stderr
    assert elapsed < 15
    assert "nothing could be sent for 1 s: the peer stopped reading (idle timeout)" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_send_result_timeout_is_an_option(tmp_path: Path) -> None:
    """The source's wait for the verdict: --result-timeout (was fixed at 60 s)."""
    image = make_image(tmp_path / "src.img", "4M", seed=3)
    dest = SilentDestination(tmp_path / "dst.sock")
    try:
        done, elapsed = _send(tmp_path, image, "--result-timeout", "1")
    finally:
        dest.close()
    assert done.returncode == 1, done.stderr
    assert elapsed < 15
    assert "timed out after 1 s waiting for the destination to accept the session" in done.stderr, done.stderr

"""Strangers' connections at the destination: classified on their own threads, each within its own deadline.

An idle or garbage connection is dropped and counted; it never delays nor fails a healthy session, and
it is closed when the session ends. Real Incoming, real migrate, real unix sockets.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine.incoming import Incoming
from mfdcomp.engine.migrate import MigrateOptions, migrate
from mfdcomp.registry import get_codec
from mfdcomp.testing import AnonymousTargets
from mfdcomp.transport.address import parse_address
from mfdcomp.transport.sockets import connect, listen
from tests.test_engine_roundtrip import fill_mixed

DEADLINE = 15.0


class Destination:
    """A real Incoming on a unix socket, on a daemon thread (a failing test never hangs pytest)."""

    def __init__(self, tmp_path: Path, **kwargs: Any) -> None:
        self.path = str(tmp_path / "dst.sock")
        self.targets = AnonymousTargets()
        idle = kwargs.pop("idle_timeout", None)
        self.incoming = Incoming(
            listen(parse_address(f"unix:{self.path}"), idle_timeout=idle),
            make_targets=self.targets,
            digests=self.targets.digests,
            find_codec=get_codec,
            **kwargs,
        )
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.outcome["result"] = self.incoming.run()
        except BaseException as exc:
            self.outcome["error"] = exc

    def stranger(self, data: bytes = b"") -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        if data:
            sock.sendall(data)
        return sock

    def join(self) -> Any:
        self.thread.join(DEADLINE)
        if self.thread.is_alive():
            from mfdcomp.errors import ChannelError

            self.incoming.state.fail(ChannelError("the test ended"))
            self.thread.join(DEADLINE)
            pytest.fail(f"destination still running {DEADLINE} s after the source ended")
        self.targets.close()
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["result"]


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture
def ram() -> Iterator[RamClient]:
    with RamClient.anonymous([("ram0", 4 << 20)]) as client:
        fill_mixed(client)
        yield client


def send(dest: Destination, ram: RamClient, **hooks: Any) -> Any:
    address = parse_address(f"unix:{dest.path}")
    options = MigrateOptions(channels=2, rounds=2, dirty_fraction=0.3, result_timeout=8.0)
    return migrate(ram, lambda: connect(address), get_codec("none"), options, **hooks)


def test_an_idle_connection_before_the_source_does_not_hold_the_session(tmp_path: Path, ram: RamClient) -> None:
    """Was: the accept thread sat in the stranger's peek, the main channel was never accepted."""
    dest = Destination(tmp_path)
    with dest.stranger() as idle:
        time.sleep(0.2)  # accepted first
        started = time.monotonic()
        result = send(dest, ram)
        assert time.monotonic() - started < 8  # not the 10 s handshake deadline, nor the result timeout
        assert result.ok
        assert dest.join().ok
        assert closed_by_peer(idle, 5), "the stranger's connection was left open after the session"


def test_an_idle_connection_during_the_transfer_does_not_keep_recv_running(tmp_path: Path, ram: RamClient) -> None:
    """Was: the source ended 'identical' but the destination waited on the stranger forever."""
    dest = Destination(tmp_path)
    strangers: list[socket.socket] = []

    def on_progress(_: int) -> None:
        if not strangers:
            strangers.append(dest.stranger())

    try:
        assert send(dest, ram, on_progress=on_progress).ok
        started = time.monotonic()
        result = dest.join()
        assert time.monotonic() - started < 5
        assert result.ok
        assert strangers and closed_by_peer(strangers[0], 5)
    finally:
        for sock in strangers:
            sock.close()


def test_an_idle_connection_with_an_idle_timeout_is_dropped_not_blamed_on_the_peer(
    tmp_path: Path, ram: RamClient
) -> None:
    """Was: the stranger's idle timeout failed the healthy session ('the peer stalled')."""
    dest = Destination(tmp_path, idle_timeout=0.5)
    with dest.stranger():
        time.sleep(1.0)  # the stranger's idle timeout comes first
        assert send(dest, ram).ok
        result = dest.join()
    assert result.ok
    assert any("idle timeout" in why for why in result.dropped_connections), result.dropped_connections


def test_garbage_connections_are_dropped_and_counted(tmp_path: Path, ram: RamClient) -> None:
    dest = Destination(tmp_path)
    with dest.stranger(b"GET / HTTP/1.1\r\n\r\n"), dest.stranger(b"QE"):
        with contextlib.closing(dest.stranger()) as late:
            late.close()
        assert send(dest, ram).ok
        result = dest.join()
    assert result.ok
    assert len(result.dropped_connections) >= 2
    assert any("unknown magic 47455420" in why for why in result.dropped_connections)
    assert result.as_dict()["dropped_connections"] == result.dropped_connections
    # The destination's steps, timed from the main channel's arrival: a stranger's wait is not among them.
    # A sha256 session (the API's default) hashes its targets after the end of stream.
    phases = result.as_dict()["phases"]
    assert list(phases) == [
        "session read", "targets allocated", "session accepted", "end of stream",
        "destination hashed", "source digests read", "verified",
    ]  # fmt: skip
    assert list(phases.values()) == sorted(phases.values()) and phases["verified"] <= result.seconds


def test_a_silent_connection_is_closed_at_its_handshake_deadline(tmp_path: Path, ram: RamClient) -> None:
    dest = Destination(tmp_path, handshake_timeout=0.5)
    with dest.stranger() as idle:
        started = time.monotonic()
        assert closed_by_peer(idle, 5)
        assert time.monotonic() - started < 3
        assert send(dest, ram).ok
        result = dest.join()
    assert any("no complete handshake within 0.5 s" in why for why in result.dropped_connections)


def test_a_failure_after_verification_reaches_the_source_not_an_ok(tmp_path: Path, ram: RamClient) -> None:
    """recv renames its targets in on_verified: if that fails, the source must not have been told 'ok'."""
    from mfdcomp.errors import MfdcompError, TargetError

    def refuse() -> None:
        raise TargetError("cannot rename the target into place")

    dest = Destination(tmp_path, on_verified=refuse)
    with pytest.raises(MfdcompError, match="destination: cannot rename the target into place"):
        send(dest, ram)
    with pytest.raises(TargetError):
        dest.join()


def test_on_verified_runs_once_before_the_source_hears_ok(tmp_path: Path, ram: RamClient) -> None:
    calls: list[float] = []
    dest = Destination(tmp_path, on_verified=lambda: calls.append(time.monotonic()))
    result = send(dest, ram)
    told = time.monotonic()
    assert result.ok and dest.join().ok
    assert len(calls) == 1 and calls[0] <= told

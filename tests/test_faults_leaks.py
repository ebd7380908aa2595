"""Failing sessions leave nothing behind: no thread, no open descriptor."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid as uuidlib
from pathlib import Path

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine import mainchannel as mc
from mfdcomp.errors import MfdcompError
from mfdcomp.registry import get_codec
from mfdcomp.wire import InitPacket
from tests.test_faults_regressions import destination, start


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def settle(threads: int, fds: set[int], seconds: float = 5.0) -> None:
    """Wait (briefly) until the thread count and the open descriptors are back to the baseline."""
    deadline = time.monotonic() + seconds
    while (threading.active_count() > threads or open_fds() - fds) and time.monotonic() < deadline:
        time.sleep(0.01)


def refused_session(tmp_path: Path, init: bytes) -> BaseException | None:
    """A destination whose only channel sends ``init``; returns the destination's error."""
    path = str(tmp_path / f"{uuidlib.uuid4().hex[:8]}.sock")
    incoming, targets = destination(path)
    thread, error = start(incoming)
    with socket.socket(socket.AF_UNIX) as main, socket.socket(socket.AF_UNIX) as channel:
        main.connect(path)
        session = mc.Session(uuidlib.UUID(int=1).hex, 4096, 1, "none", None, "multifd", [("ram0", 1 << 20)])
        main.sendall(mc.opening() + mc.encode(mc.Message.SESSION, session.to_json()))
        channel.connect(path)
        channel.sendall(init)
        thread.join(10)
        assert not thread.is_alive()
    targets.close()
    return error[0] if error else None


def test_a_refused_connection_is_closed_by_the_destination(tmp_path: Path) -> None:
    """Regression: a connection refused while it was classified (bad init packet) stayed open for good."""
    wrong_uuid = InitPacket(uuid=uuidlib.uuid4().bytes, id=0).encode()
    refused_session(tmp_path, wrong_uuid)  # the first session loads whatever is loaded once
    threads, fds = threading.active_count(), open_fds()
    for _ in range(5):
        error = refused_session(tmp_path, wrong_uuid)
        assert isinstance(error, MfdcompError) and "uuid" in str(error)
    settle(threads, fds)
    assert not open_fds() - fds, "descriptors of refused connections were left open"


# --- 200 failing sessions in one process -----------------------------------------------------------

SESSIONS = int(os.environ.get("MFDCOMP_LEAK_SESSIONS", "200"))


def _loopback_failure(ram: RamClient, tmp_path: Path, number: int) -> None:
    """A real loopback session (tcp) with a channel or the main channel dying on either side."""
    from mfdcomp.engine.migrate import MigrateOptions
    from mfdcomp.testing import run_loopback
    from mfdcomp.transport.base import Stream
    from tests.test_faults_channels import CutOnRecv, CutOnSend

    how = ("close", "reset")[number % 2]
    index = (number // 2) % 3  # the main channel, channel 0 or channel 1
    on_source = number % 4 < 2

    def wrap(i: int, stream: Stream) -> Stream:
        if i != index:
            return stream
        cut = 2 if i == 0 else 700  # inside a main-channel message, or inside a RAM packet's header
        return CutOnSend(stream, 1, cut, how) if on_source else CutOnRecv(stream, 2, cut, how)

    outcome = run_loopback(
        ram,
        get_codec(("none", "zlib")[number % 5 == 0]),
        MigrateOptions(channels=2, rounds=2, dirty_fraction=0.5, seed=number),
        workdir=tmp_path,
        transport="tcp",
        timeout=10,
        **({"wrap": wrap} if on_source else {"wrap_accepted": wrap}),
    )
    assert isinstance(outcome.source_error, MfdcompError) or isinstance(outcome.destination_error, MfdcompError)


def _stalled(tmp_path: Path, number: int) -> None:
    """A destination with a 50 ms idle timeout and a channel that stops mid-packet."""
    from tests.test_hostile_peer import Peer

    where = tmp_path / f"s{number}"
    where.mkdir()
    peer = Peer(where, channels=1, idle_timeout=0.05, connect_timeout=10)
    (sock,) = peer.all_channels()
    sock.sendall(peer.data([0]).encode()[:100])
    assert "idle timeout" in str(peer.finish())


def _file_full(tmp_path: Path, number: int) -> None:
    """A file transfer onto a disk that fills up (simulated) half-way through the pages."""
    import pytest

    from mfdcomp.engine import mappedram
    from mfdcomp.engine.migrate import MigrateOptions
    from tests.test_faults_regressions import _Disk

    with RamClient.anonymous([("ram0", 1 << 20)]) as ram, pytest.MonkeyPatch.context() as patch:
        ram.blocks["ram0"].memory[:] = bytes(range(256)) * 4096
        patch.setattr(mappedram.os, "pwrite", _Disk(100))
        try:
            mappedram.save_to_file(ram, tmp_path / f"f{number}.mr", get_codec("none"), MigrateOptions(channels=2))
        except MfdcompError as exc:
            assert "No space left" in str(exc)
        else:
            raise AssertionError("the full disk went unnoticed")


def test_200_failing_sessions_leave_no_thread_and_no_descriptor(tmp_path: Path) -> None:
    from tests.test_engine_roundtrip import fill_mixed

    wrong_uuid = InitPacket(uuid=uuidlib.uuid4().bytes, id=0).encode()
    with RamClient.anonymous([("ram0", 2 << 20)]) as ram:
        fill_mixed(ram)
        kinds = [
            lambda n: _loopback_failure(ram, tmp_path, n),
            lambda n: refused_session(tmp_path, wrong_uuid),
            lambda n: _stalled(tmp_path, n),
            lambda n: _file_full(tmp_path, n),
        ]
        weights = [12, 4, 2, 2]  # of every 20 sessions
        plan = [kind for kind, weight in zip(kinds, weights, strict=True) for _ in range(weight)]
        for kind in kinds:  # one of each first: whatever loads once is loaded before the baseline
            kind(0)
        settle(threading.active_count(), open_fds(), 1.0)
        threads, fds = threading.active_count(), open_fds()
        for number in range(SESSIONS):
            plan[number % len(plan)](number + 1)
        settle(threads, fds)
        leaked_threads = [t.name for t in threading.enumerate()][threads:]
        assert threading.active_count() == threads, f"threads left: {leaked_threads}"
        assert not open_fds() - fds, "descriptors left open: " + ", ".join(
            f"{fd} {os.readlink(f'/proc/self/fd/{fd}')}" for fd in sorted(open_fds() - fds) if _exists(fd)
        )


def _exists(fd: int) -> bool:
    return os.path.exists(f"/proc/self/fd/{fd}")

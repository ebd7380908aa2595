"""Failing sessions leave nothing behind: no thread, no open descriptor."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine.incoming import Incoming
from mfdcomp.errors import MfdcompError
from mfdcomp.registry import get_codec
from mfdcomp.transport.address import parse_address
from mfdcomp.transport.sockets import listen
from mfdcomp.wire import InitPacket


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
    targets: list[RamClient] = []

    def make_targets(session: mc.Session) -> Any:
        targets.append(RamClient.anonymous(session.blocks))
        return targets[0].blocks

    incoming = Incoming(
        listen(parse_address(f"unix:{path}")),
        make_targets=make_targets,
        digests=lambda: targets[0].digests(),
        find_codec=get_codec,
        connect_timeout=5.0,
    )
    error: list[BaseException] = []

    def run() -> None:
        try:
            incoming.run()
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    with socket.socket(socket.AF_UNIX) as main, socket.socket(socket.AF_UNIX) as channel:
        main.connect(path)
        session = mc.Session(uuidlib.UUID(int=1).hex, 4096, 1, "none", None, "multifd", [("ram0", 1 << 20)])
        main.sendall(mc.opening() + mc.encode(mc.Message.SESSION, session.to_json()))
        channel.connect(path)
        channel.sendall(init)
        thread.join(10)
        assert not thread.is_alive()
    for target in targets:
        target.close()
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

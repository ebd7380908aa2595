"""Source and destination engines over real sockets: pages arrive, digests agree."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine.incoming import Incoming, IncomingResult
from mfdcomp.engine.migrate import MigrateOptions, migrate
from mfdcomp.registry import get_codec
from mfdcomp.transport.address import parse_address
from mfdcomp.transport.sockets import connect, listen

SIZE = 4 << 20


def _fill(ram: RamClient) -> None:
    """Mixed pages: zero, random, half-zero."""
    rng = np.random.default_rng(7)
    memory = np.frombuffer(ram.blocks["ram0"].memory, dtype=np.uint8).reshape(-1, 4096)
    kinds = rng.integers(0, 3, len(memory))
    memory[kinds == 1] = rng.integers(0, 256, (int((kinds == 1).sum()), 4096), dtype=np.uint8)
    memory[kinds == 2, :2048] = rng.integers(0, 256, (int((kinds == 2).sum()), 2048), dtype=np.uint8)


@pytest.mark.parametrize("zero_mode", ["none", "legacy", "multifd"])
@pytest.mark.parametrize("channels", [1, 2, 4])
@pytest.mark.parametrize("transport", ["tcp", "tcp6", "unix", "fd"])
def test_roundtrip(tmp_path: Path, transport: str, channels: int, zero_mode: str) -> None:
    if transport == "fd":
        # One inherited socketpair carries every connection as a passed fd.
        left, right = socket.socketpair()
        listener = listen(parse_address(f"fd:{right.fileno()}"))
        address = parse_address(f"fd:{left.fileno()}")
    else:
        text = {"tcp": "tcp:127.0.0.1:0", "tcp6": "tcp:[::1]:0", "unix": f"unix:{tmp_path / 'sock'}"}[transport]
        listener = listen(parse_address(text))
        address = parse_address(listener.address)
    targets: list[RamClient] = []
    inherited = (left, right) if transport == "fd" else ()

    def make_targets(session: mc.Session) -> Any:
        targets.append(RamClient.anonymous(session.blocks, page_size=session.page_size))
        return targets[0].blocks

    incoming = Incoming(
        listener, make_targets=make_targets, digests=lambda: targets[0].digests(), find_codec=get_codec
    )
    outcome: dict[str, IncomingResult] = {}
    dest = threading.Thread(target=lambda: outcome.update(result=incoming.run()))
    dest.start()
    with RamClient.anonymous([("ram0", SIZE)]) as ram:
        _fill(ram)
        options = MigrateOptions(channels=channels, zero_page_detection=zero_mode, rounds=3, dirty_fraction=0.2)
        result = migrate(ram, lambda: connect(address), get_codec("none"), options)
        source_digests = ram.digests()
    dest.join(timeout=30)
    assert not dest.is_alive()
    assert result.ok
    assert outcome["result"].ok
    assert outcome["result"].digests == source_digests
    syncs = sum(c.sync_packets for c in result.channels)
    assert syncs == 3 * channels
    for target in targets:
        target.close()
    for sock in inherited:
        sock.close()

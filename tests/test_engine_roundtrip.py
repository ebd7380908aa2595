"""Source and destination engines over real sockets: pages arrive, digests agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine.migrate import MigrateOptions
from mfdcomp.registry import get_codec
from mfdcomp.testing import TRANSPORTS, run_loopback

SIZE = 4 << 20


def fill_mixed(ram: RamClient, seed: int = 7) -> None:
    """Mixed pages: zero, random, half-zero."""
    rng = np.random.default_rng(seed)
    for block in ram.blocks.values():
        memory = np.frombuffer(block.memory, dtype=np.uint8).reshape(-1, 4096)
        kinds = rng.integers(0, 3, len(memory))
        memory[kinds == 1] = rng.integers(0, 256, (int((kinds == 1).sum()), 4096), dtype=np.uint8)
        memory[kinds == 2, :2048] = rng.integers(0, 256, (int((kinds == 2).sum()), 2048), dtype=np.uint8)


@pytest.mark.parametrize("zero_mode", ["none", "legacy", "multifd"])
@pytest.mark.parametrize("channels", [1, 2, 4, 8])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_roundtrip(tmp_path: Path, transport: str, channels: int, zero_mode: str) -> None:
    with RamClient.anonymous([("ram0", SIZE)]) as ram:
        fill_mixed(ram)
        options = MigrateOptions(channels=channels, zero_page_detection=zero_mode, rounds=3, dirty_fraction=0.2)
        outcome = run_loopback(ram, get_codec("none"), options, workdir=tmp_path, transport=transport)
        outcome.raise_for_errors()
        source_digests = ram.digests()
    assert outcome.source is not None and outcome.destination is not None
    assert outcome.destination.digests == source_digests
    assert sum(c.sync_packets for c in outcome.source.channels) == 3 * channels
    assert sum(c.sync_packets for c in outcome.destination.channels) == 3 * channels


def test_several_blocks(tmp_path: Path) -> None:
    layout = [("pc.ram", 2 << 20), ("/rom@etc/acpi/tables", 128 << 10), ("vga.vram", 1 << 20)]
    with RamClient.anonymous(layout) as ram:
        fill_mixed(ram, seed=3)
        options = MigrateOptions(channels=3, rounds=2, dirty_fraction=0.5)
        outcome = run_loopback(ram, get_codec("none"), options, workdir=tmp_path)
        outcome.raise_for_errors()
        assert outcome.destination is not None
        assert outcome.destination.digests == ram.digests()
        assert set(outcome.destination.digests) == {name for name, _ in layout}

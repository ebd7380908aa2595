"""Per-channel counters, written by one channel thread and read after it ends."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ChannelStats:
    channel: int
    packets: int = 0
    sync_packets: int = 0
    normal_pages: int = 0
    zero_pages: int = 0
    wire_bytes: int = 0
    payload_bytes: int = 0
    paths: Counter[str] = field(default_factory=Counter)
    # Packets with normal pages by the implementation that encoded or decoded them (isal, zlib, libqpl...).
    implementations: Counter[str] = field(default_factory=Counter)

    def count(self, path: str, implementation: str, packets: int = 1) -> None:
        """Packets with normal pages, through ``path``, by ``implementation`` ("" when the codec does not say)."""
        self.paths[path] += packets
        if implementation:
            self.implementations[implementation] += packets

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "packets": self.packets,
            "sync_packets": self.sync_packets,
            "normal_pages": self.normal_pages,
            "zero_pages": self.zero_pages,
            "wire_bytes": self.wire_bytes,
            "payload_bytes": self.payload_bytes,
            "paths": dict(self.paths),
            "implementations": dict(self.implementations),
        }


def totals(stats: list[ChannelStats]) -> dict[str, Any]:
    paths: Counter[str] = Counter()
    implementations: Counter[str] = Counter()
    for s in stats:
        paths.update(s.paths)
        implementations.update(s.implementations)
    return {
        "packets": sum(s.packets for s in stats),
        "sync_packets": sum(s.sync_packets for s in stats),
        "normal_pages": sum(s.normal_pages for s in stats),
        "zero_pages": sum(s.zero_pages for s in stats),
        "wire_bytes": sum(s.wire_bytes for s in stats),
        "payload_bytes": sum(s.payload_bytes for s in stats),
        "paths": dict(paths),
        "implementations": dict(implementations),
    }

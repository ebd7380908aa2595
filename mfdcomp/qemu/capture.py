"""Recorded multifd connections: classify, summarise, and read them as events.

A capture is one file per connection, as recorded on the wire from source to
destination. Multifd channels start with the multifd magic, QEMU's main
stream with "QEVM".
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mfdcomp.errors import MfdcompError, WireError
from mfdcomp.wire import (
    MULTIFD_MAGIC,
    QEMU_VM_FILE_MAGIC,
    ChannelIds,
    ChannelInit,
    ChannelReader,
    DeviceState,
    Event,
    RamData,
    ReceiverLimits,
    Sync,
    codec_name,
)

# Files are fed to the reader this many bytes at a time, so memory stays flat.
_CHUNK = 1 << 20

ConnectionKind = Literal["multifd", "main"]

# The manifest format that replay.replay_capture reads (the shared vectors' layout).
CAPTURE_FORMAT = "qemu-multifd-capture/1"


def classify(path: Path) -> ConnectionKind:
    """Which kind of connection a recorded file holds, by its first 4 bytes."""
    with path.open("rb") as f:
        head = f.read(4)
    if len(head) == 4:
        (magic,) = struct.unpack(">I", head)
        if magic == MULTIFD_MAGIC:
            return "multifd"
        if magic == QEMU_VM_FILE_MAGIC:
            return "main"
    raise WireError(
        f"{path}: not a multifd channel nor a QEMU main stream (starts {head.hex() or 'empty'})",
        field="magic",
        value=head.hex(),
        limit=f"{MULTIFD_MAGIC:08x} or {QEMU_VM_FILE_MAGIC:08x}",
    )


def channel_events(path: Path, limits: ReceiverLimits, ids: ChannelIds | None = None) -> Iterator[Event]:
    """Every event of one recorded channel, read in bounded chunks.

    Errors carry the file name and the byte offset where the packet began.
    """
    reader = ChannelReader(limits, channel_ids=ids)
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else contextlib.nullcontext(b"")
        with mapping as data:
            for start in range(0, size, _CHUNK):
                reader.feed(data[start : start + _CHUNK])
                yield from _located(reader, path)
            reader.feed_eof()
            yield from _located(reader, path)


def _located(reader: ChannelReader, path: Path) -> Iterator[Event]:
    try:
        yield from reader
    except WireError as exc:
        raise type(exc)(
            f"{path}: at byte {reader.consumed}: {exc}", field=exc.field, value=exc.value, limit=exc.limit
        ) from exc


@dataclass
class BlockCount:
    packets: int = 0
    normal_pages: int = 0
    zero_pages: int = 0


@dataclass
class ChannelSummary:
    """What one recorded multifd channel carried."""

    file: str
    bytes: int
    channel_id: int = -1
    uuid: str = ""
    packets: int = 0
    sync_packets: int = 0
    sync_packets_with_pages: int = 0
    data_packets: int = 0
    normal_pages: int = 0
    zero_pages: int = 0
    payload_bytes: int = 0
    device_state_packets: int = 0
    device_state_bytes: int = 0
    packet_num_min: int | None = None
    packet_num_max: int | None = None
    codecs: Counter[str] = field(default_factory=Counter)
    ramblocks: dict[str, BlockCount] = field(default_factory=dict)

    def add(self, event: Event) -> None:
        if isinstance(event, ChannelInit):
            self.channel_id = event.packet.id
            self.uuid = event.packet.uuid.hex()
        elif isinstance(event, DeviceState):
            self.device_state_packets += 1
            self.device_state_bytes += len(event.blob)
        elif isinstance(event, RamData):
            self._ram(event)
        elif isinstance(event, Sync):
            self.sync_packets += 1
            if event.packet.has_pages:
                self.sync_packets_with_pages += 1
            else:
                self._count_packet(event.packet.packet_num)

    def _count_packet(self, packet_num: int) -> None:
        self.packets += 1
        self.packet_num_min = packet_num if self.packet_num_min is None else min(self.packet_num_min, packet_num)
        self.packet_num_max = packet_num if self.packet_num_max is None else max(self.packet_num_max, packet_num)

    def _ram(self, event: RamData) -> None:
        packet = event.packet
        self._count_packet(packet.packet_num)
        if not packet.has_pages:
            return
        self.data_packets += 1
        self.normal_pages += packet.normal_pages
        self.zero_pages += packet.zero_pages
        self.payload_bytes += len(event.payload)
        self.codecs[codec_name(packet.flags)] += 1
        block = self.ramblocks.setdefault(packet.ramblock, BlockCount())
        block.packets += 1
        block.normal_pages += packet.normal_pages
        block.zero_pages += packet.zero_pages


def summarize_channel(path: Path, limits: ReceiverLimits, ids: ChannelIds | None = None) -> ChannelSummary:
    summary = ChannelSummary(file=str(path), bytes=path.stat().st_size)
    for event in channel_events(path, limits, ids):
        summary.add(event)
    return summary


def split_connections(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(multifd channel files, main stream files) of a capture."""
    multifd: list[Path] = []
    main: list[Path] = []
    for path in paths:
        try:
            kind = classify(path)
        except OSError as exc:
            raise MfdcompError(f"cannot read {path}: {exc.strerror or exc}") from exc
        (multifd if kind == "multifd" else main).append(path)
    return multifd, main


def channel_file_name(channel_id: int) -> str:
    """A multifd channel's file in a capture directory: named by its init packet's id."""
    return f"ch{channel_id}.bin"


def write_capture_manifest(
    directory: Path,
    *,
    page_size: int,
    main_file: str | None,
    channels: Mapping[int, Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``manifest.json`` of a recorded capture; ``channels`` maps each channel id to its facts (with "file")."""
    manifest: dict[str, Any] = {
        "format": CAPTURE_FORMAT,
        "page_size": page_size,
        "main_channel": {"file": main_file} if main_file is not None else None,
        "multifd_channels": {str(cid): dict(facts) for cid, facts in sorted(channels.items())},
    }
    manifest |= dict(extra or {})
    path = directory / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path

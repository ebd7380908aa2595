"""The wire reader against real QEMU channels (tests/conftest.py picks the captures).

Every channel file is read whole, in random splits and one byte at a time; its
packets must equal the manifest's ``packets_list``; damaged copies (trailing
garbage, truncation, a corrupted field) must fail with a typed WireError.
"""

from __future__ import annotations

import json
import random
import struct
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfdcomp.errors import TruncatedError, WireError
from mfdcomp.qemu.capture import channel_events
from mfdcomp.wire import (
    MULTIFD_MAGIC,
    ChannelIds,
    ChannelInit,
    ChannelReader,
    DeviceState,
    DeviceStatePacket,
    EndOfStream,
    Event,
    Flag,
    NeedData,
    RamData,
    RamPacket,
    ReceiverLimits,
    Sync,
    ram_packet_size,
    read_channel,
)

CODEC_FLAGS = {
    "none": 0,
    "zlib": Flag.ZLIB,
    "zstd": Flag.ZSTD,
    "qpl": Flag.QPL,
    "uadk": Flag.UADK,
    "qatzip": Flag.QATZIP,
}
PACKET = ram_packet_size()  # 1344 bytes for 4 KiB pages
# Byte-at-a-time costs about 1 s per MB (several times that under coverage): the legacy capture's
# channels are fed byte by byte whole, the others' first BYTEWISE_PREFIX bytes and windows of
# 2 * BYTEWISE_WINDOW bytes around a few packet boundaries (the rest in large chunks).
BYTEWISE_PREFIX = 64 * 1024
BYTEWISE_WINDOW = 2500


# --- helpers ----------------------------------------------------------------------------------------


@cache
def manifest(capture: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((capture / "manifest.json").read_text())
    return data


def channels(capture: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """(channel id, file, manifest entry) of every multifd channel of a capture."""
    return [
        (cid, capture / entry["file"], entry) for cid, entry in sorted(manifest(capture)["multifd_channels"].items())
    ]


@cache
def channel_bytes(path: Path) -> bytes:
    return path.read_bytes()


def strict_limits(capture: Path) -> ReceiverLimits:
    """Everything a destination of this capture's session knows."""
    m = manifest(capture)
    return ReceiverLimits(
        page_size=m["page_size"],
        channels=m["channels"],
        uuid=bytes(16),
        ramblocks={b["name"]: b["used_length"] for b in m["main_channel"]["ramblocks"]},
        codec_flag=CODEC_FLAGS[m["codec"]],
    )


def row(packet: RamPacket) -> list[Any]:
    return [
        packet.packet_num,
        packet.flags,
        packet.normal_pages,
        packet.zero_pages,
        packet.next_packet_size,
        packet.ramblock,
    ]


def packet_rows(events: list[Event]) -> list[list[Any]]:
    """One row per packet: a SYNC packet with pages gives RamData then Sync, counted once."""
    rows = []
    for event in events:
        if isinstance(event, RamData) or (isinstance(event, Sync) and not event.packet.has_pages):
            rows.append(row(event.packet))
    return rows


def drain(reader: ChannelReader) -> list[Event]:
    return list(reader)


def read_in_chunks(data: bytes, sizes: list[int], *, eof: bool = True) -> list[Event]:
    """Feed ``data`` in consecutive chunks of ``sizes`` (cycled), draining after each."""
    reader = ChannelReader()
    events: list[Event] = []
    pos = 0
    index = 0
    while pos < len(data):
        size = sizes[index % len(sizes)]
        reader.feed(data[pos : pos + size])
        pos += size
        index += 1
        events += drain(reader)
    if eof:
        reader.feed_eof()
        events += drain(reader)
    return events


def read_bytewise(data: bytes, windows: list[tuple[int, int]] | None = None, *, eof: bool = False) -> list[Event]:
    """Feed ``data`` one byte at a time inside ``windows`` (default: everywhere), in one chunk between them."""
    reader = ChannelReader()
    events: list[Event] = []
    pos = 0
    for start, stop in windows if windows is not None else [(0, len(data))]:
        if start > pos:
            reader.feed(data[pos:start])
            events += drain(reader)
        for i in range(max(start, pos), stop):
            reader.feed(data[i : i + 1])
            event = reader.next_event()
            while not isinstance(event, NeedData):
                events.append(event)
                event = reader.next_event()
        pos = max(pos, stop)
    if pos < len(data):
        reader.feed(data[pos:])
        events += drain(reader)
    if eof:
        reader.feed_eof()
        events += drain(reader)
    return events


def read_prefix(data: bytes) -> list[Event]:
    """Events of a prefix of a channel fed whole, without end of stream."""
    reader = ChannelReader()
    reader.feed(data)
    return drain(reader)


def boundaries(data: bytes) -> set[int]:
    """Offsets where a packet record (init, header + payload) ends."""
    reader = ChannelReader()
    reader.feed(data)
    reader.feed_eof()
    ends = set()
    for _ in reader:
        ends.add(reader.consumed)
    return ends


def q72(capture_dirs: list[Path]) -> Path:
    found = [d for d in capture_dirs if d.name.startswith("q72-")]
    assert found, "the q72 capture is bundled in tests/vectors/qemu and must be present"
    return found[0]


# --- the manifest, packet by packet -------------------------------------------------------------------


def test_packets_list_matches_manifest(capture_dir: Path) -> None:
    m = manifest(capture_dir)
    assert len(channels(capture_dir)) == m["channels"]
    for cid, path, entry in channels(capture_dir):
        events = read_channel(channel_bytes(path))
        init = events[0]
        assert isinstance(init, ChannelInit)
        assert init.packet.id == int(cid)
        assert init.packet.uuid.hex() == entry["init"]["uuid"]
        assert isinstance(events[-1], EndOfStream)
        assert all(not isinstance(e, ChannelInit | EndOfStream) for e in events[1:-1])
        rows = packet_rows(events)
        assert len(rows) == entry["packets"] == len(entry["packets_list"])
        for index, (got, want) in enumerate(zip(rows, entry["packets_list"], strict=True)):
            assert got == want, f"{path.name}: packet {index}"
        # Payloads: none carries normal pages * page size, the others next_packet_size, and no pages no payload.
        payload = 0
        for event in events:
            if isinstance(event, RamData):
                packet = event.packet
                if packet.normal_pages == 0:
                    assert event.payload == b""
                elif m["codec"] == "none":
                    assert len(event.payload) == packet.normal_pages * m["page_size"]
                else:
                    assert len(event.payload) == packet.next_packet_size
                payload += len(event.payload)
        assert payload == entry["payload_bytes"]


def test_capture_passes_strict_session_checks(capture_dir: Path) -> None:
    """With uuid, channel count, ramblocks and codec known, every real packet still passes."""
    limits = strict_limits(capture_dir)
    ids = ChannelIds()
    for _cid, path, entry in channels(capture_dir):
        reader = ChannelReader(limits, channel_ids=ids)
        reader.feed(channel_bytes(path))
        reader.feed_eof()
        events = list(reader)
        assert packet_rows(events) == entry["packets_list"]
        assert reader.consumed == len(channel_bytes(path))


def test_capture_channel_ids_are_unique_per_session(capture_dir: Path) -> None:
    ids = ChannelIds()
    cid, path, _entry = channels(capture_dir)[0]
    first = ChannelReader(channel_ids=ids)
    first.feed(channel_bytes(path)[:64])
    assert isinstance(first.next_event(), ChannelInit)
    again = ChannelReader(channel_ids=ids)
    again.feed(channel_bytes(path)[:64])
    with pytest.raises(WireError) as info:
        again.next_event()
    assert (info.value.field, info.value.value, info.value.limit) == ("id", int(cid), "unique")


# --- any split gives the same events -----------------------------------------------------------------


def test_random_splits_give_identical_events(capture_dir: Path) -> None:
    for cid, path, _entry in channels(capture_dir):
        data = channel_bytes(path)
        whole = read_channel(data)
        rng = random.Random(f"{capture_dir.name}/{cid}")
        for max_chunk in (300, 5000, 70_000, 3 << 20):
            sizes = [rng.randint(1, max_chunk) for _ in range(64)]
            assert read_in_chunks(data, sizes) == whole, f"{path.name}: chunks up to {max_chunk}"


def test_feeding_exactly_what_is_asked_for(capture_dir: Path) -> None:
    """NeedData.nbytes is exact: feeding that much always makes progress."""
    for _cid, path, _entry in channels(capture_dir):
        data = channel_bytes(path)
        reader = ChannelReader()
        events: list[Event] = []
        pos = 0
        while True:
            event = reader.next_event()
            if isinstance(event, NeedData):
                assert event.nbytes > 0
                if pos == len(data):
                    reader.feed_eof()
                    continue
                reader.feed(data[pos : pos + event.nbytes])
                pos += event.nbytes
                assert pos <= len(data), "the reader asked for more than the channel holds"
                continue
            events.append(event)
            if isinstance(event, EndOfStream):
                break
        assert events == read_channel(data)


def test_byte_at_a_time_gives_identical_events(capture_dir: Path) -> None:
    legacy = "legacy" in capture_dir.name
    for cid, path, _entry in channels(capture_dir):
        data = channel_bytes(path)
        whole = read_channel(data)
        if legacy:
            events = read_bytewise(data)
            assert events == whole[:-1], "no EndOfStream before the end is known"
            continue
        assert read_bytewise(data[:BYTEWISE_PREFIX]) == read_prefix(data[:BYTEWISE_PREFIX])
        rng = random.Random(f"bytewise/{capture_dir.name}/{cid}")
        ends = sorted(boundaries(data))
        picks = sorted({*rng.sample(ends[2:-1], 3), ends[-1]})
        windows = [(0, BYTEWISE_PREFIX)] + [
            (end - BYTEWISE_WINDOW, min(end + BYTEWISE_WINDOW, len(data))) for end in picks
        ]
        assert read_bytewise(data, windows, eof=True) == whole


# --- damage ---------------------------------------------------------------------------------------------


def _valid_then(data: bytes, tail: bytes) -> tuple[list[Event], WireError]:
    reader = ChannelReader()
    reader.feed(data + tail)
    reader.feed_eof()
    events: list[Event] = []
    with pytest.raises(WireError) as info:
        for event in reader:
            events.append(event)
    return events, info.value


def test_trailing_garbage_is_a_wire_error(capture_dir: Path) -> None:
    for cid, path, _entry in channels(capture_dir):
        data = channel_bytes(path)
        valid = read_channel(data)[:-1]
        rng = random.Random(f"garbage/{capture_dir.name}/{cid}")
        first_packet = data[64 : 64 + PACKET]
        bad_magic = struct.pack(">I", MULTIFD_MAGIC ^ 0x01000000) + first_packet[4:]
        tails = [
            bytes([rng.randrange(256) for _ in range(rng.randint(1, 3000))]),
            bytes([rng.randrange(256) for _ in range(11)]),
            first_packet[:5],  # partial header
            first_packet[:12],  # header only
            first_packet[:700],  # partial RAM packet
            bad_magic,
        ]
        for tail in tails:
            events, error = _valid_then(data, tail)
            assert events == valid, "every packet before the garbage is still delivered"
            if len(tail) < 12 or tail[:12] == first_packet[:12]:
                assert isinstance(error, TruncatedError)
        _events, error = _valid_then(data, bad_magic)
        assert not isinstance(error, TruncatedError)
        assert (error.field, error.value, error.limit) == ("magic", MULTIFD_MAGIC ^ 0x01000000, MULTIFD_MAGIC)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tail=st.binary(min_size=1, max_size=2000))
def test_any_trailing_bytes_end_in_a_wire_error_or_more_packets(capture_dirs: list[Path], tail: bytes) -> None:
    """Whatever follows a valid channel: further valid packets, a typed WireError, nothing else."""
    data = channel_bytes(channels(q72(capture_dirs))[1][1])
    reader = ChannelReader()
    reader.feed(data + tail)
    reader.feed_eof()
    try:
        events = list(reader)
    except WireError:
        return
    assert isinstance(events[-1], EndOfStream)


def test_truncation_is_a_truncated_error_and_boundaries_end_cleanly(capture_dir: Path) -> None:
    for cid, path, _entry in channels(capture_dir):
        data = channel_bytes(path)
        ends = boundaries(data)
        assert len(data) in ends and 64 in ends
        rng = random.Random(f"cut/{capture_dir.name}/{cid}")
        cuts = {0, 1, 63, 65, 64 + 11, 64 + 12, 64 + PACKET - 1, len(data) - 1}
        cuts |= {rng.randrange(len(data)) for _ in range(25)}
        cuts |= {end + delta for end in rng.sample(sorted(ends), 5) for delta in (-1, 1)}
        cuts |= set(rng.sample(sorted(ends), 5))
        for cut in sorted(c for c in cuts if 0 <= c <= len(data)):
            reader = ChannelReader()
            reader.feed(data[:cut])
            reader.feed_eof()
            if cut in ends:
                events = list(reader)
                assert isinstance(events[-1], EndOfStream), cut
                assert reader.next_event() == EndOfStream()
                continue
            with pytest.raises(TruncatedError) as info:
                list(reader)
            error = info.value
            assert error.field in {"init packet", "packet header", "RAM packet", "RAM payload"}
            assert isinstance(error.value, int) and isinstance(error.limit, int)
            assert 0 <= error.value < error.limit


def test_clean_end(capture_dir: Path) -> None:
    _cid, path, _entry = channels(capture_dir)[0]
    reader = ChannelReader()
    reader.feed(channel_bytes(path))
    events = list(reader)
    assert not isinstance(events[-1], EndOfStream)
    assert isinstance(reader.next_event(), NeedData)
    reader.feed_eof()
    assert list(reader) == [EndOfStream()]
    assert reader.next_event() == EndOfStream()
    with pytest.raises(ValueError):
        reader.feed(b"more")


def test_errors_name_the_file_and_the_packet_start(capture_dir: Path, tmp_path: Path) -> None:
    """A capture error carries the file and the offset where the bad packet began."""
    _cid, path, _entry = channels(capture_dir)[0]
    data = bytearray(channel_bytes(path))
    start = sorted(boundaries(bytes(data)))[1]  # where the second packet after the init packet begins
    struct.pack_into(">I", data, start + 12, 129)  # pages_alloc above the capacity
    broken = tmp_path / path.name
    broken.write_bytes(bytes(data))
    with pytest.raises(WireError) as info:
        list(channel_events(broken, ReceiverLimits()))
    error = info.value
    assert (error.field, error.value, error.limit) == ("pages_alloc", 129, 128)
    assert str(broken) in str(error)
    assert f"at byte {start}:" in str(error)


# --- QEMU 7.2 quirks -----------------------------------------------------------------------------------


def test_q72_sync_packets_with_pages_give_ram_data_then_sync(capture_dirs: list[Path]) -> None:
    capture = q72(capture_dirs)
    seen = 0
    for _cid, path, entry in channels(capture):
        events = read_channel(channel_bytes(path), strict_limits(capture))
        for index, event in enumerate(events):
            if isinstance(event, RamData) and event.packet.is_sync:
                seen += 1
                assert event.packet.flags == Flag.SYNC | Flag.ZLIB
                assert event.packet.normal_pages > 0 and event.payload
                follower = events[index + 1]
                assert isinstance(follower, Sync) and follower.packet is event.packet
                # QEMU 7.2 follows it with an empty flags-0 packet of the same packet_num.
                nxt = events[index + 2]
                assert isinstance(nxt, RamData) and nxt.packet.flags == 0 and not nxt.packet.has_pages
                assert nxt.packet.packet_num == event.packet.packet_num and nxt.payload == b""
        assert entry["sync_packets_with_pages"] == sum(1 for r in entry["packets_list"] if r[1] & Flag.SYNC and r[2])
    assert seen == sum(e["sync_packets_with_pages"] for _c, _p, e in channels(capture)) > 0


def test_q72_stale_next_packet_size_means_no_payload(capture_dirs: list[Path]) -> None:
    capture = q72(capture_dirs)
    stale = 0
    for _cid, path, entry in channels(capture):
        data = channel_bytes(path)
        events = read_channel(data, strict_limits(capture))
        for event in events:
            if isinstance(event, RamData | Sync) and not event.packet.has_pages and event.packet.next_packet_size:
                stale += 1
                if isinstance(event, RamData):
                    assert event.payload == b""
        assert (
            sum(1 for r in entry["packets_list"] if r[2] + r[3] == 0 and r[4])
            == entry["stale_next_packet_size_packets"]
        )
        # No payload bytes were skipped: header records + payloads add up to the file size.
        payload = sum(len(e.payload) for e in events if isinstance(e, RamData))
        assert 64 + PACKET * entry["packets"] + payload == len(data)
    assert stale == sum(e["stale_next_packet_size_packets"] for _c, _p, e in channels(capture)) > 0


# --- device state between real packets -----------------------------------------------------------------


def test_device_state_records_between_real_packets(capture_dir: Path) -> None:
    """Device-state packets share the channel and leave the RAM packets (and codec stream) alone."""
    _cid, path, _entry = channels(capture_dir)[0]
    data = channel_bytes(path)
    ends = sorted(boundaries(data))
    blob1, blob2 = b"\x00\x00\x00\x00vfio-config" * 3, bytes(range(256)) * 5
    first = DeviceStatePacket("0000:00:02.0/vfio", 0, len(blob1))
    second = DeviceStatePacket("dev\u00e9", 7, len(blob2))
    at1, at2 = ends[1], ends[3]
    spliced = data[:at1] + first.encode() + blob1 + data[at1:at2] + second.encode() + blob2 + data[at2:]
    events = read_channel(spliced, strict_limits(capture_dir))
    device = [e for e in events if isinstance(e, DeviceState)]
    assert device == [DeviceState(first, blob1), DeviceState(second, blob2)]
    assert [e for e in events if not isinstance(e, DeviceState)] == read_channel(data)
    assert events.index(device[0]) == 2 and events.index(device[1]) == 5

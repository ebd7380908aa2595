"""Property tests of the packet codecs (mfdcomp.wire.packets) and of corrupted packets.

* encode -> decode is the identity for every valid field value and page size;
* a corrupted byte or field of a valid init, RAM or device-state packet, read
  through ChannelReader (which runs every check), gives either valid packets
  that differ from the original or a WireError, and never another exception.
"""

from __future__ import annotations

import dataclasses
import struct

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from mfdcomp.errors import WireError
from mfdcomp.wire import (
    DEVICE_STATE_SIZE,
    INIT_SIZE,
    ChannelIds,
    ChannelReader,
    DeviceStatePacket,
    Event,
    Flag,
    Header,
    InitPacket,
    RamPacket,
    ReceiverLimits,
    check_ram,
    page_count,
    ram_packet_size,
    read_channel,
)

PAGE_SIZES = st.sampled_from([4096, 8192, 65536])
U8 = st.integers(0, 0xFF)
U32 = st.integers(0, 0xFFFF_FFFF)
U64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
# Names: any text without NUL whose UTF-8 form fits in 255 bytes.
NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=255).filter(
    lambda s: len(s.encode()) <= 255
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def ram_packets(draw: st.DrawFn) -> tuple[RamPacket, int]:
    page_size = draw(PAGE_SIZES)
    slots = page_count(page_size)
    packet = RamPacket(
        flags=draw(U32),
        pages_alloc=draw(U32),
        normal_pages=draw(U32),
        next_packet_size=draw(U32),
        packet_num=draw(U64),
        ramblock=draw(NAMES),
        offsets=tuple(draw(st.lists(U64, min_size=slots, max_size=slots))),
        zero_pages=draw(U32),
        magic=draw(U32),
        version=draw(U32),
    )
    return packet, page_size


@st.composite
def data_packets(draw: st.DrawFn) -> tuple[RamPacket, int]:
    """Valid data packets as QEMU 10 fills them, for a 8 MiB ram0."""
    page_size = draw(PAGE_SIZES)
    capacity = page_count(page_size)
    pages = (8 << 20) // page_size
    used = draw(st.lists(st.integers(0, pages - 1), unique=True, min_size=1, max_size=capacity))
    split = draw(st.integers(0, len(used)))
    packet = RamPacket.data(
        flags=draw(st.sampled_from([0, Flag.ZLIB, Flag.ZSTD, Flag.SYNC | Flag.ZLIB])),
        ramblock="ram0",
        normal=[p * page_size for p in used[:split]],
        zero=[p * page_size for p in used[split:]],
        next_packet_size=draw(st.integers(0, 1 << 20)),
        packet_num=draw(U64),
        page_size=page_size,
    )
    return packet, page_size


@SETTINGS
@given(uuid=st.binary(min_size=16, max_size=16), chan_id=U8, magic=U32, version=U32)
def test_init_packet_round_trip(uuid: bytes, chan_id: int, magic: int, version: int) -> None:
    packet = InitPacket(uuid=uuid, id=chan_id, magic=magic, version=version)
    raw = packet.encode()
    assert len(raw) == INIT_SIZE
    assert InitPacket.decode(raw) == packet
    assert InitPacket.decode(memoryview(bytearray(raw))) == packet


@SETTINGS
@given(ram_packets())
def test_ram_packet_round_trip(case: tuple[RamPacket, int]) -> None:
    packet, page_size = case
    raw = packet.encode(page_size)
    assert len(raw) == ram_packet_size(page_size)
    assert RamPacket.decode(raw, page_size) == packet
    assert Header.decode(raw) == Header(packet.magic, packet.version, packet.flags)


@SETTINGS
@given(data_packets())
def test_data_packet_round_trip_and_checks(case: tuple[RamPacket, int]) -> None:
    packet, page_size = case
    decoded = RamPacket.decode(packet.encode(page_size), page_size)
    assert decoded == packet
    assert decoded.pages_alloc == page_count(page_size)
    assert decoded.has_pages
    assert decoded.normal_offsets + decoded.zero_offsets == packet.offsets[: packet.normal_pages + packet.zero_pages]
    check_ram(decoded, ReceiverLimits(page_size=page_size, ramblocks={"ram0": 8 << 20}))


@SETTINGS
@given(packet_num=U64, page_size=PAGE_SIZES)
def test_sync_packet_round_trip(packet_num: int, page_size: int) -> None:
    packet = RamPacket.sync(packet_num, page_size)
    decoded = RamPacket.decode(packet.encode(page_size), page_size)
    assert decoded == packet and decoded.is_sync and not decoded.has_pages


@SETTINGS
@given(idstr=NAMES, instance_id=U32, size=U32, flags=U32, magic=U32, version=U32)
def test_device_state_packet_round_trip(
    idstr: str, instance_id: int, size: int, flags: int, magic: int, version: int
) -> None:
    packet = DeviceStatePacket(idstr, instance_id, size, flags=flags, magic=magic, version=version)
    raw = packet.encode()
    assert len(raw) == DEVICE_STATE_SIZE
    assert DeviceStatePacket.decode(raw) == packet


# --- corruption ----------------------------------------------------------------------------------------------

UUID = bytes.fromhex("5a1e0000000000000000000000c0ffee")
LIMITS = ReceiverLimits(channels=4, uuid=UUID, ramblocks={"ram0": 1 << 20, "pc.bios": 256 << 10}, codec_flag=0)
PAYLOAD = bytes(range(7, 256)) * 40  # no packet header anywhere inside
INIT = InitPacket(uuid=UUID, id=1)
DATA = RamPacket.data(flags=0, ramblock="ram0", normal=[0, 0x3000], zero=[0x5000], next_packet_size=8192, packet_num=4)
DEVICE = DeviceStatePacket("0000:00:02.0/vfio", 2, 300)
SYNC = RamPacket.sync(5)


def stream() -> list[tuple[str, bytes, bytes]]:
    """(kind, header, what follows it) of a valid channel: init, data, device state, SYNC, data."""
    return [
        ("init", INIT.encode(), b""),
        ("ram", DATA.encode(), PAYLOAD[:8192]),
        ("device", DEVICE.encode(), PAYLOAD[:300]),
        ("ram", SYNC.encode(), b""),
        ("ram", dataclasses.replace(DATA, packet_num=6, ramblock="pc.bios").encode(), PAYLOAD[100 : 100 + 8192]),
    ]


def join(parts: list[tuple[str, bytes, bytes]]) -> bytes:
    return b"".join(head + body for _kind, head, body in parts)


ORIGINAL = read_channel(join(stream()), LIMITS)


def ignored(kind: str, header: bytes, offset: int) -> bool:
    """Header bytes that no decoded field holds: unused areas and name bytes after the terminator."""
    if kind == "init":
        return offset >= 25
    if kind == "ram":
        name, start = header[64:320], 64
        if 40 <= offset < 64:  # bytes 36-39 hold the extension id
            return True
    else:
        name, start = header[12:268], 12
    end = name.index(0)
    return start + end < offset < start + 255


def read_all(data: bytes) -> list[Event]:
    reader = ChannelReader(LIMITS, channel_ids=ChannelIds())
    reader.feed(data)
    reader.feed_eof()
    return list(reader)


def test_valid_stream_reads_back() -> None:
    assert [type(e).__name__ for e in ORIGINAL] == [
        "ChannelInit",
        "RamData",
        "DeviceState",
        "Sync",
        "RamData",
        "EndOfStream",
    ]


@settings(max_examples=400, deadline=None)
@given(which=st.integers(0, 4), where=st.data(), value=U8)
def test_corrupted_header_byte_is_a_different_packet_or_a_wire_error(
    which: int, where: st.DataObject, value: int
) -> None:
    parts = stream()
    kind, header, body = parts[which]
    offset = where.draw(st.integers(0, len(header) - 1), label="offset")
    assume(header[offset] != value)
    damaged = bytearray(header)
    damaged[offset] = value
    parts[which] = (kind, bytes(damaged), body)
    try:
        events = read_all(join(parts))
    except WireError as exc:
        event(f"{type(exc).__name__} on {exc.field}")
        return
    event("ignored byte" if ignored(kind, header, offset) else "valid, different packet")
    if ignored(kind, header, offset):
        assert events == ORIGINAL
    else:
        assert events != ORIGINAL


FIELDS = {
    "init": ["magic", "version", "id"],
    "ram": ["magic", "version", "flags", "pages_alloc", "normal_pages", "next_packet_size", "zero_pages"],
    "device": ["magic", "version", "flags", "instance_id", "next_packet_size"],
}


@settings(max_examples=400, deadline=None)
@given(which=st.integers(0, 4), pick=st.data())
def test_corrupted_field_is_a_different_packet_or_a_wire_error(which: int, pick: st.DataObject) -> None:
    parts = stream()
    kind, header, body = parts[which]
    field = pick.draw(st.sampled_from(FIELDS[kind] + (["offset"] if kind == "ram" else [])), label="field")
    if kind == "init":
        packet: InitPacket | RamPacket | DeviceStatePacket = InitPacket.decode(header)
    elif kind == "ram":
        packet = RamPacket.decode(header)
    else:
        packet = DeviceStatePacket.decode(header)
    changed: InitPacket | RamPacket | DeviceStatePacket
    if field == "offset":
        assert isinstance(packet, RamPacket)
        slot = pick.draw(st.integers(0, 127), label="slot")
        offsets = list(packet.offsets)
        offsets[slot] = pick.draw(st.one_of(U64, st.integers(0, 1 << 20)), label="offset")
        changed = dataclasses.replace(packet, offsets=tuple(offsets))
    else:
        bound = U8 if field == "id" else st.one_of(U32, st.integers(0, 300))
        changed = dataclasses.replace(packet, **{field: pick.draw(bound, label=field)})  # type: ignore[arg-type]
    assume(changed != packet)
    parts[which] = (kind, changed.encode(), body)
    try:
        events = read_all(join(parts))
    except WireError as exc:
        event(f"{type(exc).__name__} on {exc.field}")
        return
    event("valid, different packet")
    assert events != ORIGINAL


def test_header_only_layout_has_fixed_fields() -> None:
    """The three packets start with the same 12-byte header."""
    for raw in (DATA.encode(), DEVICE.encode(), SYNC.encode()):
        magic, version, _flags = struct.unpack_from(">III", raw)
        assert (magic, version) == (0x11223344, 1)

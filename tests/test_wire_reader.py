"""ChannelReader on synthetic channels built with the encoders: device state, SYNC, bounds, states."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfdcomp.errors import ChannelIdError, TruncatedError, WireError
from mfdcomp.wire import (
    MAX_PAYLOAD,
    ChannelIds,
    ChannelInit,
    ChannelReader,
    DeviceState,
    DeviceStatePacket,
    EndOfStream,
    Event,
    Flag,
    InitPacket,
    NeedData,
    RamData,
    RamPacket,
    ReceiverLimits,
    Sync,
    read_channel,
)

UUID = bytes(16)
LIMITS = ReceiverLimits(channels=2, uuid=UUID, ramblocks={"ram0": 1 << 20}, codec_flag=0)
PAGE = bytes(range(256)) * 16


def init(chan_id: int = 0) -> bytes:
    return InitPacket(uuid=UUID, id=chan_id).encode()


def data(normal: int = 1, zero: int = 0, *, flags: int = 0, next_size: int | None = None, num: int = 1) -> RamPacket:
    return RamPacket.data(
        flags=flags,
        ramblock="ram0",
        normal=[i * 4096 for i in range(normal)],
        zero=[(normal + i) * 4096 for i in range(zero)],
        next_packet_size=normal * 4096 if next_size is None else next_size,
        packet_num=num,
    )


def device(blob: bytes, idstr: str = "0000:00:02.0/vfio", instance: int = 0, **fields: int) -> bytes:
    return DeviceStatePacket(idstr, instance, len(blob), **fields).encode() + blob


def reader_for(raw: bytes, limits: ReceiverLimits = LIMITS, *, eof: bool = True, **kwargs: object) -> ChannelReader:
    reader = ChannelReader(limits, **kwargs)  # type: ignore[arg-type]
    reader.feed(raw)
    if eof:
        reader.feed_eof()
    return reader


def bytewise(raw: bytes, limits: ReceiverLimits = LIMITS) -> list[Event]:
    reader = ChannelReader(limits)
    events: list[Event] = []
    for i in range(len(raw)):
        reader.feed(raw[i : i + 1])
        events += list(reader)
    reader.feed_eof()
    return events + list(reader)


# --- device state -------------------------------------------------------------------------------------------


def test_device_state_event_carries_the_blob() -> None:
    blob = b"\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00" + bytes(range(200))
    packet = data(2)
    raw = init() + device(blob) + packet.encode() + PAGE * 2 + device(b"x", "dev2", 9)
    events = read_channel(raw, LIMITS)
    assert events == [
        ChannelInit(InitPacket(uuid=UUID, id=0)),
        DeviceState(DeviceStatePacket("0000:00:02.0/vfio", 0, len(blob)), blob),
        RamData(packet, PAGE * 2),
        DeviceState(DeviceStatePacket("dev2", 9, 1), b"x"),
        EndOfStream(),
    ]
    assert bytewise(raw) == events


def test_sync_flagged_device_state_is_refused() -> None:
    raw = init() + device(b"blob", flags=Flag.DEVICE_STATE | Flag.SYNC)
    reader = reader_for(raw, eof=False)
    assert isinstance(reader.next_event(), ChannelInit)
    with pytest.raises(WireError) as info:
        reader.next_event()  # refused on the 12-byte header, before the rest arrives
    assert (info.value.field, info.value.value) == ("flags", 0x41)
    assert not isinstance(info.value, TruncatedError)


@pytest.mark.parametrize(
    ("size", "limit"),
    [(0, "at least 1"), (MAX_PAYLOAD + 1, MAX_PAYLOAD), (0xFFFFFFFF, MAX_PAYLOAD)],
)
def test_device_state_blob_size_is_checked_before_reading_it(size: int, limit: object) -> None:
    reader = reader_for(init() + DeviceStatePacket("vfio", 0, size).encode(), eof=False)
    assert isinstance(reader.next_event(), ChannelInit)
    with pytest.raises(WireError) as info:
        reader.next_event()
    assert (info.value.field, info.value.value, info.value.limit) == ("next_packet_size", size, limit)


def test_unterminated_idstr_in_a_stream() -> None:
    raw = bytearray(init() + device(b"abc"))
    raw[64 + 12 + 255] = ord("x")
    with pytest.raises(WireError) as info:
        read_channel(bytes(raw), LIMITS)
    assert (info.value.field, info.value.limit) == ("idstr", "NUL at byte 255")


@pytest.mark.parametrize(
    ("cut", "state"),
    [
        (64 + 5, "packet header"),
        (64 + 12, "device-state packet"),
        (64 + 275, "device-state packet"),
        (64 + 276, "device-state blob"),
        (64 + 276 + 99, "device-state blob"),
    ],
)
def test_truncated_device_state(cut: int, state: str) -> None:
    raw = (init() + device(bytes(100)))[:cut]
    with pytest.raises(TruncatedError) as info:
        read_channel(raw, LIMITS)
    assert info.value.field == state


# --- SYNC packets ---------------------------------------------------------------------------------------------


def test_sync_without_pages_is_one_sync_event() -> None:
    sync = RamPacket.sync(3)
    events = read_channel(init() + sync.encode(), LIMITS)
    assert events[1:] == [Sync(sync), EndOfStream()]


def test_sync_with_pages_gives_ram_data_then_sync() -> None:
    """QEMU < 9.0: a SYNC packet may carry pages; they belong before the barrier."""
    packet = data(1, 1, flags=Flag.SYNC | Flag.ZLIB, next_size=7, num=12)
    empty = RamPacket(
        flags=0, pages_alloc=0, normal_pages=0, next_packet_size=7, packet_num=12, ramblock="ram0", offsets=(0,) * 128
    )
    raw = init() + packet.encode() + b"payload" + empty.encode()
    limits = ReceiverLimits(codec_flag=Flag.ZLIB)
    events = read_channel(raw, limits)
    assert events[1:] == [RamData(packet, b"payload"), Sync(packet), RamData(empty, b""), EndOfStream()]
    assert bytewise(raw, limits) == events
    # The Sync is delivered on the next call even with no more bytes.
    reader = reader_for(init() + packet.encode() + b"payload", limits, eof=False)
    assert [type(e) for e in reader] == [ChannelInit, RamData, Sync]
    assert reader.next_event() == NeedData(12)


def test_zero_only_packet_has_no_payload() -> None:
    packet = data(0, 5, flags=Flag.ZSTD, next_size=0)
    events = read_channel(init() + packet.encode(), ReceiverLimits(codec_flag=Flag.ZSTD))
    assert events[1] == RamData(packet, b"")
    assert events[1].packet.zero_offsets == tuple(i * 4096 for i in range(5))


def test_nocomp_payload_ignores_next_packet_size() -> None:
    packet = data(2, next_size=5)
    events = read_channel(init() + packet.encode() + PAGE * 2, LIMITS)
    assert events[1] == RamData(packet, PAGE * 2)


def test_compressed_payload_bound_is_checked_before_reading() -> None:
    packet = data(1, flags=Flag.ZLIB, next_size=MAX_PAYLOAD + 1)
    reader = reader_for(init() + packet.encode(), ReceiverLimits(), eof=False)
    assert isinstance(reader.next_event(), ChannelInit)
    with pytest.raises(WireError) as info:
        reader.next_event()
    assert (info.value.field, info.value.value, info.value.limit) == ("next_packet_size", MAX_PAYLOAD + 1, MAX_PAYLOAD)


# --- reader states ----------------------------------------------------------------------------------------------


def test_stream_without_init_packet() -> None:
    sync = RamPacket.sync(0)
    reader = reader_for(sync.encode(), expect_init=False)
    assert list(reader) == [Sync(sync), EndOfStream()]
    assert reader.consumed == 1344


def test_init_checks_in_the_reader() -> None:
    with pytest.raises(ChannelIdError):
        read_channel(init(2), LIMITS)
    ids = ChannelIds()
    assert isinstance(reader_for(init(1), LIMITS, channel_ids=ids).next_event(), ChannelInit)
    with pytest.raises(ChannelIdError):
        reader_for(init(1), LIMITS, channel_ids=ids).next_event()
    with pytest.raises(WireError) as info:
        read_channel(InitPacket(uuid=b"\x01" * 16, id=0).encode(), LIMITS)
    assert info.value.field == "uuid"


def test_need_data_counts_missing_bytes() -> None:
    reader = ChannelReader(LIMITS)
    assert reader.next_event() == NeedData(64)
    reader.feed(init()[:10])
    assert reader.next_event() == NeedData(54)
    reader.feed(init()[10:] + data(1).encode()[:12])
    assert isinstance(reader.next_event(), ChannelInit)
    assert reader.next_event() == NeedData(1332)
    assert reader.consumed == 64
    reader.feed(data(1).encode()[12:])
    assert reader.next_event() == NeedData(4096)
    assert list(reader) == []
    reader.feed(PAGE)
    assert isinstance(reader.next_event(), RamData)
    assert reader.consumed == 64 + 1344 + 4096


def test_empty_channel_is_truncated_init() -> None:
    with pytest.raises(TruncatedError) as info:
        read_channel(b"")
    assert (info.value.field, info.value.value, info.value.limit) == ("init packet", 0, 64)


def test_default_limits_accept_any_session() -> None:
    reader = ChannelReader()
    assert reader.limits == ReceiverLimits()
    reader.feed(InitPacket(uuid=b"\xaa" * 16, id=200).encode())
    assert isinstance(reader.next_event(), ChannelInit)


def test_large_stream_is_compacted_and_consumed_counts_everything() -> None:
    packet = data(128)
    record = packet.encode() + PAGE * 128
    raw = init() + record * 5  # > 2.5 MiB, read in one feed: the consumed prefix is dropped on the way
    reader = reader_for(raw, LIMITS)
    events = list(reader)
    assert len(events) == 7 and all(e == RamData(packet, PAGE * 128) for e in events[1:-1])
    assert reader.consumed == len(raw)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 3 * 1344 + 8192 + 600), max_size=12))
def test_any_split_of_a_synthetic_stream(cuts: list[int]) -> None:
    raw = init(1) + data(2).encode() + PAGE * 2 + device(b"d" * 300) + RamPacket.sync(2).encode() + data(0, 3).encode()
    whole = read_channel(raw, LIMITS)
    reader = ChannelReader(LIMITS)
    events: list[Event] = []
    pos = 0
    for cut in sorted(set(cuts)):
        reader.feed(raw[pos:cut])
        events += list(reader)
        pos = max(pos, cut)
    reader.feed(raw[pos:])
    reader.feed_eof()
    assert events + list(reader) == whole

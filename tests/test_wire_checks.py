"""Every receiver check of mfdcomp.wire.checks, and the decode/encode errors of mfdcomp.wire.packets.

Table driven: each case names the call, the error type and the error's field, value and limit.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from mfdcomp.errors import ChannelIdError, TruncatedError, WireError
from mfdcomp.wire import (
    COMPRESSION_MASK,
    DEFAULT_PAGE_SIZE,
    EXTENSION,
    MAX_PAYLOAD,
    MULTIFD_MAGIC,
    MULTIFD_PACKET_SIZE,
    NOCOMP,
    ChannelIds,
    DeviceStatePacket,
    Flag,
    Header,
    InitPacket,
    RamPacket,
    ReceiverLimits,
    check_codec,
    check_device_state,
    check_header,
    check_init,
    check_ram,
    codec_name,
    page_count,
    ram_packet_size,
    ram_payload_size,
)
from mfdcomp.wire.checks import KNOWN_FLAGS

MiB = 1 << 20
RAM0 = 8 * MiB
UUID = bytes(range(16))
BLOCKS = {"ram0": RAM0, "/rom@etc/acpi/rsdp": 4096}
LIMITS = ReceiverLimits(channels=2, uuid=UUID, ramblocks=BLOCKS)


@dataclass(frozen=True)
class Case:
    """``call()`` must raise ``error`` (exactly that type) with this field, value and limit."""

    call: Callable[[], object]
    error: type[WireError]
    field: str | None
    value: Any
    limit: Any


def header(flags: int = 0, magic: int = MULTIFD_MAGIC, version: int = 1) -> Header:
    return Header(magic, version, flags)


def init(chan_id: int = 0, uuid: bytes = UUID, **fields: int) -> InitPacket:
    return InitPacket(uuid=uuid, id=chan_id, **fields)


def ram(
    normal: tuple[int, ...] = (0,),
    zero: tuple[int, ...] = (),
    *,
    flags: int = NOCOMP,
    block: str = "ram0",
    next_packet_size: int = 0,
    page_size: int = DEFAULT_PAGE_SIZE,
    **fields: Any,
) -> RamPacket:
    packet = RamPacket.data(
        flags=flags,
        ramblock=block,
        normal=normal,
        zero=zero,
        next_packet_size=next_packet_size,
        packet_num=5,
        page_size=page_size,
    )
    return replace(packet, **fields)


def limits(**fields: Any) -> ReceiverLimits:
    return replace(LIMITS, **fields)


def claim_twice() -> None:
    ids = ChannelIds()
    ids.claim(1)
    ids.claim(0)
    ids.claim(1)


def encode_ram(packet: RamPacket, page_size: int = DEFAULT_PAGE_SIZE) -> Callable[[], object]:
    return lambda: packet.encode(page_size)


def decode_ram_with(offset: int, raw: bytes) -> Callable[[], object]:
    """Decode a valid RAM packet whose bytes at ``offset`` were replaced by ``raw``."""
    buf = bytearray(ram().encode())
    buf[offset : offset + len(raw)] = raw
    return lambda: RamPacket.decode(bytes(buf))


def decode_device_with(offset: int, raw: bytes) -> Callable[[], object]:
    buf = bytearray(DeviceStatePacket("vfio", 0, 10).encode())
    buf[offset : offset + len(raw)] = raw
    return lambda: DeviceStatePacket.decode(bytes(buf))


ZLIB = int(Flag.ZLIB)
ZSTD = int(Flag.ZSTD)
SYNC = int(Flag.SYNC)
EXT = EXTENSION
DEV = int(Flag.DEVICE_STATE)
KNOWN = int(KNOWN_FLAGS)
LAST = RAM0 - 4096

CASES: dict[str, Case] = {
    # --- check_header -----------------------------------------------------------------------------------
    "bad magic": Case(lambda: check_header(header(magic=0x11223345)), WireError, "magic", 0x11223345, MULTIFD_MAGIC),
    "QEVM magic": Case(lambda: check_header(header(magic=0x5145564D)), WireError, "magic", 0x5145564D, MULTIFD_MAGIC),
    "bad version 0": Case(lambda: check_header(header(version=0)), WireError, "version", 0, 1),
    "bad version 2": Case(lambda: check_header(header(version=2)), WireError, "version", 2, 1),
    "unknown flag 0x80": Case(lambda: check_header(header(0x80)), WireError, "flags", 0x80, KNOWN),
    "unknown flag 0x100 with zlib": Case(lambda: check_header(header(0x102)), WireError, "flags", 0x102, KNOWN),
    "unknown flag bit 31": Case(lambda: check_header(header(1 << 31)), WireError, "flags", 1 << 31, KNOWN),
    "two codec bits zlib+zstd": Case(lambda: check_header(header(0x06)), WireError, "flags", 0x06, "one codec bit"),
    "two codec bits qpl+qatzip": Case(lambda: check_header(header(0x28)), WireError, "flags", 0x28, "one codec bit"),
    "three codec bits with SYNC": Case(lambda: check_header(header(0x0F)), WireError, "flags", 0x0F, "one codec bit"),
    "SYNC + DEVICE_STATE": Case(
        lambda: check_header(header(SYNC | DEV)), WireError, "flags", 0x41, "SYNC and DEVICE_STATE exclusive"
    ),
    # --- check_init -------------------------------------------------------------------------------------
    "init bad magic": Case(lambda: check_init(init(magic=0), LIMITS), WireError, "magic", 0, MULTIFD_MAGIC),
    "init bad version": Case(lambda: check_init(init(version=3), LIMITS), WireError, "version", 3, 1),
    "uuid mismatch": Case(
        lambda: check_init(init(uuid=bytes(16)), LIMITS), WireError, "uuid", bytes(16).hex(), UUID.hex()
    ),
    "id above channels": Case(lambda: check_init(init(3), LIMITS), ChannelIdError, "id", 3, 1),
    "id == channels (QEMU lets it through)": Case(lambda: check_init(init(2), LIMITS), ChannelIdError, "id", 2, 1),
    "id 255 of 1 channel": Case(lambda: check_init(init(255), limits(channels=1)), ChannelIdError, "id", 255, 0),
    "duplicate id": Case(claim_twice, ChannelIdError, "id", 1, "unique"),
    # --- check_ram ---------------------------------------------------------------------------------------
    "pages_alloc > capacity": Case(lambda: check_ram(ram(pages_alloc=129), LIMITS), WireError, "pages_alloc", 129, 128),
    "pages_alloc > capacity (64 KiB pages)": Case(
        lambda: check_ram(ram(page_size=65536, pages_alloc=9), limits(page_size=65536)), WireError, "pages_alloc", 9, 8
    ),
    "pages_alloc > capacity on a SYNC packet": Case(
        lambda: check_ram(replace(RamPacket.sync(3), pages_alloc=0xFFFFFFFF), LIMITS),
        WireError,
        "pages_alloc",
        0xFFFFFFFF,
        128,
    ),
    "normal > pages_alloc": Case(
        lambda: check_ram(ram(pages_alloc=64, normal_pages=65), LIMITS), WireError, "normal_pages", 65, 64
    ),
    "normal > pages_alloc 0": Case(
        lambda: check_ram(replace(RamPacket.sync(0), normal_pages=1), LIMITS), WireError, "normal_pages", 1, 0
    ),
    "zero > room": Case(
        lambda: check_ram(ram(normal_pages=100, zero_pages=29), LIMITS), WireError, "zero_pages", 29, 28
    ),
    "zero > room of a full packet": Case(
        lambda: check_ram(ram(normal_pages=128, zero_pages=1), LIMITS), WireError, "zero_pages", 1, 0
    ),
    "zero > room (u32 wrap)": Case(
        lambda: check_ram(ram(normal_pages=1, zero_pages=0xFFFFFFFF), LIMITS), WireError, "zero_pages", 0xFFFFFFFF, 127
    ),
    "unknown ramblock": Case(
        lambda: check_ram(ram(block="ram1"), LIMITS), WireError, "ramblock", "ram1", sorted(BLOCKS)
    ),
    "unknown ramblock for zero pages only": Case(
        lambda: check_ram(ram((), (0,), block="pc.rom"), LIMITS), WireError, "ramblock", "pc.rom", sorted(BLOCKS)
    ),
    "offset one page beyond the block": Case(
        lambda: check_ram(ram((0, RAM0)), LIMITS), WireError, "offset", RAM0, LAST
    ),
    "zero-page offset beyond the block": Case(
        lambda: check_ram(ram((0,), (LAST, RAM0)), LIMITS), WireError, "offset", RAM0, LAST
    ),
    "offset beyond a one-page block": Case(
        lambda: check_ram(ram((4096,), block="/rom@etc/acpi/rsdp"), LIMITS), WireError, "offset", 4096, 0
    ),
    "huge offset": Case(lambda: check_ram(ram((2**64 - 1,)), LIMITS), WireError, "offset", 2**64 - 1, LAST),
    "misaligned offset": Case(lambda: check_ram(ram((4097,)), LIMITS), WireError, "offset", 4097, "multiple of 4096"),
    "misaligned zero offset": Case(
        lambda: check_ram(ram((0,), (8192 + 512,)), LIMITS), WireError, "offset", 8192 + 512, "multiple of 4096"
    ),
    "misaligned for 8 KiB pages": Case(
        lambda: check_ram(ram((4096,), page_size=8192), limits(page_size=8192)),
        WireError,
        "offset",
        4096,
        "multiple of 8192",
    ),
    # --- check_codec / ram_payload_size ------------------------------------------------------------------
    "zstd packet in a zlib session": Case(
        lambda: check_codec(ZSTD, limits(codec_flag=ZLIB)), WireError, "flags", ZSTD, ZLIB
    ),
    "SYNC|zstd packet in a zlib session": Case(
        lambda: check_codec(SYNC | ZSTD, limits(codec_flag=ZLIB)), WireError, "flags", SYNC | ZSTD, ZLIB
    ),
    "nocomp packet in a zstd session": Case(
        lambda: ram_payload_size(ram(), limits(codec_flag=ZSTD)), WireError, "flags", 0, ZSTD
    ),
    "zlib packet in a nocomp session": Case(
        lambda: ram_payload_size(ram(flags=ZLIB, next_packet_size=10), limits(codec_flag=NOCOMP)),
        WireError,
        "flags",
        ZLIB,
        NOCOMP,
    ),
    "extension packet with another extension id": Case(
        lambda: ram_payload_size(
            ram(flags=EXT, next_packet_size=10, extension_id=8), limits(codec_flag=EXT, extension_id=7)
        ),
        WireError,
        "extension_id",
        8,
        7,
    ),
    "extension packet in a zlib session": Case(
        lambda: ram_payload_size(ram(flags=EXT, next_packet_size=10, extension_id=7), limits(codec_flag=ZLIB)),
        WireError,
        "flags",
        EXT,
        ZLIB,
    ),
    "zlib packet in an extension session": Case(
        lambda: check_codec(ZLIB, limits(codec_flag=EXT, extension_id=7)), WireError, "flags", ZLIB, EXT
    ),
    "next_packet_size > 1 MiB": Case(
        lambda: ram_payload_size(ram(flags=ZLIB, next_packet_size=MAX_PAYLOAD + 1), LIMITS),
        WireError,
        "next_packet_size",
        MAX_PAYLOAD + 1,
        MAX_PAYLOAD,
    ),
    "next_packet_size > custom bound": Case(
        lambda: ram_payload_size(ram(flags=ZSTD, next_packet_size=1001), limits(max_payload=1000)),
        WireError,
        "next_packet_size",
        1001,
        1000,
    ),
    "zero-only zstd packet with stale next_packet_size": Case(
        lambda: ram_payload_size(ram((), (0, 4096), flags=ZSTD, next_packet_size=4242), LIMITS),
        WireError,
        "next_packet_size",
        4242,
        0,
    ),
    # --- check_device_state ------------------------------------------------------------------------------
    "empty device-state packet": Case(
        lambda: check_device_state(DeviceStatePacket("vfio", 0, 0), LIMITS),
        WireError,
        "next_packet_size",
        0,
        "at least 1",
    ),
    "oversize device-state blob": Case(
        lambda: check_device_state(DeviceStatePacket("vfio", 0, MAX_PAYLOAD + 1), LIMITS),
        WireError,
        "next_packet_size",
        MAX_PAYLOAD + 1,
        MAX_PAYLOAD,
    ),
    "device-state blob above a custom bound": Case(
        lambda: check_device_state(DeviceStatePacket("vfio", 0, 2**32 - 1), limits(max_payload=4096)),
        WireError,
        "next_packet_size",
        2**32 - 1,
        4096,
    ),
    # --- decoding names ----------------------------------------------------------------------------------
    "unterminated ramblock": Case(decode_ram_with(64, b"A" * 256), WireError, "ramblock", b"A" * 32, "NUL at byte 255"),
    "ramblock with only byte 255 set": Case(
        decode_ram_with(64 + 255, b"\x01"), WireError, "ramblock", b"ram0" + bytes(28), "NUL at byte 255"
    ),
    "unterminated idstr": Case(decode_device_with(12, b"B" * 256), WireError, "idstr", b"B" * 32, "NUL at byte 255"),
    "non-UTF-8 ramblock": Case(decode_ram_with(64, b"ram\xff\0"), WireError, "ramblock", b"ram\xff", None),
    "non-UTF-8 idstr": Case(decode_device_with(12, b"\xc3\x28\0"), WireError, "idstr", b"\xc3\x28", None),
    # --- encoding ----------------------------------------------------------------------------------------
    "uuid of 15 bytes": Case(lambda: init(uuid=bytes(15)).encode(), WireError, "uuid", 15, 16),
    "uuid of 17 bytes": Case(lambda: init(uuid=bytes(17)).encode(), WireError, "uuid", 17, 16),
    "id 256": Case(lambda: init(256).encode(), WireError, "id", 256, 255),
    "id -1": Case(lambda: init(-1).encode(), WireError, "id", -1, 255),
    "init magic out of range": Case(lambda: init(magic=2**32).encode(), WireError, "init packet", None, None),
    "init version negative": Case(lambda: init(version=-1).encode(), WireError, "init packet", None, None),
    "too many normal pages": Case(lambda: ram(tuple(range(129))), WireError, "pages", 129, 128),
    "too many pages in all": Case(lambda: ram(tuple(range(100)), tuple(range(29))), WireError, "pages", 129, 128),
    "too many pages for 64 KiB pages": Case(lambda: ram((0,) * 5, (0,) * 4, page_size=65536), WireError, "pages", 9, 8),
    "127 offset slots": Case(
        encode_ram(replace(RamPacket.sync(0), offsets=(0,) * 127)), WireError, "offsets", 127, 128
    ),
    "128 offset slots for 8 KiB pages": Case(encode_ram(RamPacket.sync(0), 8192), WireError, "offsets", 128, 64),
    "flags out of range": Case(encode_ram(ram(flags=2**32)), WireError, "ram packet", None, None),
    "packet_num out of range": Case(encode_ram(ram(packet_num=2**64)), WireError, "ram packet", None, None),
    "negative normal_pages": Case(encode_ram(ram(normal_pages=-1)), WireError, "ram packet", None, None),
    "offset out of range": Case(encode_ram(ram((2**64,))), WireError, "ram packet", None, None),
    "ramblock of 256 bytes": Case(encode_ram(ram(block="r" * 256)), WireError, "ramblock", "r" * 256, 255),
    "ramblock of 256 UTF-8 bytes": Case(encode_ram(ram(block="é" * 128)), WireError, "ramblock", "é" * 128, 255),
    "ramblock with NUL": Case(encode_ram(ram(block="ram\0x")), WireError, "ramblock", "ram\0x", 255),
    "idstr of 256 bytes": Case(lambda: DeviceStatePacket("i" * 256, 0, 1).encode(), WireError, "idstr", "i" * 256, 255),
    "idstr with NUL": Case(lambda: DeviceStatePacket("\0", 0, 1).encode(), WireError, "idstr", "\0", 255),
    "instance_id negative": Case(
        lambda: DeviceStatePacket("vfio", -1, 1).encode(), WireError, "device state packet", None, None
    ),
    "device next_packet_size out of range": Case(
        lambda: DeviceStatePacket("vfio", 0, 2**32).encode(), WireError, "device state packet", None, None
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_check_fails_with_typed_error(case: Case) -> None:
    with pytest.raises(WireError) as info:
        case.call()
    error = info.value
    assert type(error) is case.error
    assert (error.field, error.value, error.limit) == (case.field, case.value, case.limit)
    assert str(error)


# --- what the checks accept ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [0, SYNC, ZLIB, ZSTD, 0x08, 0x10, 0x20, SYNC | ZLIB, SYNC | 0x20, DEV, DEV | ZLIB, EXT, SYNC | EXT],
    ids=lambda f: f"0x{f:02x}",
)
def test_header_accepts_known_flags(flags: int) -> None:
    check_header(header(flags))


def test_known_flags_are_sync_codecs_and_device_state() -> None:
    assert KNOWN == 0x7F == SYNC | COMPRESSION_MASK | DEV


@pytest.mark.parametrize("bit", range(7, 32))
def test_every_unknown_flag_bit_is_refused(bit: int) -> None:
    with pytest.raises(WireError) as info:
        check_header(header(1 << bit | ZLIB))
    assert info.value.field == "flags"


def test_init_accepts_the_last_channel_and_any_uuid_or_id_when_unknown() -> None:
    check_init(init(1), LIMITS)
    check_init(init(255, uuid=b"\xff" * 16), ReceiverLimits())
    check_init(init(7), limits(uuid=None, channels=8))


def test_channel_ids_are_per_session() -> None:
    first, second = ChannelIds(), ChannelIds()
    first.claim(0)
    second.claim(0)
    first.claim(1)
    with pytest.raises(ChannelIdError):
        second.claim(0)


def test_last_offset_of_every_block_is_accepted() -> None:
    check_ram(ram((0, LAST), (4096,)), LIMITS)
    check_ram(ram((0,), block="/rom@etc/acpi/rsdp"), LIMITS)
    check_ram(ram((LAST - 65536 + 4096,), page_size=65536), limits(page_size=65536))
    full = ram(tuple(range(0, 64 * 4096, 4096)), tuple(range(64 * 4096, 128 * 4096, 4096)))
    check_ram(full, LIMITS)
    assert full.normal_offsets == tuple(range(0, 64 * 4096, 4096))
    assert len(full.zero_offsets) == 64


def test_packets_without_pages_skip_the_block_and_offsets() -> None:
    stale = replace(RamPacket.sync(9), pages_alloc=128, ramblock="no such block", offsets=(4097,) * 128)
    check_ram(stale, LIMITS)  # QEMU 7.2 SYNC packets: stale name and offsets
    assert ram_payload_size(replace(stale, next_packet_size=375495, flags=SYNC), limits(codec_flag=ZLIB)) == 0
    # Without a block table, any block and offset passes (inspecting an unknown session).
    check_ram(ram((4097,), block="anything"), ReceiverLimits())


def test_stale_offset_slots_beyond_the_used_ones_are_ignored() -> None:
    packet = ram((0,))
    check_ram(replace(packet, offsets=(0, 5, 2**64 - 1) + (0,) * 125), LIMITS)


@pytest.mark.parametrize(
    ("packet", "session", "size"),
    [
        (ram((0, 4096), next_packet_size=123), NOCOMP, 2 * 4096),  # nocomp ignores next_packet_size
        (ram((0,), (4096,), next_packet_size=0), None, 4096),
        (ram((), (0,), next_packet_size=99), NOCOMP, 0),  # nocomp zero-only: no payload
        (ram((), (0,), flags=ZLIB, next_packet_size=0), ZLIB, 0),
        (ram((0,), flags=ZLIB, next_packet_size=MAX_PAYLOAD), ZLIB, MAX_PAYLOAD),
        (ram((0,), flags=ZSTD, next_packet_size=17), None, 17),
        (ram((0,), flags=0x20, next_packet_size=100), None, 100),
        (ram((0,), flags=EXT, next_packet_size=100, extension_id=3), EXT, 100),
        (ram(tuple(range(0, 128 * 4096, 4096))), NOCOMP, MULTIFD_PACKET_SIZE),
        (replace(RamPacket.sync(0), flags=SYNC | ZSTD, next_packet_size=77), ZLIB, 0),  # no pages: no check
        (replace(RamPacket.sync(0), flags=0, next_packet_size=13014), ZLIB, 0),  # 7.2's empty flags-0 packet
    ],
)
def test_payload_size(packet: RamPacket, session: int | None, size: int) -> None:
    check_ram(packet, limits(codec_flag=session))
    assert ram_payload_size(packet, limits(codec_flag=session)) == size


def test_check_codec_returns_the_codec_bits() -> None:
    assert check_codec(SYNC | ZLIB, LIMITS) == ZLIB
    assert check_codec(ZSTD, limits(codec_flag=ZSTD)) == ZSTD
    assert check_codec(0, limits(codec_flag=NOCOMP)) == NOCOMP
    assert check_codec(EXT, limits(codec_flag=EXT, extension_id=4), extension_id=4) == EXT
    assert check_codec(EXT, limits(codec_flag=EXT), extension_id=9) == EXT  # session's id unknown: any


def test_extension_id_travels_in_the_first_reserved_word() -> None:
    packet = ram((0,), flags=EXT, next_packet_size=5, extension_id=0x01020304)
    raw = packet.encode()
    assert raw[36:40] == bytes([1, 2, 3, 4]) and raw[40:64] == bytes(24)
    assert RamPacket.decode(raw) == packet
    assert ram((0,)).encode()[36:64] == bytes(28)  # QEMU codecs: all 28 bytes stay zero


def test_device_state_bounds() -> None:
    check_device_state(DeviceStatePacket("vfio", 0, 1), LIMITS)
    check_device_state(DeviceStatePacket("vfio", 0, MAX_PAYLOAD), LIMITS)


# --- constants ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        (0, "none"),
        (SYNC, "none"),
        (ZLIB, "zlib"),
        (ZSTD | SYNC, "zstd"),
        (0x08, "qpl"),
        (0x10, "uadk"),
        (0x20, "qatzip"),
        (0x06, "unknown(0x06)"),
        (DEV | 0x22, "unknown(0x22)"),
        (EXT, "mfdcomp extension 0"),
    ],
)
def test_codec_name(flags: int, name: str) -> None:
    assert codec_name(flags) == name
    assert codec_name(EXT | SYNC, 12) == "mfdcomp extension 12"


@pytest.mark.parametrize(("page_size", "count", "size"), [(4096, 128, 1344), (8192, 64, 832), (65536, 8, 384)])
def test_page_count_and_packet_size(page_size: int, count: int, size: int) -> None:
    assert page_count(page_size) == count
    assert ram_packet_size(page_size) == size
    assert ReceiverLimits(page_size=page_size).capacity == count


@pytest.mark.parametrize("page_size", [0, -4096, 4095, 3 * 4096, 2 * MULTIFD_PACKET_SIZE])
def test_page_count_refuses_bad_page_sizes(page_size: int) -> None:
    with pytest.raises(ValueError):
        page_count(page_size)
    with pytest.raises(ValueError):
        ReceiverLimits(page_size=page_size)


def test_truncated_and_channel_id_errors_are_wire_errors() -> None:
    assert issubclass(TruncatedError, WireError) and issubclass(ChannelIdError, WireError)
    error = WireError("plain")
    assert (error.field, error.value, error.limit) == (None, None, None)


def test_encoded_packet_layouts() -> None:
    """Byte positions from the spec (§1.1, §2.1, §4.1)."""
    raw = InitPacket(uuid=UUID, id=7).encode()
    assert len(raw) == 64 and raw[:8] == bytes.fromhex("1122334400000001") and raw[8:24] == UUID
    assert raw[24] == 7 and raw[25:] == bytes(39)
    packet = ram((0x1000, 0x2000), (0x3000,), flags=ZLIB, next_packet_size=0x0102, packet_num=0x0A0B)
    raw = packet.encode()
    assert len(raw) == 1344
    assert struct.unpack_from(">IIIIIIQI", raw) == (MULTIFD_MAGIC, 1, ZLIB, 128, 2, 0x0102, 0x0A0B, 1)
    assert raw[36:64] == bytes(28) and raw[64:69] == b"ram0\0" and raw[319] == 0
    assert struct.unpack_from(">4Q", raw, 320) == (0x1000, 0x2000, 0x3000, 0)
    raw = DeviceStatePacket("0000:00:02.0/vfio", 3, 4096).encode()
    assert len(raw) == 276 and struct.unpack_from(">III", raw) == (MULTIFD_MAGIC, 1, DEV)
    assert raw[12:29] == b"0000:00:02.0/vfio" and struct.unpack_from(">II", raw, 268) == (3, 4096)
    sync = RamPacket.sync(4).encode()
    assert struct.unpack_from(">IIIIIIQ", sync) == (MULTIFD_MAGIC, 1, SYNC, 0, 0, 0, 4)
    assert sync[32:] == bytes(1344 - 32)

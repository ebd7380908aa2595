"""Encoding and decoding of the three multifd packet layouts.

Decoding here is purely structural (bytes to fields); what a receiver must
check before trusting the fields lives in :mod:`mfdcomp.wire.checks`.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from mfdcomp.errors import WireError
from mfdcomp.wire.constants import (
    DEFAULT_PAGE_SIZE,
    MULTIFD_MAGIC,
    MULTIFD_VERSION,
    NOCOMP,
    RAMBLOCK_NAME_LEN,
    Flag,
    page_count,
)

# magic, version, flags: the 12 bytes every packet but the init packet starts with.
HEADER = struct.Struct(">III")
# magic, version, uuid, id, then 7 + 32 unused bytes.
INIT = struct.Struct(">II16sB39x")
# header, pages_alloc, normal_pages, next_packet_size, packet_num, zero_pages,
# 28 bytes QEMU leaves zero (mfdcomp puts an extension codec's id in the first
# 4), ramblock name; the offset array follows (see offsets_struct).
RAM_FIXED = struct.Struct(">IIIIIIQII24x256s")
# header, idstr, instance_id, next_packet_size.
DEVICE_STATE = struct.Struct(">III256sII")

INIT_SIZE = INIT.size
HEADER_SIZE = HEADER.size
RAM_FIXED_SIZE = RAM_FIXED.size
DEVICE_STATE_SIZE = DEVICE_STATE.size


@functools.cache
def offsets_struct(page_size: int = DEFAULT_PAGE_SIZE) -> struct.Struct:
    """The big-endian u64 offset array of a RAM packet for ``page_size``."""
    return struct.Struct(f">{page_count(page_size)}Q")


def ram_packet_size(page_size: int = DEFAULT_PAGE_SIZE) -> int:
    """Bytes of a RAM packet (without payload): 1344 for 4 KiB pages."""
    return RAM_FIXED_SIZE + offsets_struct(page_size).size


def _name_field(name: str, field: str) -> bytes:
    raw = name.encode()
    if len(raw) >= RAMBLOCK_NAME_LEN or b"\0" in raw:
        raise WireError(
            f"{field} must be at most {RAMBLOCK_NAME_LEN - 1} bytes without NUL, got {name!r}",
            field=field,
            value=name,
            limit=RAMBLOCK_NAME_LEN - 1,
        )
    return raw


# An int, not the IntFlag: is_sync runs once per packet.
_SYNC = int(Flag.SYNC)


@functools.lru_cache(maxsize=64)
def _decode_name(raw: bytes, field: str) -> str:
    """A NUL-padded name; byte 255 must be NUL, as every real sender writes.

    Cached: a channel sees the same few names packet after packet.
    """
    if raw[-1] != 0:
        raise WireError(f"{field} is not NUL-terminated", field=field, value=raw[:32], limit="NUL at byte 255")
    name = raw.split(b"\0", 1)[0]
    try:
        return name.decode()
    except UnicodeDecodeError as exc:
        raise WireError(f"{field} is not valid UTF-8: {name[:64]!r}", field=field, value=name) from exc


@dataclass(frozen=True, slots=True)
class Header:
    """The 12-byte common header of RAM and device-state packets."""

    magic: int
    version: int
    flags: int

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> Header:
        magic, version, flags = HEADER.unpack_from(buf)
        return cls(magic, version, flags)


@dataclass(frozen=True, slots=True)
class InitPacket:
    """``MultiFDInit_t``: the first 64 bytes of every multifd channel."""

    uuid: bytes
    id: int
    magic: int = MULTIFD_MAGIC
    version: int = MULTIFD_VERSION

    def encode(self) -> bytes:
        if len(self.uuid) != 16:
            raise WireError("uuid must be 16 bytes", field="uuid", value=len(self.uuid), limit=16)
        if not 0 <= self.id <= 0xFF:
            raise WireError("channel id must fit in one byte", field="id", value=self.id, limit=255)
        try:
            return INIT.pack(self.magic, self.version, self.uuid, self.id)
        except struct.error as exc:
            raise WireError(f"init packet field out of range: {exc}", field="init packet") from exc

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> InitPacket:
        magic, version, uuid, chan_id = INIT.unpack_from(buf)
        return cls(uuid=uuid, id=chan_id, magic=magic, version=version)


@dataclass(frozen=True, slots=True)
class RamPacket:
    """``MultiFDPacket_t``: a RAM packet header with its offset array.

    ``offsets`` holds every slot that travels (``page_count`` of them); the
    first ``normal_pages`` are normal pages, the next ``zero_pages`` zero pages,
    and the rest are unused (zero from QEMU 10, possibly stale from 7.2).
    """

    flags: int
    pages_alloc: int
    normal_pages: int
    next_packet_size: int
    packet_num: int
    ramblock: str
    offsets: tuple[int, ...]
    zero_pages: int = 0
    extension_id: int = 0
    magic: int = MULTIFD_MAGIC
    version: int = MULTIFD_VERSION

    @property
    def is_sync(self) -> bool:
        return bool(self.flags & _SYNC)

    @property
    def has_pages(self) -> bool:
        return self.normal_pages + self.zero_pages > 0

    @property
    def normal_offsets(self) -> tuple[int, ...]:
        return self.offsets[: self.normal_pages]

    @property
    def zero_offsets(self) -> tuple[int, ...]:
        return self.offsets[self.normal_pages : self.normal_pages + self.zero_pages]

    @classmethod
    def data(
        cls,
        *,
        flags: int,
        ramblock: str,
        normal: Sequence[int],
        zero: Sequence[int] = (),
        next_packet_size: int,
        packet_num: int,
        page_size: int = DEFAULT_PAGE_SIZE,
        extension_id: int = 0,
    ) -> RamPacket:
        """A data packet as a QEMU 10 sender fills it (``extension_id`` only for extension codecs)."""
        capacity = page_count(page_size)
        used = len(normal) + len(zero)
        if used > capacity:
            raise WireError("too many pages for one packet", field="pages", value=used, limit=capacity)
        offsets = (*normal, *zero) + (0,) * (capacity - used)
        return cls(
            flags=flags,
            pages_alloc=capacity,
            normal_pages=len(normal),
            next_packet_size=next_packet_size,
            packet_num=packet_num,
            ramblock=ramblock,
            offsets=offsets,
            zero_pages=len(zero),
            extension_id=extension_id,
        )

    @classmethod
    def sync(cls, packet_num: int, page_size: int = DEFAULT_PAGE_SIZE) -> RamPacket:
        """A SYNC packet as QEMU 10 sends it: flags 0x01 and nothing else."""
        return cls(
            flags=Flag.SYNC | NOCOMP,
            pages_alloc=0,
            normal_pages=0,
            next_packet_size=0,
            packet_num=packet_num,
            ramblock="",
            offsets=(0,) * page_count(page_size),
        )

    def encode(self, page_size: int = DEFAULT_PAGE_SIZE) -> bytes:
        layout = offsets_struct(page_size)
        if len(self.offsets) != layout.size // 8:
            raise WireError(
                "offset array has the wrong number of slots",
                field="offsets",
                value=len(self.offsets),
                limit=layout.size // 8,
            )
        try:
            fixed = RAM_FIXED.pack(
                self.magic,
                self.version,
                self.flags,
                self.pages_alloc,
                self.normal_pages,
                self.next_packet_size,
                self.packet_num,
                self.zero_pages,
                self.extension_id,
                _name_field(self.ramblock, "ramblock"),
            )
            return fixed + layout.pack(*self.offsets)
        except struct.error as exc:
            raise WireError(f"RAM packet field out of range: {exc}", field="ram packet") from exc

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview, page_size: int = DEFAULT_PAGE_SIZE) -> RamPacket:
        """Fields of a whole RAM packet; raises WireError on an unterminated name."""
        (magic, version, flags, pages_alloc, normal, next_size, packet_num, zero, extension, name) = (
            RAM_FIXED.unpack_from(buf)
        )
        offsets = offsets_struct(page_size).unpack_from(buf, RAM_FIXED_SIZE)
        return cls(
            flags=flags,
            pages_alloc=pages_alloc,
            normal_pages=normal,
            next_packet_size=next_size,
            packet_num=packet_num,
            ramblock=_decode_name(name, "ramblock"),
            offsets=offsets,
            zero_pages=zero,
            extension_id=extension,
            magic=magic,
            version=version,
        )


@dataclass(frozen=True, slots=True)
class DeviceStatePacket:
    """``MultiFDPacketDeviceState_t`` (QEMU 10+): header of an opaque device blob."""

    idstr: str
    instance_id: int
    next_packet_size: int
    flags: int = Flag.DEVICE_STATE
    magic: int = MULTIFD_MAGIC
    version: int = MULTIFD_VERSION

    def encode(self) -> bytes:
        try:
            return DEVICE_STATE.pack(
                self.magic,
                self.version,
                self.flags,
                _name_field(self.idstr, "idstr"),
                self.instance_id,
                self.next_packet_size,
            )
        except struct.error as exc:
            raise WireError(f"device-state field out of range: {exc}", field="device state packet") from exc

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> DeviceStatePacket:
        magic, version, flags, idstr, instance_id, next_size = DEVICE_STATE.unpack_from(buf)
        return cls(
            idstr=_decode_name(idstr, "idstr"),
            instance_id=instance_id,
            next_packet_size=next_size,
            flags=flags,
            magic=magic,
            version=version,
        )

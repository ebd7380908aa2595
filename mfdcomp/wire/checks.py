"""What a receiver checks before it trusts a packet.

These are QEMU's receiver checks (spec §1.4, §2.4, §4.2), plus the ones QEMU
lacks: ``id < channels``, one codec bit at most, no unknown flag bits, page
aligned offsets and a bound on every payload before it is read.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from mfdcomp.errors import ChannelIdError, WireError
from mfdcomp.wire.constants import (
    COMPRESSION_MASK,
    DEFAULT_PAGE_SIZE,
    EXTENSION,
    MAX_PAYLOAD,
    MULTIFD_MAGIC,
    MULTIFD_VERSION,
    NOCOMP,
    Flag,
    codec_name,
    page_count,
)
from mfdcomp.wire.packets import DeviceStatePacket, Header, InitPacket, RamPacket

KNOWN_FLAGS = Flag.SYNC | COMPRESSION_MASK | Flag.DEVICE_STATE
# Plain ints for the per-packet checks: an operation on an IntFlag builds a new enum member (~1 us).
_KNOWN = int(KNOWN_FLAGS)
_SYNC = int(Flag.SYNC)
_DEVICE_STATE = int(Flag.DEVICE_STATE)


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    """What the receiving side knows before the first byte arrives.

    ``None`` leaves a check out, for inspecting captures whose session is
    unknown: ``uuid`` (any uuid), ``channels`` (any id), ``ramblocks`` (any
    block name, offsets unchecked), ``codec_flag`` (each packet's own codec
    bits decide how long its payload is). ``extension_id`` names the session's
    codec when ``codec_flag`` is EXTENSION.
    """

    page_size: int = DEFAULT_PAGE_SIZE
    channels: int | None = None
    uuid: bytes | None = None
    ramblocks: Mapping[str, int] | None = None
    codec_flag: int | None = None
    extension_id: int | None = None
    max_payload: int = MAX_PAYLOAD
    capacity: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "capacity", page_count(self.page_size))


def check_header(header: Header) -> None:
    if header.magic != MULTIFD_MAGIC:
        raise WireError(
            f"bad packet magic 0x{header.magic:08x}, expected 0x{MULTIFD_MAGIC:08x}",
            field="magic",
            value=header.magic,
            limit=MULTIFD_MAGIC,
        )
    if header.version != MULTIFD_VERSION:
        raise WireError(
            f"unsupported packet version {header.version}, expected {MULTIFD_VERSION}",
            field="version",
            value=header.version,
            limit=MULTIFD_VERSION,
        )
    # int(): ~ of an IntFlag only inverts within its members, which would hide every unknown bit.
    unknown = header.flags & ~_KNOWN
    if unknown:
        raise WireError(
            f"unknown flag bits 0x{unknown:x} in flags 0x{header.flags:x}",
            field="flags",
            value=header.flags,
            limit=_KNOWN,
        )
    codec = header.flags & COMPRESSION_MASK
    if codec & (codec - 1) and codec != EXTENSION:
        raise WireError(
            f"flags 0x{header.flags:x} name more than one codec",
            field="flags",
            value=header.flags,
            limit="one codec bit",
        )
    if header.flags & _DEVICE_STATE and header.flags & _SYNC:
        raise WireError(
            "device-state packet with the SYNC flag",
            field="flags",
            value=header.flags,
            limit="SYNC and DEVICE_STATE exclusive",
        )


def check_init(packet: InitPacket, limits: ReceiverLimits) -> None:
    check_header(Header(packet.magic, packet.version, 0))
    if limits.uuid is not None and packet.uuid != limits.uuid:
        raise WireError(
            f"channel uuid {packet.uuid.hex()} differs from the session's {limits.uuid.hex()}",
            field="uuid",
            value=packet.uuid.hex(),
            limit=limits.uuid.hex(),
        )
    if limits.channels is not None and packet.id >= limits.channels:
        raise ChannelIdError(
            f"channel id {packet.id} out of range: the session has {limits.channels} channels",
            field="id",
            value=packet.id,
            limit=limits.channels - 1,
        )


class ChannelIds:
    """Channel ids taken so far in one session; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: set[int] = set()  # under _lock

    def claim(self, channel_id: int) -> None:
        with self._lock:
            if channel_id in self._taken:
                raise ChannelIdError(
                    f"channel id {channel_id} is already set up",
                    field="id",
                    value=channel_id,
                    limit="unique",
                )
            self._taken.add(channel_id)


def check_ram(packet: RamPacket, limits: ReceiverLimits) -> None:
    """Counts, block and offsets of a RAM packet whose header passed check_header."""
    if packet.pages_alloc > limits.capacity:
        raise WireError(
            f"packet allocates {packet.pages_alloc} pages, at most {limits.capacity} fit",
            field="pages_alloc",
            value=packet.pages_alloc,
            limit=limits.capacity,
        )
    if packet.normal_pages > packet.pages_alloc:
        raise WireError(
            f"packet has {packet.normal_pages} normal pages but allocates {packet.pages_alloc}",
            field="normal_pages",
            value=packet.normal_pages,
            limit=packet.pages_alloc,
        )
    room = packet.pages_alloc - packet.normal_pages
    if packet.zero_pages > room:
        raise WireError(
            f"packet has {packet.zero_pages} zero pages, room for {room}",
            field="zero_pages",
            value=packet.zero_pages,
            limit=room,
        )
    if not packet.has_pages or limits.ramblocks is None:
        return
    length = limits.ramblocks.get(packet.ramblock)
    if length is None:
        raise WireError(
            f"unknown ramblock {packet.ramblock!r}",
            field="ramblock",
            value=packet.ramblock,
            limit=sorted(limits.ramblocks),
        )
    last = length - limits.page_size
    for slot, offset in enumerate(packet.offsets[: packet.normal_pages + packet.zero_pages]):
        if offset > last or offset % limits.page_size:
            raise WireError(
                f"offset 0x{offset:x} (slot {slot}) is not a page of ramblock "
                f"{packet.ramblock!r} ({length} bytes, pages of {limits.page_size})",
                field="offset",
                value=offset,
                limit=last if offset > last else f"multiple of {limits.page_size}",
            )


def check_codec(flags: int, limits: ReceiverLimits, extension_id: int = 0) -> int:
    """The codec bits that decide a data packet's payload; a mismatch is an error."""
    codec = flags & COMPRESSION_MASK
    if limits.codec_flag is not None and codec != limits.codec_flag:
        session = codec_name(limits.codec_flag, limits.extension_id or 0)
        raise WireError(
            f"packet is {codec_name(flags, extension_id)} (flags 0x{flags:x}), the session uses {session}",
            field="flags",
            value=flags,
            limit=limits.codec_flag,
        )
    if codec == EXTENSION and limits.extension_id is not None and extension_id != limits.extension_id:
        raise WireError(
            f"packet is {codec_name(flags, extension_id)}, the session uses {codec_name(flags, limits.extension_id)}",
            field="extension_id",
            value=extension_id,
            limit=limits.extension_id,
        )
    return codec


def ram_payload_size(packet: RamPacket, limits: ReceiverLimits) -> int:
    """How many payload bytes follow a checked RAM packet.

    No normal pages means no payload, whatever ``next_packet_size`` says
    (QEMU 7.2 leaves it stale). nocomp payloads are ``normal × page size``.
    """
    if not packet.has_pages:
        return 0
    codec = check_codec(packet.flags, limits, packet.extension_id)
    if packet.normal_pages == 0:
        if codec != NOCOMP and packet.next_packet_size:
            # QEMU 10 aborts here; a packet of zero pages never carries a payload.
            raise WireError(
                f"zero-page-only packet announces a {packet.next_packet_size}-byte payload",
                field="next_packet_size",
                value=packet.next_packet_size,
                limit=0,
            )
        return 0
    if codec == NOCOMP:
        return packet.normal_pages * limits.page_size
    if packet.next_packet_size > limits.max_payload:
        raise WireError(
            f"payload of {packet.next_packet_size} bytes exceeds the {limits.max_payload}-byte bound",
            field="next_packet_size",
            value=packet.next_packet_size,
            limit=limits.max_payload,
        )
    return packet.next_packet_size


def check_device_state(packet: DeviceStatePacket, limits: ReceiverLimits) -> None:
    if packet.next_packet_size == 0:
        raise WireError(
            "empty device-state packet",
            field="next_packet_size",
            value=0,
            limit="at least 1",
        )
    if packet.next_packet_size > limits.max_payload:
        raise WireError(
            f"device-state blob of {packet.next_packet_size} bytes exceeds the {limits.max_payload}-byte bound",
            field="next_packet_size",
            value=packet.next_packet_size,
            limit=limits.max_payload,
        )

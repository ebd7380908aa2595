"""Incremental, sans-IO reader of one multifd channel.

Feed it bytes in any split with :meth:`ChannelReader.feed`, end with
:meth:`ChannelReader.feed_eof`, and pull events with
:meth:`ChannelReader.next_event` until it returns :class:`NeedData`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from mfdcomp.errors import TruncatedError
from mfdcomp.wire.checks import (
    ChannelIds,
    ReceiverLimits,
    check_device_state,
    check_header,
    check_init,
    check_ram,
    ram_payload_size,
)
from mfdcomp.wire.constants import Flag
from mfdcomp.wire.packets import (
    DEVICE_STATE_SIZE,
    HEADER_SIZE,
    INIT_SIZE,
    DeviceStatePacket,
    Header,
    InitPacket,
    RamPacket,
    ram_packet_size,
)

# Consumed bytes are dropped from the buffer once this many have piled up.
_COMPACT_AT = 1 << 20


@dataclass(frozen=True, slots=True)
class ChannelInit:
    packet: InitPacket


@dataclass(frozen=True, slots=True)
class RamData:
    """A RAM packet with pages (or an empty non-SYNC one) and its raw payload."""

    packet: RamPacket
    payload: bytes


@dataclass(frozen=True, slots=True)
class Sync:
    """A SYNC barrier; it follows the RamData of a SYNC packet that had pages."""

    packet: RamPacket


@dataclass(frozen=True, slots=True)
class DeviceState:
    packet: DeviceStatePacket
    blob: bytes


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The channel ended cleanly, on a packet boundary."""


@dataclass(frozen=True, slots=True)
class NeedData:
    """No event yet: at least ``nbytes`` more bytes are needed."""

    nbytes: int


Event = ChannelInit | RamData | Sync | DeviceState | EndOfStream


class _State(enum.Enum):
    INIT = "init packet"
    HEADER = "packet header"
    RAM = "RAM packet"
    DEVICE = "device-state packet"
    PAYLOAD = "RAM payload"
    BLOB = "device-state blob"
    DONE = "end of stream"


class ChannelReader:
    """Turns the bytes of one channel into checked packets.

    ``expect_init`` is False for a stream that starts after the init packet.
    ``channel_ids`` is shared by the readers of one session to refuse
    duplicate ids.
    """

    def __init__(
        self,
        limits: ReceiverLimits | None = None,
        *,
        expect_init: bool = True,
        channel_ids: ChannelIds | None = None,
    ) -> None:
        self.limits = limits if limits is not None else ReceiverLimits()
        self._ids = channel_ids
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._state = _State.INIT if expect_init else _State.HEADER
        self._ram_size = ram_packet_size(self.limits.page_size)
        self._pending: RamPacket | DeviceStatePacket | None = None
        self._pending_size = 0
        self._sync_after: RamPacket | None = None
        self._head = b""
        self._taken = 0
        self.consumed = 0
        """Bytes of the stream turned into events so far."""

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof:
            raise ValueError("feed() after feed_eof()")
        self._buf += data

    def feed_eof(self) -> None:
        self._eof = True

    def __iter__(self) -> Iterator[Event]:
        """Every event available now, ending at NeedData or EndOfStream."""
        while True:
            event = self.next_event()
            if isinstance(event, NeedData):
                return
            yield event
            if isinstance(event, EndOfStream):
                return

    def _take(self, size: int) -> bytes | None:
        if len(self._buf) - self._pos < size:
            return None
        with memoryview(self._buf) as whole:
            data = whole[self._pos : self._pos + size].tobytes()
        self._pos += size
        self._taken += size
        return data

    def _compact(self) -> None:
        if self._pos >= _COMPACT_AT:
            del self._buf[: self._pos]
            self._pos = 0

    def _need(self, size: int) -> NeedData:
        have = len(self._buf) - self._pos
        if self._eof:
            raise TruncatedError(
                f"stream ended inside a {self._state.value}: {have} of {size} bytes",
                field=self._state.value,
                value=have,
                limit=size,
            )
        return NeedData(size - have)

    def next_event(self) -> Event | NeedData:
        if self._sync_after is not None:
            packet, self._sync_after = self._sync_after, None
            return Sync(packet)
        self._compact()
        state = self._state
        if state is _State.DONE:
            return EndOfStream()
        if state is _State.HEADER and self._eof and self._pos == len(self._buf):
            self._state = _State.DONE
            return EndOfStream()
        size = self._expected_size()
        data = self._take(size)
        if data is None:
            return self._need(size)
        event = self._handle(state, data)
        if not isinstance(event, NeedData):
            # Only whole records count, so an error names where its packet began.
            self.consumed = self._taken
        return event

    def _expected_size(self) -> int:
        if self._state is _State.INIT:
            return INIT_SIZE
        if self._state is _State.HEADER:
            return HEADER_SIZE
        if self._state is _State.RAM:
            return self._ram_size - HEADER_SIZE
        if self._state is _State.DEVICE:
            return DEVICE_STATE_SIZE - HEADER_SIZE
        return self._pending_size

    def _handle(self, state: _State, data: bytes) -> Event | NeedData:
        if state is _State.INIT:
            init = InitPacket.decode(data)
            check_init(init, self.limits)
            if self._ids is not None:
                self._ids.claim(init.id)
            self._state = _State.HEADER
            return ChannelInit(init)
        if state is _State.HEADER:
            header = Header.decode(data)
            check_header(header)
            self._head = data
            self._state = _State.DEVICE if header.flags & Flag.DEVICE_STATE else _State.RAM
            return self.next_event()
        if state is _State.RAM:
            return self._ram(RamPacket.decode(self._head + data, self.limits.page_size))
        if state is _State.DEVICE:
            device = DeviceStatePacket.decode(self._head + data)
            check_device_state(device, self.limits)
            return self._expect_payload(device, device.next_packet_size, _State.BLOB)
        pending = self._pending
        self._pending = None
        self._state = _State.HEADER
        if isinstance(pending, DeviceStatePacket):
            return DeviceState(pending, data)
        assert pending is not None
        return self._ram_event(pending, data)

    def _ram(self, packet: RamPacket) -> Event | NeedData:
        check_ram(packet, self.limits)
        size = ram_payload_size(packet, self.limits)
        if size:
            return self._expect_payload(packet, size, _State.PAYLOAD)
        self._state = _State.HEADER
        return self._ram_event(packet, b"")

    def _expect_payload(self, packet: RamPacket | DeviceStatePacket, size: int, state: _State) -> Event | NeedData:
        self._pending = packet
        self._pending_size = size
        self._state = state
        return self.next_event()

    def _ram_event(self, packet: RamPacket, payload: bytes) -> Event:
        if not packet.is_sync:
            return RamData(packet, payload)
        if not packet.has_pages:
            return Sync(packet)
        self._sync_after = packet
        return RamData(packet, payload)


def read_channel(data: bytes | bytearray | memoryview, limits: ReceiverLimits | None = None) -> list[Event]:
    """Every event of a complete recorded channel (init packet first)."""
    reader = ChannelReader(limits)
    reader.feed(data)
    reader.feed_eof()
    return list(reader)

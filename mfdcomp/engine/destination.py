"""Destination side: channel threads that check packets and fill target memory.

Each channel thread reads a header into a fixed buffer, checks it with the
wire layer, applies zero pages (QEMU's received-bitmap rule) and lets the
codec read the payload straight into the page slots. A SYNC packet parks
the channel until the main thread reaches the matching FLUSH.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, cast, runtime_checkable

import numpy as np
from typing_extensions import Buffer

from mfdcomp.engine import threads
from mfdcomp.engine.fastrecv import FastReceive
from mfdcomp.engine.state import RunState
from mfdcomp.engine.stats import ChannelStats
from mfdcomp.errors import NoSpaceError, TargetError, TruncatedError, WireError
from mfdcomp.methods import Codec, CodecPath, MultiFDMethods, PageViews, choose_path
from mfdcomp.pagedigest import PageDigests
from mfdcomp.pagestore import store_pages
from mfdcomp.transport.base import PeerGoneError, Stream
from mfdcomp.wire import (
    DEVICE_STATE_SIZE,
    HEADER_SIZE,
    DeviceStatePacket,
    Flag,
    Header,
    RamPacket,
    ReceiverLimits,
    check_device_state,
    check_header,
    check_ram,
    ram_packet_size,
    ram_payload_size,
)


class TargetBlock(Protocol):
    """The part of a RAM block the receiver writes."""

    name: str
    size: int
    memory: memoryview


@runtime_checkable
class FileTarget(Protocol):
    """A target block that maps a file it keeps open: pages are written to ``fd`` (see mfdcomp.pagestore)."""

    fd: int | None


class TargetMemory:
    """Target blocks with QEMU's received bitmap (one flag per page).

    With ``hash_pages``, every page written is hashed on its way in (the xxh3-128 verification, see
    mfdcomp.pagedigest): :attr:`page_digests` then holds the targets' digests at the end of the stream.
    """

    def __init__(self, blocks: Mapping[str, TargetBlock], page_size: int, *, hash_pages: bool = False) -> None:
        self.blocks = blocks
        self.page_size = page_size
        # Channels of one epoch write distinct pages, and so distinct slots.
        self.page_digests = (
            PageDigests({name: block.size for name, block in blocks.items()}, page_size) if hash_pages else None
        )
        self._fds = {name: _fd_of(block) for name, block in blocks.items()}
        self._zero = bytes(page_size)
        # One byte per page: channels of one epoch touch distinct pages.
        self.received = {name: np.zeros(block.size // page_size, dtype=np.bool_) for name, block in blocks.items()}

    def store(self, name: str, offsets: Sequence[int], staged: memoryview) -> None:
        """Staged page k (packed) becomes the page at ``offsets[k]`` of block ``name``; hashed first, when hashing.

        Offsets are checked ones (pages of the block). TargetError, or NoSpaceError, if the file takes no more.
        """
        table = None if self.page_digests is None else self.page_digests.tables[name]
        try:
            store_pages(self._fds[name], self.blocks[name].memory, staged, offsets, self.page_size, table)
        except OSError as exc:
            raise self.store_error(name, len(offsets), exc) from exc
        self.received[name][np.array(offsets, dtype=np.intp) // self.page_size] = True

    def store_error(self, name: str, pages: int, exc: OSError) -> TargetError:
        """What a write of ``pages`` pages into block ``name`` that failed with ``exc`` raises."""
        message = f"cannot write {pages} pages into target block {name!r}: {exc.strerror or exc}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpaceError(message, needed=pages * self.page_size, available=None)
        return TargetError(message)

    def descriptors(self, sizes: Mapping[str, int]) -> list[tuple[bytes, int, int, memoryview, Buffer, Buffer | None]]:
        """Each block as mfdcomp._speedups.recv_packets takes it: name, ``sizes[name]`` (the checked length),
        the file it maps (or -1), its mapping, received flags and digest slots (None when not hashing)."""
        tables = None if self.page_digests is None else self.page_digests.tables
        return [
            (
                name.encode(),
                size,
                self._fds[name],
                self.blocks[name].memory,
                cast(Buffer, self.received[name]),
                None if tables is None else cast(Buffer, tables[name]),
            )
            for name, size in sizes.items()
        ]

    def apply_zero(self, name: str, offsets: Sequence[int]) -> None:
        """Zero a page only if it was received before; a fresh target is zero already."""
        if not offsets:
            return
        received = self.received[name]
        ps = self.page_size
        indices = np.array(offsets, dtype=np.intp) // ps
        memory = self.blocks[name].memory
        for index in indices[received[indices]].tolist():
            memory[index * ps : (index + 1) * ps] = self._zero
        received[indices] = True
        if self.page_digests is not None:
            self.page_digests.set_zero(name, offsets)


def _fd_of(block: TargetBlock) -> int:
    fd = block.fd if isinstance(block, FileTarget) else None
    return -1 if fd is None else fd


class _Payload:
    """The payload of the packet being received, read from the channel's stream."""

    def __init__(self, stream: Stream, buffer: bytearray) -> None:
        self.stream = stream
        self.buffer = memoryview(buffer)
        self.size = 0

    def read(self) -> memoryview:
        view = self.buffer[: self.size]
        if self.size and self.stream.recv_exact_into(view) == 0:
            raise TruncatedError("channel ended before the payload", field="payload", value=0, limit=self.size)
        return view

    def read_into(self, views: Sequence[memoryview]) -> None:
        self.stream.recv_into_all(views)


class Barrier:
    """SYNC/FLUSH rendezvous between channel threads and the main thread."""

    def __init__(self, state: RunState, channels: int) -> None:
        self.state = state
        self.channels = channels
        self.arrived = 0  # under state.cond
        self.epoch = 0  # under state.cond
        self.ended: list[int] = []  # under state.cond: channels whose stream ended

    def arrive(self, channel: int) -> None:
        """A channel read a SYNC packet: wait until the main thread releases the epoch."""
        state = self.state
        with state.cond:
            self.arrived += 1
            epoch = self.epoch
            state.cond.notify_all()
        state.wait_for(lambda: self.epoch != epoch, f"channel {channel} at SYNC")

    def flush(self) -> None:
        """The main channel read FLUSH: wait for every channel's SYNC, then release them."""
        state = self.state
        state.wait_for(lambda: self.arrived == self.channels or bool(self.ended), "FLUSH")
        with state.cond:
            if self.arrived != self.channels:
                # The source's own reason, if it failed, follows on the main channel (see RunState.fail).
                raise PeerGoneError(f"channel {self.ended[0]} ended before reaching the SYNC point")
            self.arrived = 0
            self.epoch += 1
            state.cond.notify_all()

    def end(self, channel: int) -> None:
        with self.state.cond:
            self.ended.append(channel)
            self.state.cond.notify_all()

    def wait_all_ended(self) -> None:
        self.state.wait_for(lambda: len(self.ended) == self.channels, "end of stream")


class RecvChannel:
    """One destination channel thread."""

    def __init__(
        self,
        channel_id: int,
        stream: Stream,
        method: MultiFDMethods,
        *,
        limits: ReceiverLimits,
        memory: TargetMemory,
        barrier: Barrier,
        on_device_state: Callable[[DeviceStatePacket, bytes], None] | None = None,
        on_packet: Callable[[int], None] | None = None,
        fast: bool = True,
    ) -> None:
        self.id = channel_id  # set once
        self.stream = stream  # set once
        self.method = method  # channel thread only
        self.limits = limits  # set once
        self.memory = memory  # set once; pages of an epoch are disjoint
        self.barrier = barrier  # set once
        self.stats = ChannelStats(channel_id)  # channel thread only; read after join
        self._on_device_state = on_device_state
        self.on_packet = on_packet  # set once
        # The compiled loop for what it takes (mfdcomp.engine.fastrecv); False: this module's loop alone.
        self.fast = fast
        self.thread = threading.Thread(target=self._run, name=f"mfdcomp-recv-{channel_id}")

    def start(self) -> None:
        threads.start(self.thread)

    def _run(self) -> None:
        try:
            self.method.recv_setup(self.id)
            self._loop()
        except BaseException as exc:
            self.barrier.state.fail(exc)
        finally:
            self.method.recv_cleanup()
            self.barrier.end(self.id)

    def _loop(self) -> None:
        ps = self.limits.page_size
        header = memoryview(bytearray(max(ram_packet_size(ps), DEVICE_STATE_SIZE)))
        payload_buffer = bytearray(self.limits.max_payload)
        payload = _Payload(self.stream, payload_buffer)
        # The codec writes a packet's pages here, packed; TargetMemory.store puts them in place.
        staging = memoryview(bytearray(self.limits.capacity * ps))
        fast = FastReceive.for_channel(self, header, staging, payload_buffer) if self.fast else None
        while True:
            if fast is not None:
                fast.run(lambda: self.barrier.arrive(self.id))  # returns when the next packet is this loop's
            if not self._packet(header, payload, staging):
                return

    def _packet(self, header: memoryview, payload: _Payload, staging: memoryview) -> bool:
        """Read and apply the next packet: the reference path. False at the end of the stream."""
        ps = self.limits.page_size
        stats = self.stats
        if self.stream.recv_exact_into(header[:HEADER_SIZE]) == 0:
            return False
        head = Header.decode(header)
        check_header(head)
        if head.flags & Flag.DEVICE_STATE:
            self._device_state(header, payload)
            return True
        self._read_rest(header[HEADER_SIZE : ram_packet_size(ps)], "RAM packet")
        packet = RamPacket.decode(header, ps)
        check_ram(packet, self.limits)
        payload.size = ram_payload_size(packet, self.limits)
        stats.packets += 1
        stats.wire_bytes += ram_packet_size(ps) + payload.size
        if packet.has_pages:
            self._apply(packet, payload, staging)
        if packet.is_sync:
            stats.sync_packets += 1
            self.barrier.arrive(self.id)
        return True

    def _read_rest(self, view: memoryview, what: str) -> None:
        if self.stream.recv_exact_into(view) == 0:
            raise TruncatedError(f"channel {self.id} ended after a {what} header", field=what, value=HEADER_SIZE)

    def _apply(self, packet: RamPacket, payload: _Payload, staging: memoryview) -> None:
        name = packet.ramblock
        zero = packet.zero_offsets
        self.memory.apply_zero(name, zero)
        normal = packet.normal_offsets
        if normal:
            ps = self.limits.page_size
            staged = staging[: len(normal) * ps]
            path = self.method.recv(packet, payload, PageViews(staged, range(0, staged.nbytes, ps), ps))
            self.memory.store(name, normal, staged)
            self.stats.count(path, self.method.implementation)
        self.stats.normal_pages += len(normal)
        self.stats.zero_pages += len(zero)
        self.stats.payload_bytes += payload.size
        if self.on_packet is not None:
            self.on_packet((len(normal) + len(zero)) * self.limits.page_size)

    def _device_state(self, header: memoryview, payload: _Payload) -> None:
        self._read_rest(header[HEADER_SIZE:DEVICE_STATE_SIZE], "device-state packet")
        packet = DeviceStatePacket.decode(header)
        check_device_state(packet, self.limits)
        payload.size = packet.next_packet_size
        blob = bytes(payload.read())
        if self._on_device_state is None:
            raise WireError(
                f"device-state packet for {packet.idstr!r} but this session has no device-state client",
                field="flags",
                value=packet.flags,
            )
        self._on_device_state(packet, blob)


def make_channel(
    channel_id: int,
    stream: Stream,
    codec: Codec,
    level: int | None,
    *,
    path: CodecPath | None = None,
    limits: ReceiverLimits,
    memory: TargetMemory,
    barrier: Barrier,
    on_packet: Callable[[int], None] | None = None,
) -> RecvChannel:
    return RecvChannel(
        channel_id,
        stream,
        codec.methods(limits.page_size, level, path or choose_path(codec.info, codec.probe()).path),
        limits=limits,
        memory=memory,
        barrier=barrier,
        on_packet=on_packet,
    )

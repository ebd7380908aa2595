"""Destination side: channel threads that check packets and fill target memory.

Each channel thread reads a header into a fixed buffer, checks it with the
wire layer, applies zero pages (QEMU's received-bitmap rule) and lets the
codec read the payload straight into the page slots. A SYNC packet parks
the channel until the main thread reaches the matching FLUSH.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from mfdcomp import speedups
from mfdcomp.engine.state import RunState
from mfdcomp.engine.stats import ChannelStats
from mfdcomp.errors import TruncatedError, WireError
from mfdcomp.methods import Codec, CodecPath, MultiFDMethods, PageViews, choose_path
from mfdcomp.pagedigest import PageDigests
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


class TargetMemory:
    """Target blocks with QEMU's received bitmap (one flag per page).

    With ``hash_pages``, every page written is hashed right after (the xxh3-128 verification, see
    mfdcomp.pagedigest): :attr:`page_digests` then holds the targets' digests at the end of the stream.
    """

    def __init__(self, blocks: Mapping[str, TargetBlock], page_size: int, *, hash_pages: bool = False) -> None:
        self.blocks = blocks
        self.page_size = page_size
        # Channels of one epoch write distinct pages, and so distinct slots.
        self.page_digests = (
            PageDigests({name: block.size for name, block in blocks.items()}, page_size) if hash_pages else None
        )
        self._zero = bytes(page_size)
        self._populator: _Populator | None = None  # owner's thread only (Incoming's main thread)
        # One byte per page: channels of one epoch touch distinct pages.
        self.received = {name: np.zeros(block.size // page_size, dtype=np.bool_) for name, block in blocks.items()}

    def start_populate(self) -> None:
        """Map the targets' pages ahead on a thread of its own while the channels write (compiled path only).

        A fault per page as the channels write and as the digest reads costs
        more than one MADV_POPULATE_WRITE call per chunk; the content is unchanged.
        Call :meth:`finish_populate` before hashing and :meth:`stop_populate` before
        the blocks are released.
        """
        compiled = speedups.compiled()
        if compiled is not None and self._populator is None:
            self._populator = _Populator([block.memory for block in self.blocks.values()], compiled)
            self._populator.thread.start()

    def finish_populate(self) -> None:
        """Wait until every page is mapped: the digest then reads them without a fault each."""
        if self._populator is not None:
            self._populator.thread.join()

    def stop_populate(self) -> None:
        """Stop mapping ahead (after at most one chunk) and wait: the blocks may be released after this."""
        if self._populator is not None:
            self._populator.stop.set()
            self._populator.thread.join()

    def pages(self, name: str, offsets: Sequence[int]) -> PageViews:
        return PageViews(self.blocks[name].memory, offsets, self.page_size)

    def mark_received(self, name: str, offsets: Sequence[int]) -> None:
        """Pages at ``offsets`` were written (and, when hashing, are hashed from the target now)."""
        self.received[name][np.array(offsets, dtype=np.intp) // self.page_size] = True
        if self.page_digests is not None:
            self.page_digests.hash_pages(name, self.blocks[name].memory, offsets)

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


# Mapped ahead in pieces of this size, so that stop_populate waits for one piece at most (~5 ms).
_POPULATE_CHUNK = 32 << 20


class _Populator:
    """The thread that maps target pages ahead (TargetMemory.start_populate)."""

    def __init__(self, views: list[memoryview], compiled: Any) -> None:
        self.views = views  # set once
        self.compiled = compiled  # set once
        self.stop = threading.Event()  # set by the owner; read by the thread between pieces
        self.thread = threading.Thread(target=self._run, name="mfdcomp-populate", daemon=True)

    def _run(self) -> None:
        # Lowest priority: it runs in the channels' idle gaps instead of taking their core (Linux: per thread).
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        for view in self.views:
            for start in range(0, view.nbytes, _POPULATE_CHUNK):
                if self.stop.is_set():
                    return
                with view[start : start + _POPULATE_CHUNK] as piece:
                    if not self.compiled.populate_write(piece):
                        return  # a kernel before 5.14: the pages fault in as they are used, as without it


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
    ) -> None:
        self.id = channel_id  # set once
        self.stream = stream  # set once
        self.method = method  # channel thread only
        self.limits = limits  # set once
        self.memory = memory  # set once; pages of an epoch are disjoint
        self.barrier = barrier  # set once
        self.stats = ChannelStats(channel_id)  # channel thread only; read after join
        self._on_device_state = on_device_state
        self._on_packet = on_packet
        self.thread = threading.Thread(target=self._run, name=f"mfdcomp-recv-{channel_id}")

    def start(self) -> None:
        self.thread.start()

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
        header_buf = bytearray(max(ram_packet_size(ps), DEVICE_STATE_SIZE))
        header = memoryview(header_buf)
        payload = _Payload(self.stream, bytearray(self.limits.max_payload))
        stats = self.stats
        while True:
            if self.stream.recv_exact_into(header[:HEADER_SIZE]) == 0:
                return
            head = Header.decode(header)
            check_header(head)
            if head.flags & Flag.DEVICE_STATE:
                self._device_state(header, payload)
                continue
            self._read_rest(header[HEADER_SIZE : ram_packet_size(ps)], "RAM packet")
            packet = RamPacket.decode(header, ps)
            check_ram(packet, self.limits)
            payload.size = ram_payload_size(packet, self.limits)
            stats.packets += 1
            stats.wire_bytes += ram_packet_size(ps) + payload.size
            if packet.has_pages:
                self._apply(packet, payload)
            if packet.is_sync:
                stats.sync_packets += 1
                self.barrier.arrive(self.id)

    def _read_rest(self, view: memoryview, what: str) -> None:
        if self.stream.recv_exact_into(view) == 0:
            raise TruncatedError(f"channel {self.id} ended after a {what} header", field=what, value=HEADER_SIZE)

    def _apply(self, packet: RamPacket, payload: _Payload) -> None:
        name = packet.ramblock
        zero = packet.zero_offsets
        self.memory.apply_zero(name, zero)
        normal = packet.normal_offsets
        if normal:
            path = self.method.recv(packet, payload, self.memory.pages(name, normal))
            self.memory.mark_received(name, normal)
            self.stats.count(path, self.method.implementation)
        self.stats.normal_pages += len(normal)
        self.stats.zero_pages += len(zero)
        self.stats.payload_bytes += payload.size
        if self._on_packet is not None:
            self._on_packet((len(normal) + len(zero)) * self.limits.page_size)

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

"""Source side: channel threads that prepare and write packets, hand-off, sync.

A round's batches (pages of one block, at most one packet each) come from an
iterator, the migration thread's fill step. A channel that is idle takes the
next batch itself, under one lock (the compiled path its next GROUP batches of
one block, sent in one call), so the first idle channel gets each batch and
packet_num stays one counter for all channels (QEMU's multifd_send). When
the iterator is done every channel writes its SYNC packet after its last
batch, and :meth:`ChannelEngine.send_round` returns; the caller then writes
FLUSH on the main channel.

Why the channels take batches instead of being handed them: a wake-up of
another thread costs 45-85 us of CPU on the 2-core VMs this runs on (a
two-thread ping-pong, 20,000 round trips), and a hand-off needs two per
packet; taking needs none. On 1 GiB of nocomp packets with the writes left
out, the hand-off took 0.61-0.67 s and taking takes 0.32-0.37 s.
"""

from __future__ import annotations

import abc
import collections
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

from mfdcomp.engine import threads
from mfdcomp.engine.fastsend import GROUP, FastSend, Sent
from mfdcomp.engine.state import RunState
from mfdcomp.engine.stats import ChannelStats
from mfdcomp.methods import (
    Codec,
    CodecPath,
    MultiFDMethods,
    PageViews,
    SendPayload,
    check_packet_path,
    choose_path,
)
from mfdcomp.pagedigest import PageDigests
from mfdcomp.transport.base import ChannelEnd, Stream
from mfdcomp.wire import InitPacket, RamPacket, page_count
from mfdcomp.zeropage import partition, zero_flags


class PageBlock(Protocol):
    """The part of a RAM block the sender reads."""

    name: str
    memory: memoryview


Batch = tuple[PageBlock, list[int]]
"""Pages of one block for one packet: the block and the pages' byte offsets (QEMU's MultiFDSendData)."""

EndT = TypeVar("EndT", bound=ChannelEnd)


class _SendChannel(Generic[EndT]):
    def __init__(self, channel_id: int, stream: EndT, method: MultiFDMethods) -> None:
        self.id = channel_id  # set once
        self.stream = stream  # set once
        self.method = method  # channel thread only
        self.stats = ChannelStats(channel_id)  # channel thread only; read after join
        self.rounds_done = 0  # under RunState.cond: rounds whose SYNC this channel wrote
        self.thread: threading.Thread | None = None  # set once by start()
        self.fast: FastSend | None = None  # channel thread only: the compiled packet path, if it applies


class ChannelEngine(abc.ABC, Generic[EndT]):
    """Channel threads of the source, the hand-off and the round's sync, over any channel ends.

    Subclasses say what a channel writes: packets on a stream, or pages at fixed file offsets.
    """

    def __init__(
        self,
        streams: Sequence[EndT],
        codec: Codec,
        *,
        level: int | None,
        page_size: int,
        uuid: bytes,
        detect_zero_pages: bool,
        path: CodecPath | None = None,
        require_hw: bool = False,
        state: RunState | None = None,
        on_packet: Callable[[int], None] | None = None,
        page_digests: PageDigests | None = None,
    ) -> None:
        self.state = state or RunState()
        # Pages are hashed as they are sent (the xxh3-128 verification); each channel its own pages.
        self.page_digests = page_digests
        self.page_size = page_size
        self.uuid = uuid
        self.detect_zero_pages = detect_zero_pages
        self.require_hw = require_hw
        self.info = codec.info
        path = path or choose_path(codec.info, codec.probe()).path
        self.capacity = page_count(page_size)
        self._on_packet = on_packet
        self._next_num = 0  # under _num_lock: one counter for all channels, as QEMU 10
        self._num_lock = threading.Lock()
        self._take_lock = threading.Lock()  # held while a channel takes its next batches
        self._batches: Iterator[Batch] = iter(())  # under _take_lock; replaced under state.cond between rounds
        # Under _take_lock: taken from _batches, not yet by a channel (another block's, or a group's look-ahead).
        self._ahead: collections.deque[Batch] = collections.deque()
        self._round = 0  # under state.cond: rounds started
        self._exiting = False  # under state.cond
        self._wake = self.state.condition()  # channel threads wait on it for a round
        self._caller = self.state.condition()  # the caller waits on it for the round's SYNCs
        self.channels = [_SendChannel[EndT](i, s, codec.methods(page_size, level, path)) for i, s in enumerate(streams)]
        for stream in streams:
            self.state.register(stream)

    def start(self) -> None:
        for channel in self.channels:
            channel.thread = threading.Thread(target=self._run, args=(channel,), name=f"mfdcomp-send-{channel.id}")
            threads.start(channel.thread)

    def send_round(self, batches: Iterable[Batch]) -> None:
        """Send every batch of ``batches``, then a SYNC packet on every channel; returns when all are written.

        ``batches`` is consumed by the channel threads, one batch at a time under
        a lock; it may write to the main channel as it goes (legacy zero pages).
        """
        state = self.state
        with state.cond:
            state.raise_if_failed("send")
            self._batches = iter(batches)
            self._round += 1
            number = self._round
            self._wake.notify_all()
        state.wait_for(lambda: all(c.rounds_done == number for c in self.channels), "sync", cond=self._caller)

    def finish(self) -> None:
        """End the threads once their round is done, and report the first error."""
        self._stop_threads()
        self.state.raise_if_failed("finish")

    def _stop_threads(self) -> None:
        with self.state.cond:
            self._exiting = True
            self._wake.notify_all()
        self.join()

    def join(self) -> None:
        for channel in self.channels:
            threads.join(channel.thread)

    def close(self) -> None:
        """End the threads (after a failure they stop at once) and close the streams."""
        self._stop_threads()
        for channel in self.channels:
            channel.stream.close()

    def stats(self) -> list[ChannelStats]:
        return [c.stats for c in self.channels]

    def next_packet_num(self) -> int:
        """The next packet number, unique across the channels (any channel thread)."""
        return self.next_packet_nums(1)

    def next_packet_nums(self, count: int) -> int:
        """The first of the next ``count`` packet numbers, unique across the channels (any channel thread)."""
        with self._num_lock:
            first = self._next_num
            self._next_num += count
            return first

    def _take(self, limit: int) -> list[Batch]:
        """Up to ``limit`` of the round's next batches, all of one block; none when it has no more.

        A group (``limit`` > 1) is at most a fair share of the batches ahead: with ``limit`` for every
        channel looked ahead, the round's last batches still spread over the channels instead of going
        to the first one that asks. Stops at once after a failure.
        """
        taken: list[Batch] = []
        with self._take_lock:
            self.state.raise_if_failed("send")
            if limit > 1:
                wanted = limit * len(self.channels)
                while len(self._ahead) < wanted and (batch := next(self._batches, None)) is not None:
                    self._ahead.append(batch)
                limit = min(limit, -(-len(self._ahead) // len(self.channels)))
            while len(taken) < limit:
                batch = self._ahead.popleft() if self._ahead else next(self._batches, None)
                if batch is None:
                    break
                if taken and batch[0] is not taken[0][0]:
                    self._ahead.appendleft(batch)  # another block's: the next take's first
                    break
                taken.append(batch)
        return taken

    def _run(self, channel: _SendChannel[EndT]) -> None:
        state = self.state
        method = channel.method
        try:
            method.send_setup(channel.id)
            self._open_channel(channel)
            while True:
                with state.cond:
                    self._wake.wait_for(
                        lambda: state.error is not None or self._exiting or channel.rounds_done < self._round
                    )
                    if state.error is not None or channel.rounds_done == self._round:
                        return
                    number = self._round
                while batches := self._take(1 if channel.fast is None else GROUP):
                    self._send_batches(channel, batches)
                self._send_sync(channel)
                with state.cond:
                    channel.rounds_done = number
                    self._caller.notify()
        except BaseException as exc:
            state.fail(exc)
        finally:
            method.send_cleanup()

    def _send_batches(self, channel: _SendChannel[EndT], batches: list[Batch]) -> None:
        """Batches of one block, one packet each, in order."""
        for block, offsets in batches:
            self._send_batch(channel, block, offsets)

    def _send_batch(self, channel: _SendChannel[EndT], block: PageBlock, offsets: list[int]) -> None:
        """Common preparation (zero pages, then the codec), then the transport's write."""
        if len(offsets) > self.capacity:
            raise ValueError(f"a batch holds at most {self.capacity} pages, got {len(offsets)}")
        ps = self.page_size
        memory = block.memory
        normal_num = partition(offsets, zero_flags(memory, offsets, ps)) if self.detect_zero_pages else len(offsets)
        normal = offsets[:normal_num]
        method = channel.method
        if normal:
            payload = method.send_prepare(PageViews(memory, normal, ps))
            check_packet_path(self.info, payload.path, require_hw=self.require_hw)
        else:
            payload = SendPayload(buffers=[], size=0, path=method.info.paths[0])
        written = self._write_batch(channel, block, normal, offsets[normal_num:], payload)
        if self.page_digests is not None:
            # After the write, not before: the send just read these pages, so they are hashed from the
            # cache instead of memory (mixed image: ~0.07 s less CPU per 512 MiB on the 2-core VM).
            self.page_digests.hash_pages(block.name, memory, normal)
            self.page_digests.set_zero(block.name, offsets[normal_num:])
        self._sent(channel, normal_num, len(offsets) - normal_num, payload.size, written, payload.path)

    def _sent(self, channel: _SendChannel[EndT], normal: int, zero: int, payload: int, wire: int, path: str) -> None:
        """Count one data packet written whole (the Python path), and report its guest bytes."""
        self.count_sent(channel, Sent(1, 1 if normal else 0, normal, zero, wire, payload), path)

    def count_sent(self, channel: _SendChannel[EndT], sent: Sent, path: str) -> None:
        """Count data packets written whole (either path), and report their guest bytes (channel thread)."""
        stats = channel.stats
        stats.packets += sent.packets
        stats.normal_pages += sent.normal
        stats.zero_pages += sent.zero
        stats.payload_bytes += sent.payload
        stats.wire_bytes += sent.wire
        if sent.pages_packets:
            stats.count(path, channel.method.implementation, sent.pages_packets)
        if self._on_packet is not None:
            self._on_packet((sent.normal + sent.zero) * self.page_size)

    @abc.abstractmethod
    def _open_channel(self, channel: _SendChannel[EndT]) -> None:
        """What a channel does once, before its first batch."""

    @abc.abstractmethod
    def _write_batch(
        self, channel: _SendChannel[EndT], block: PageBlock, normal: list[int], zero: list[int], payload: SendPayload
    ) -> int:
        """Write one prepared batch; returns the bytes written."""

    @abc.abstractmethod
    def _send_sync(self, channel: _SendChannel[EndT]) -> None:
        """The channel's part of the end of a round, after its queued batch."""


class SourceEngine(ChannelEngine[Stream]):
    """QEMU's multifd channels over connected streams: init packet, RAM packets, SYNC packets."""

    # The compiled packet path where it applies (mfdcomp.engine.fastsend); False: this module's alone.
    # Set before start().
    fast = True

    def _open_channel(self, channel: _SendChannel[Stream]) -> None:
        """First words of a channel: QEMU's init packet."""
        init = InitPacket(uuid=self.uuid, id=channel.id).encode()
        channel.stream.send_all([init])
        channel.stats.wire_bytes += len(init)
        if self.fast:
            channel.fast = FastSend.for_channel(self, channel)

    def _send_batches(self, channel: _SendChannel[Stream], batches: list[Batch]) -> None:
        block = batches[0][0]
        if channel.fast is None or not channel.fast.send(block, [offsets for _, offsets in batches]):
            super()._send_batches(channel, batches)

    def _write_batch(
        self, channel: _SendChannel[Stream], block: PageBlock, normal: list[int], zero: list[int], payload: SendPayload
    ) -> int:
        """One RAM packet: header and payload in one scatter-gather write. Returns the bytes written."""
        method = channel.method
        ps = self.page_size
        header = RamPacket.data(
            flags=method.flag | payload.flags,
            ramblock=block.name,
            normal=normal,
            zero=zero,
            next_packet_size=payload.size,
            packet_num=self.next_packet_num(),
            page_size=ps,
            extension_id=method.extension_id,
        ).encode(ps)
        channel.stream.send_all([header, *payload.buffers])
        return len(header) + payload.size

    def _send_sync(self, channel: _SendChannel[Stream]) -> None:
        header = RamPacket.sync(self.next_packet_num(), self.page_size).encode(self.page_size)
        channel.stream.send_all([header])
        channel.stats.packets += 1
        channel.stats.sync_packets += 1
        channel.stats.wire_bytes += len(header)

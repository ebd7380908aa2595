"""Source side: channel threads that prepare and write packets, hand-off, sync.

The migration thread (the caller) fills a :class:`SendBatch` of one block,
gives it to :meth:`SourceEngine.send`, and gets an empty batch back; the first
idle channel in round-robin order takes it (QEMU's multifd_send). Once per
round :meth:`SourceEngine.sync` has every channel write a SYNC packet after
its queued work; the caller then writes FLUSH on the main channel.
"""

from __future__ import annotations

import abc
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

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
from mfdcomp.transport.base import ChannelEnd, Stream
from mfdcomp.wire import InitPacket, RamPacket, page_count
from mfdcomp.zeropage import partition, zero_flags


class PageBlock(Protocol):
    """The part of a RAM block the sender reads."""

    name: str
    memory: memoryview


@dataclass
class SendBatch:
    """Pages of one block for one packet (QEMU's MultiFDSendData)."""

    block: PageBlock | None = None
    offsets: list[int] = field(default_factory=list)

    def clear(self) -> None:
        self.block = None
        self.offsets = []


EndT = TypeVar("EndT", bound=ChannelEnd)


class _SendChannel(Generic[EndT]):
    def __init__(self, channel_id: int, stream: EndT, method: MultiFDMethods, wake: threading.Condition) -> None:
        self.id = channel_id  # set once
        self.stream = stream  # set once
        self.method = method  # channel thread only
        self.stats = ChannelStats(channel_id)  # channel thread only; read after join
        self.job: SendBatch | None = None  # under RunState.cond
        self.spare: SendBatch | None = SendBatch()  # under RunState.cond
        self.pending_sync = False  # under RunState.cond
        self.thread: threading.Thread | None = None  # set once by start()
        self.wake = wake  # set once: the channel's own condition on the run's lock

    @property
    def idle(self) -> bool:
        return self.job is None and not self.pending_sync


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
    ) -> None:
        self.state = state or RunState()
        self.page_size = page_size
        self.uuid = uuid
        self.detect_zero_pages = detect_zero_pages
        self.require_hw = require_hw
        self.info = codec.info
        path = path or choose_path(codec.info, codec.probe()).path
        self.capacity = page_count(page_size)
        self._on_packet = on_packet
        self._packet_num = itertools.count()  # one counter for all channels, as QEMU 10
        self._num_lock = threading.Lock()
        self._next_channel = 0  # caller thread only
        self._exiting = False  # under state.cond
        self._caller = self.state.condition()  # the migration thread waits on it for an idle channel
        self.channels = [
            _SendChannel[EndT](i, s, codec.methods(page_size, level, path), self.state.condition())
            for i, s in enumerate(streams)
        ]
        for stream in streams:
            self.state.register(stream)

    def start(self) -> None:
        for channel in self.channels:
            channel.thread = threading.Thread(target=self._run, args=(channel,), name=f"mfdcomp-send-{channel.id}")
            channel.thread.start()

    def send(self, batch: SendBatch) -> SendBatch:
        """Queue ``batch`` on the first idle channel; returns an empty batch to fill."""
        if len(batch.offsets) > self.capacity:
            raise ValueError(f"a batch holds at most {self.capacity} pages, got {len(batch.offsets)}")
        state = self.state
        with state.cond:
            self._caller.wait_for(lambda: state.error is not None or any(c.idle for c in self.channels))
            state.raise_if_failed("send")
            count = len(self.channels)
            for step in range(count):
                channel = self.channels[(self._next_channel + step) % count]
                if channel.idle:
                    break
            self._next_channel = (channel.id + 1) % count
            empty = channel.spare
            channel.spare = None
            channel.job = batch
            channel.wake.notify()
        assert empty is not None
        return empty

    def sync(self) -> None:
        """Every channel writes a SYNC packet after its queued batch; wait for all."""
        state = self.state
        with state.cond:
            for channel in self.channels:
                channel.pending_sync = True
                channel.wake.notify()
        state.wait_for(lambda: all(c.idle for c in self.channels), "sync", cond=self._caller)

    def finish(self) -> None:
        """Let every channel drain its queued work, end the threads, and report the first error."""
        self._stop_threads()
        self.state.raise_if_failed("finish")

    def _stop_threads(self) -> None:
        with self.state.cond:
            self._exiting = True
            for channel in self.channels:
                channel.wake.notify()
        self.join()

    def join(self) -> None:
        for channel in self.channels:
            if channel.thread is not None:
                channel.thread.join()

    def close(self) -> None:
        """End the threads (after a failure they stop at once) and close the streams."""
        self._stop_threads()
        for channel in self.channels:
            channel.stream.close()

    def stats(self) -> list[ChannelStats]:
        return [c.stats for c in self.channels]

    def _next_packet_num(self) -> int:
        with self._num_lock:
            return next(self._packet_num)

    def _run(self, channel: _SendChannel[EndT]) -> None:
        state = self.state
        method = channel.method
        wake = channel.wake
        try:
            method.send_setup(channel.id)
            self._open_channel(channel)
            while True:
                with state.cond:
                    wake.wait_for(lambda: state.error is not None or self._exiting or not channel.idle)
                    if state.error is not None or channel.idle:
                        return
                    job = channel.job
                if job is not None:
                    self._send_batch(channel, job)
                    with state.cond:
                        job.clear()
                        channel.spare = job
                        channel.job = None
                        self._caller.notify()
                else:
                    self._send_sync(channel)
                    with state.cond:
                        channel.pending_sync = False
                        self._caller.notify()
        except BaseException as exc:
            state.fail(exc)
        finally:
            method.send_cleanup()

    def _send_batch(self, channel: _SendChannel[EndT], job: SendBatch) -> None:
        """Common preparation (zero pages, then the codec), then the transport's write."""
        block = job.block
        assert block is not None
        offsets = job.offsets
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
        stats = channel.stats
        stats.packets += 1
        stats.normal_pages += normal_num
        stats.zero_pages += len(offsets) - normal_num
        stats.payload_bytes += payload.size
        stats.wire_bytes += written
        if normal:
            stats.paths[payload.path] += 1
        if self._on_packet is not None:
            self._on_packet(len(offsets) * ps)

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

    def _open_channel(self, channel: _SendChannel[Stream]) -> None:
        """First words of a channel: QEMU's init packet."""
        init = InitPacket(uuid=self.uuid, id=channel.id).encode()
        channel.stream.send_all([init])
        channel.stats.wire_bytes += len(init)

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
            packet_num=self._next_packet_num(),
            page_size=ps,
            extension_id=method.extension_id,
        ).encode(ps)
        channel.stream.send_all([header, *payload.buffers])
        return len(header) + payload.size

    def _send_sync(self, channel: _SendChannel[Stream]) -> None:
        header = RamPacket.sync(self._next_packet_num(), self.page_size).encode(self.page_size)
        channel.stream.send_all([header])
        channel.stats.packets += 1
        channel.stats.sync_packets += 1
        channel.stats.wire_bytes += len(header)

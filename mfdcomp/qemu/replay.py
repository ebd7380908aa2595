"""Apply recorded multifd channels to a memory image, respecting SYNC barriers.

Replay rule (QEMU's barrier semantics, spec §7.4): a packet's epoch is the
number of SYNC packets before it on its channel. Every channel's epoch-k
packets are applied before any epoch-(k+1) packet; inside an epoch a page is
sent at most once, so the order among channels does not matter. Channels are
read in bounded chunks and one epoch at a time, so memory stays flat.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mfdcomp.errors import MfdcompError, WireError
from mfdcomp.qemu.capture import channel_events
from mfdcomp.qemu.decoders import PayloadDecoder, decoder_for
from mfdcomp.qemu.mainstream import MainStream, PageRecord, ZeroPageRecord
from mfdcomp.wire import ChannelIds, EndOfStream, Event, RamData, ReceiverLimits, Sync, check_codec


@dataclass
class ReplayResult:
    sha256: str
    size: int
    epochs: int
    normal_pages: int = 0
    zero_pages: int = 0


class ImageWriter:
    """Writes pages of one block into an image file at their offsets.

    ``size`` fixes the block length (pages beyond it are refused); without it
    the file grows to the largest page written.
    """

    def __init__(self, path: Path, page_size: int, size: int | None) -> None:
        self.page_size = page_size
        self.size = size
        self._zero = bytes(page_size)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._end = os.fstat(self._fd).st_size
        if size is not None and self._end < size:
            os.ftruncate(self._fd, size)
            self._end = size

    def _check(self, offset: int) -> None:
        if self.size is not None and offset + self.page_size > self.size:
            raise WireError(
                f"page at 0x{offset:x} lies beyond the image size {self.size}",
                field="offset",
                value=offset,
                limit=self.size - self.page_size,
            )

    def write_pages(self, offsets: tuple[int, ...], pages: bytes) -> None:
        view = memoryview(pages)
        step = self.page_size
        for index, offset in enumerate(offsets):
            self._check(offset)
            os.pwrite(self._fd, view[index * step : (index + 1) * step], offset)
            self._end = max(self._end, offset + step)

    def zero_pages(self, offsets: tuple[int, ...]) -> None:
        for offset in offsets:
            self._check(offset)
            if offset < self._end:
                os.pwrite(self._fd, self._zero, offset)
        # A zero page past the end still belongs to the block: grow over it.
        if offsets:
            end = max(offsets) + self.page_size
            if end > self._end:
                os.ftruncate(self._fd, end)
                self._end = end

    def digest(self) -> str:
        sha = hashlib.sha256()
        os.lseek(self._fd, 0, os.SEEK_SET)
        while chunk := os.read(self._fd, 1 << 20):
            sha.update(chunk)
        return sha.hexdigest()

    def close(self) -> None:
        os.close(self._fd)


class _Channel:
    """One recorded channel, its decoder, and where it stands."""

    def __init__(self, events: Iterator[Event], limits: ReceiverLimits) -> None:
        self.events = events
        self.limits = limits
        self.decoder: PayloadDecoder | None = None
        self.ended = False

    def decode(self, event: RamData) -> bytes:
        codec = check_codec(event.packet.flags, self.limits)
        if self.decoder is None:
            self.decoder = decoder_for(codec)
            # Later packets of this channel must use the same codec.
            self.limits = dataclasses.replace(self.limits, codec_flag=codec)
        expected = event.packet.normal_pages * self.limits.page_size
        return self.decoder.decode(event.payload, expected)


def main_records_applier(stream: MainStream, block: str) -> Callable[[int, ImageWriter], None]:
    """Applies the main stream's zero and page records of ``block`` epoch by epoch."""
    by_epoch: dict[int, list[ZeroPageRecord | PageRecord]] = {}
    for record in stream.records:
        if isinstance(record, ZeroPageRecord | PageRecord) and record.block == block:
            by_epoch.setdefault(record.epoch, []).append(record)

    def apply(epoch: int, writer: ImageWriter) -> None:
        for record in by_epoch.get(epoch, ()):
            if isinstance(record, PageRecord):
                writer.write_pages((record.offset,), bytes(record.data))
            elif record.fill == 0:
                writer.zero_pages((record.offset,))
            else:
                writer.write_pages((record.offset,), bytes([record.fill]) * writer.page_size)

    return apply


def replay(
    channel_files: list[Path],
    image: Path,
    block: str,
    *,
    limits: ReceiverLimits,
    size: int | None = None,
    main_epoch: Callable[[int, ImageWriter], None] | None = None,
) -> ReplayResult:
    """Apply the pages of ``block`` from every channel to ``image``.

    Every packet of every block is decoded (the codec streams span blocks);
    only ``block``'s pages are written. ``main_epoch(k, writer)`` applies the
    main stream's records of epoch k (legacy zero pages) after the channels'.
    """
    if not channel_files:
        raise MfdcompError("replay needs at least one multifd channel file")
    ids = ChannelIds()
    channels = [_Channel(channel_events(path, limits, ids), limits) for path in channel_files]
    writer = ImageWriter(image, limits.page_size, size)
    result = ReplayResult(sha256="", size=0, epochs=0)
    try:
        while not all(channel.ended for channel in channels):
            for channel in channels:
                _replay_epoch(channel, block, writer, result)
            if main_epoch is not None:
                main_epoch(result.epochs, writer)
            result.epochs += 1
        result.sha256 = writer.digest()
        result.size = os.path.getsize(image)
    finally:
        writer.close()
    return result


def _replay_epoch(channel: _Channel, block: str, writer: ImageWriter, result: ReplayResult) -> None:
    """Apply one channel's packets up to its next SYNC (or its end)."""
    for event in channel.events:
        if isinstance(event, EndOfStream):
            channel.ended = True
            return
        if isinstance(event, Sync):
            return
        if not isinstance(event, RamData) or not event.packet.has_pages:
            continue
        packet = event.packet
        pages = channel.decode(event)
        if packet.ramblock != block:
            continue
        writer.write_pages(packet.normal_offsets, pages)
        writer.zero_pages(packet.zero_offsets)
        result.normal_pages += packet.normal_pages
        result.zero_pages += packet.zero_pages
    channel.ended = True

"""Apply recorded multifd channels to a memory image, respecting SYNC barriers.

Replay rule (QEMU's barrier semantics, spec §7.4): a packet's epoch is the
number of SYNC packets before it on its channel. Every channel's epoch-k
packets are applied before any epoch-(k+1) packet; inside an epoch a page is
sent at most once, so the order among channels does not matter. Channels are
read in bounded chunks and one epoch at a time, so memory stays flat.

Payloads are decoded by the registered codec of their QEMU flag, through the
same per-channel receive context (``MultiFDMethods``) a destination uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from typing_extensions import Buffer

from mfdcomp.errors import CodecError, MfdcompError, WireError
from mfdcomp.methods import Codec, MultiFDMethods, PageViews, choose_path
from mfdcomp.qemu.capture import channel_events
from mfdcomp.qemu.mainstream import MainStream, PageRecord, ZeroPageRecord, parse_main_stream
from mfdcomp.registry import default_registry
from mfdcomp.wire import (
    DEFAULT_PAGE_SIZE,
    ChannelIds,
    EndOfStream,
    Event,
    RamData,
    ReceiverLimits,
    Sync,
    check_codec,
    codec_name,
)


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

    def write_pages(self, offsets: tuple[int, ...], pages: Buffer) -> None:
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


class _RecordedPayload:
    """A recorded payload as the ``PayloadSource`` a codec reads from."""

    def __init__(self, payload: bytes) -> None:
        self.payload = memoryview(payload)
        self.size = len(payload)

    def read(self) -> memoryview:
        return self.payload

    def read_into(self, views: Sequence[memoryview]) -> None:
        start = 0
        for view in views:
            view[:] = self.payload[start : start + len(view)]
            start += len(view)


def _receive_context(codec_flag: int, page_size: int, channel: int, codec: Codec | None) -> MultiFDMethods:
    """A set-up receive context for ``codec_flag`` payloads: of ``codec``, else of the registered codec."""
    if codec is None:
        codec = default_registry().for_flag(codec_flag)
        if codec is None:
            raise CodecError(
                f"no installed codec decodes {codec_name(codec_flag)} payloads (flag 0x{codec_flag:02x}); "
                "install its plugin to replay them"
            )
    elif codec.info.qemu_flag != codec_flag:
        raise CodecError(f"channel {channel} carries {codec_name(codec_flag)} payloads, not {codec.info.name} ones")
    method = codec.methods(page_size, None, choose_path(codec.info, codec.probe()).path)
    method.recv_setup(channel)
    return method


class _Channel:
    """One recorded channel, its codec context, and where it stands."""

    def __init__(self, number: int, events: Iterator[Event], limits: ReceiverLimits, codec: Codec | None) -> None:
        self.number = number
        self.events = events
        self.limits = limits
        self.codec = codec
        self.method: MultiFDMethods | None = None
        # One packet's pages, decoded here before they go to the image.
        self.pages = memoryview(bytearray(limits.capacity * limits.page_size))
        self.ended = False

    def decode(self, event: RamData) -> memoryview:
        """The packet's normal pages, concatenated (a view of a buffer the next packet reuses)."""
        packet = event.packet
        codec = check_codec(packet.flags, self.limits)
        if self.method is None:
            self.method = _receive_context(codec, self.limits.page_size, self.number, self.codec)
            # Later packets of this channel must use the same codec.
            self.limits = dataclasses.replace(self.limits, codec_flag=codec)
        step = self.limits.page_size
        size = packet.normal_pages * step
        if size:
            views = PageViews(self.pages, range(0, size, step), step)
            self.method.recv(packet, _RecordedPayload(event.payload), views)
        return self.pages[:size]

    def close(self) -> None:
        if self.method is not None:
            self.method.recv_cleanup()


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
    codec: Codec | None = None,
) -> ReplayResult:
    """Apply the pages of ``block`` from every channel to ``image``.

    Every packet of every block is decoded (the codec streams span blocks);
    only ``block``'s pages are written. ``main_epoch(k, writer)`` applies the
    main stream's records of epoch k (legacy zero pages) after the channels'.
    ``codec`` decodes the payloads instead of the registered codec of their
    flag (to check a codec against QEMU's own streams).
    """
    if not channel_files:
        raise MfdcompError("replay needs at least one multifd channel file")
    if limits.ramblocks is not None:
        # Checked before IMAGE is created: a misspelt block would otherwise leave an empty image and exit 0.
        check_block_present(block, limits.ramblocks, "the main stream's ramblock table")
    ids = ChannelIds()
    channels = [
        _Channel(number, channel_events(path, limits, ids), limits, codec) for number, path in enumerate(channel_files)
    ]
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
        for channel in channels:
            channel.close()
        writer.close()
    return result


def check_block_present(block: str, present: Iterable[str], where: str) -> None:
    """Raise unless ``block`` is among ``present`` (the blocks of ``where``), naming them."""
    names = sorted(present)
    if block not in names:
        listed = ", ".join(names) if names else "none"
        raise MfdcompError(f"no ramblock {block!r} in {where}; blocks present: {listed}")


def replay_capture(directory: Path, codec: Codec | None = None, *, block: str = "ram0") -> str:
    """The sha256 of ``block`` after replaying a capture directory (``qemu-multifd-capture/1``).

    Its manifest.json names the channel files and the main stream; the image
    has the block's length from the main stream and lives in a temporary
    directory. ``codec`` is as for :func:`replay`.
    """
    manifest = json.loads((directory / "manifest.json").read_text())
    page_size = manifest.get("page_size", DEFAULT_PAGE_SIZE)
    channels = manifest["multifd_channels"]
    multifd = [directory / channels[key]["file"] for key in sorted(channels, key=int)]
    main = manifest.get("main_channel")
    stream = parse_main_stream((directory / main["file"]).read_bytes(), page_size) if main else None
    limits = ReceiverLimits(page_size=page_size, ramblocks=stream.ramblocks if stream is not None else None)
    with tempfile.TemporaryDirectory(prefix="mfdcomp-replay-") as scratch:
        result = replay(
            multifd,
            Path(scratch) / "image",
            block,
            limits=limits,
            size=stream.ramblocks.get(block) if stream is not None else None,
            main_epoch=main_records_applier(stream, block) if stream is not None else None,
            codec=codec,
        )
    return result.sha256


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

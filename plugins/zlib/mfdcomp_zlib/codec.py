"""QEMU's multifd zlib (spec §5.2): one deflate stream per channel, sync-flushed per packet.

The sender feeds the packet's pages (adjacent ones as one piece) into the
channel's deflate stream and ends the packet with Z_SYNC_FLUSH, so the
payload stops on a byte boundary with the empty stored block ``00 00 ff ff``
and the stream goes on in the next packet. The receiver inflates with one
stream per channel, in packet order, into the packet's pages in target memory.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence

from typing_extensions import Buffer

from mfdcomp.errors import CodecError
from mfdcomp.methods import CodecInfo, CodecPath, MultiFDMethods, PageViews, PathProbe, PayloadSource, SendPayload
from mfdcomp.wire import Flag, RamPacket

ZLIB_INFO = CodecInfo(
    name="zlib",
    qemu_flag=int(Flag.ZLIB),
    wire_format="zlib-stream",
    stateful=True,
    paths=(CodecPath.SOFTWARE,),
    levels=(0, 9),
    default_level=1,
    description="zlib: one deflate stream per channel, Z_SYNC_FLUSH at every packet end (QEMU's zlib)",
)

# What Z_SYNC_FLUSH leaves at the end of every packet: an empty stored block.
SYNC_FLUSH_MARKER = b"\x00\x00\xff\xff"


def _spans(pages: Sequence[memoryview]) -> Sequence[memoryview]:
    """The pages in order, adjacent ones as one view when the engine tells which are adjacent."""
    return pages.runs() if isinstance(pages, PageViews) else pages


class ZlibMethods(MultiFDMethods):
    """One channel's zlib stream, one direction.

    A packet that fails leaves the stream out of step with the peer's, so the
    stream is dropped then and every later packet of the channel is refused.
    """

    info = ZLIB_INFO

    def __init__(self, page_size: int, level: int | None) -> None:
        super().__init__(page_size, level)
        self._deflate: zlib._Compress | None = None
        self._inflate: zlib._Decompress | None = None

    def send_setup(self, channel: int) -> None:
        super().send_setup(channel)
        assert self.level is not None, "ZLIB_INFO has a default level"
        # windowBits 15, memLevel 8, default strategy: QEMU's deflateInit(level).
        self._deflate = zlib.compressobj(self.level)

    def send_prepare(self, pages: Sequence[memoryview]) -> SendPayload:
        self.owner.check()
        deflate = self._deflate
        if deflate is None:
            raise self._closed()
        self._deflate = None
        try:
            # Straight from the pages, with no copy into one buffer; deflate's
            # output does not depend on how its input is split.
            chunks = [deflate.compress(span) for span in _spans(pages)]
            chunks.append(deflate.flush(zlib.Z_SYNC_FLUSH))
        except zlib.error as exc:
            raise CodecError(f"zlib deflate failed: {exc}") from exc
        self._deflate = deflate
        buffers: list[Buffer] = [chunk for chunk in chunks if chunk]
        return SendPayload(buffers=buffers, size=sum(map(len, chunks)), path=CodecPath.SOFTWARE)

    def send_cleanup(self) -> None:
        self._deflate = None

    def recv_setup(self, channel: int) -> None:
        super().recv_setup(channel)
        self._inflate = zlib.decompressobj()

    def recv(self, packet: RamPacket, source: PayloadSource, pages: Sequence[memoryview]) -> CodecPath:
        self.owner.check()
        inflate = self._inflate
        if inflate is None:
            raise self._closed()
        self._inflate = None
        expected = len(pages) * self.page_size
        payload = source.read()
        try:
            # One byte of room past the pages: enough to tell "too much" from
            # "exact" (and to take in the flush marker), never a bomb's worth.
            out = inflate.decompress(payload, expected + 1)
        except zlib.error as exc:
            raise self._bad(packet, pages, f"is corrupt: {exc}") from exc
        if inflate.eof:
            raise self._bad(packet, pages, "ends the zlib stream, but QEMU keeps one open stream per channel")
        if len(out) > expected:
            raise self._bad(packet, pages, f"decodes to more than {expected} bytes")
        if len(out) < expected:
            raise self._bad(packet, pages, f"decodes to {len(out)} bytes, short of {expected}")
        if payload[-len(SYNC_FLUSH_MARKER) :] != SYNC_FLUSH_MARKER:
            raise self._bad(packet, pages, "does not end with the sync-flush marker 00 00 ff ff: truncated?")
        view = memoryview(out)
        start = 0
        for span in _spans(pages):
            end = start + len(span)
            span[:] = view[start:end]
            start = end
        self._inflate = inflate
        return CodecPath.SOFTWARE

    def recv_cleanup(self) -> None:
        self._inflate = None

    def _bad(self, packet: RamPacket, pages: Sequence[memoryview], problem: str) -> CodecError:
        return CodecError(
            f"zlib payload of packet {packet.packet_num} (pages: {len(pages)} × {self.page_size} bytes) {problem}"
        )

    def _closed(self) -> CodecError:
        return CodecError(
            f"the zlib stream of channel {self.owner.channel} is closed (cleaned up, or an earlier packet failed)"
        )


@functools.cache
def _probe() -> tuple[PathProbe, ...]:
    version = zlib.ZLIB_RUNTIME_VERSION
    reason = f"Python's zlib module, running zlib {version}"
    return (PathProbe(CodecPath.SOFTWARE, True, reason, library="zlib", version=version),)


class ZlibCodec:
    info = ZLIB_INFO

    def probe(self) -> tuple[PathProbe, ...]:
        return _probe()

    def methods(self, page_size: int, level: int | None, path: CodecPath = CodecPath.SOFTWARE) -> ZlibMethods:
        if path is not CodecPath.SOFTWARE:
            raise CodecError(f"zlib has only the software path, not {path}")
        return ZlibMethods(page_size, level)

"""lz4 as an mfdcomp extension codec: one raw LZ4 block per packet.

QEMU has no lz4, so packets carry mfdcomp's extension marker (every codec
bit set) and :data:`EXTENSION_ID` in the RAM packet's extension-id word.

Payload: the packet's normal pages, in packet order, compressed as one LZ4
block (``lz4.block.compress(..., store_size=False)``: no size prefix, no
frame, no checksum). Every packet stands alone, so there is no stream state.
The receiver knows the decoded size from the packet (normal pages × page
size) and decodes with exactly that bound: a payload that would decode to
more, or to less, is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import lz4  # type: ignore[import-untyped]  # python-lz4 ships no type information
import lz4.block  # type: ignore[import-untyped]
from mfdcomp.errors import CodecError
from mfdcomp.methods import CodecInfo, CodecPath, MultiFDMethods, PageViews, PathProbe, PayloadSource, SendPayload
from mfdcomp.wire import RamPacket

# The ASCII of "LZ4" and a format version byte, read as a big-endian u32:
# 0x4C5A3401 = 1280979969. Fixed forever for this wire format; a new payload
# layout would take a new id ("LZ4\x02"), never reuse this one.
EXTENSION_ID = int.from_bytes(b"LZ4\x01", "big")

# Level 1 is LZ4's fast compressor; levels 2-12 are LZ4 HC at that level.
# The level only changes the sender: every level decodes the same way.
FAST_LEVEL = 1

LZ4_INFO = CodecInfo(
    name="lz4",
    qemu_flag=None,
    extension_id=EXTENSION_ID,
    wire_format="lz4-block-per-packet",
    stateful=False,
    paths=(CodecPath.SOFTWARE,),
    levels=(1, 12),
    default_level=FAST_LEVEL,
    page_sizes=(4096, 16384, 65536),
    description="lz4 (mfdcomp extension, not in QEMU): one raw LZ4 block per packet",
)


def _spans(pages: Sequence[memoryview]) -> Sequence[memoryview]:
    """The pages in order, adjacent ones as one view when the engine tells which are adjacent."""
    return pages.runs() if isinstance(pages, PageViews) else pages


class Lz4Methods(MultiFDMethods):
    """One channel's lz4 context, one direction (no state is kept between packets)."""

    info = LZ4_INFO

    def send_prepare(self, pages: Sequence[memoryview]) -> SendPayload:
        self.owner.check()
        spans = _spans(pages)
        # LZ4 compresses one contiguous buffer: join the spans unless the pages are already one.
        data = spans[0] if len(spans) == 1 else b"".join(spans)
        try:
            if self.level == FAST_LEVEL:
                payload = lz4.block.compress(data, store_size=False)
            else:
                payload = lz4.block.compress(data, mode="high_compression", compression=self.level, store_size=False)
        except lz4.block.LZ4BlockError as exc:
            raise CodecError(f"lz4 compression of {len(pages)} pages failed: {exc}") from exc
        return SendPayload(buffers=[payload], size=len(payload), path=CodecPath.SOFTWARE)

    def recv(self, packet: RamPacket, source: PayloadSource, pages: Sequence[memoryview]) -> CodecPath:
        self.owner.check()
        expected = len(pages) * self.page_size
        try:
            # uncompressed_size is the size of the output buffer liblz4 gets: a payload that
            # would decode past it fails inside the library, before anything reaches the pages.
            data = lz4.block.decompress(source.read(), uncompressed_size=expected)
        except lz4.block.LZ4BlockError as exc:
            raise CodecError(
                f"lz4 payload of packet {packet.packet_num} ({len(pages)} pages × {self.page_size} bytes) "
                f"is corrupt, truncated or decodes to more than {expected} bytes: {exc}"
            ) from exc
        if len(data) != expected:
            raise CodecError(
                f"lz4 payload of packet {packet.packet_num} decodes to {len(data)} bytes, "
                f"not the {expected} of its {len(pages)} pages"
            )
        position = 0
        view = memoryview(data)
        for span in _spans(pages):
            span[:] = view[position : position + len(span)]
            position += len(span)
        return CodecPath.SOFTWARE


@functools.cache
def _probe() -> tuple[PathProbe, ...]:
    version: str = lz4.library_version_string()
    reason = f"python-lz4 {lz4.__version__} with liblz4 {version}"
    return (PathProbe(CodecPath.SOFTWARE, True, reason, library="liblz4", version=version),)


class Lz4Codec:
    """What the plugin registers: the description, the probe and a factory of channel contexts."""

    info = LZ4_INFO

    def probe(self) -> tuple[PathProbe, ...]:
        return _probe()

    def methods(self, page_size: int, level: int | None, path: CodecPath = CodecPath.SOFTWARE) -> Lz4Methods:
        if path is not CodecPath.SOFTWARE:
            raise CodecError(f"lz4 has only the software path, not {path}")
        return Lz4Methods(page_size, level)

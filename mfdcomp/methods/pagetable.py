"""Per-page payloads of the QPL and UADK codecs (spec §5.4, §5.5).

A payload is a table of big-endian u32 lengths, one per normal page, then
one blob per page in the same order. A length equal to the page size marks
a page sent as it is (it did not shrink); any other length is a
self-contained compressed stream of that page. The two codecs differ only
in the stream format: raw deflate (QPL) or zlib (UADK).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence

from typing_extensions import Buffer

from mfdcomp.errors import CodecError
from mfdcomp.methods.contract import CodecInfo, PageViews, PayloadSource
from mfdcomp.methods.deflate import STDLIB, Deflate
from mfdcomp.wire import COMPRESSION_MASK, RamPacket

LENGTH_SIZE = 4

# Decodes one page's stream to exactly the page size, or raises ValueError saying
# what is wrong with it (decode_pages adds which page): a vendor library's inflate.
PageInflater = Callable[[memoryview], Buffer]

# zlib window settings for the decoders: the largest window of each format,
# so streams made with any smaller window (QPL's 4 KiB one included) decode.
RAW_DEFLATE_WBITS = -15
ZLIB_WBITS = 15


def length_table(lengths: Sequence[int]) -> bytes:
    return struct.pack(f">{len(lengths)}I", *lengths)


def encode_pages(
    pages: Sequence[memoryview], page_size: int, compress: Callable[[memoryview], bytes]
) -> tuple[list[Buffer], int]:
    """The payload's buffers and size; a page whose blob is not shorter than the page goes raw."""
    lengths: list[int] = []
    buffers: list[Buffer] = [b""]  # the table, once the lengths are known
    for page in pages:
        blob = compress(page)
        if len(blob) < page_size:
            buffers.append(blob)
            lengths.append(len(blob))
        else:
            # The page view itself is sent: no copy.
            buffers.append(page)
            lengths.append(page_size)
    buffers[0] = length_table(lengths)
    return buffers, LENGTH_SIZE * len(lengths) + sum(lengths)


def raw_pages(pages: Sequence[memoryview], page_size: int) -> tuple[list[Buffer], int]:
    """Every page raw: the payload a codec sends when it has nothing to compress with."""
    # The pages follow the table back to back, so adjacent ones can travel as one buffer.
    views = pages.runs() if isinstance(pages, PageViews) else pages
    return [length_table([page_size] * len(pages)), *views], (LENGTH_SIZE + page_size) * len(pages)


def decode_pages(
    info: CodecInfo,
    packet: RamPacket,
    source: PayloadSource,
    pages: Sequence[memoryview],
    page_size: int,
    wbits: int,
    inflate: PageInflater | None = None,
) -> int:
    """Fill ``pages`` from the payload; returns how many pages were compressed.

    Compressed pages go through ``inflate`` when given, else through zlib
    with ``wbits``.

    The whole length table is checked before any page is written, and a
    page is written only once its blob decoded to exactly ``page_size``
    bytes: a corrupt packet writes nothing but the pages before the bad one.
    """
    codec = info.name
    if packet.flags & COMPRESSION_MASK != info.qemu_flag:
        raise CodecError(
            f"{codec} received a packet with flags 0x{packet.flags:x}, expected codec bits 0x{info.qemu_flag:02x}"
        )
    count = len(pages)
    table_size = LENGTH_SIZE * count
    if source.size < table_size:
        raise CodecError(
            f"{codec} payload of {source.size} bytes cannot hold the length table of {count} pages ({table_size} bytes)"
        )
    payload = source.read()
    lengths = struct.unpack_from(f">{count}I", payload)
    for index, length in enumerate(lengths):
        if not 0 < length <= page_size:
            raise CodecError(
                f"{_where(codec, packet, index, count)}: length {length} in the table, must be 1..{page_size}"
            )
    if table_size + sum(lengths) != source.size:
        raise CodecError(
            f"{codec} length table of {count} pages adds up to {table_size + sum(lengths)} bytes "
            f"but the payload is {source.size}"
        )
    compressed = 0
    start = table_size
    for index, (page, length) in enumerate(zip(pages, lengths, strict=True)):
        blob = payload[start : start + length]
        start += length
        if length == page_size:
            page[:] = blob
            continue
        try:
            data = _inflate(blob, page_size, wbits) if inflate is None else inflate(blob)
        except zlib.error as exc:
            raise CodecError(f"{_where(codec, packet, index, count)}: corrupt compressed stream: {exc}") from exc
        except ValueError as exc:
            raise CodecError(f"{_where(codec, packet, index, count)}: {exc}") from exc
        page[:] = data
        compressed += 1
    return compressed


def deflate_inflater(lib: Deflate, page_size: int, wbits: int) -> PageInflater:
    """Pages inflated by ``lib`` (ISA-L, say) with the same checks as zlib's; its errors become ValueErrors."""

    def inflate(blob: memoryview) -> Buffer:
        try:
            return _inflate(blob, page_size, wbits, lib)
        except lib.error as exc:
            raise ValueError(f"corrupt compressed stream: {exc}") from exc

    return inflate


def _inflate(blob: memoryview, page_size: int, wbits: int, lib: Deflate = STDLIB) -> bytes:
    """One page's stream, decoded to at most ``page_size + 1`` bytes and checked to end exactly.

    A ValueError names what is wrong with the stream; the caller adds which page.
    """
    inflate = lib.decompressobj(wbits)
    out = inflate.decompress(blob, page_size + 1)
    if len(out) > page_size:
        raise ValueError(f"compressed stream of {len(blob)} bytes decodes to more than the page size {page_size}")
    if not inflate.eof:
        raise ValueError(f"compressed stream of {len(blob)} bytes is cut short after {len(out)} decoded bytes")
    if inflate.unused_data:
        raise ValueError(f"{len(inflate.unused_data)} bytes follow the end of the compressed stream")
    if len(out) < page_size:
        raise ValueError(f"compressed stream decodes to {len(out)} bytes, not the page size {page_size}")
    return out


def _where(codec: str, packet: RamPacket, index: int, count: int) -> str:
    return f"{codec} page {index} of {count} (ramblock {packet.ramblock!r}, offset 0x{packet.normal_offsets[index]:x})"

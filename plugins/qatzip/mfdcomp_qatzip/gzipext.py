"""QATzip's GZIP_EXT payload in pure Python (over zlib): writer, framing check, bounded reader.

What libqatzip 1.3.1's software path writes for one ``qzCompress(..., last=1)``
call (../shared/vectors/qatzip), and so what :func:`compress` writes:

* one gzip member: ``1f 8b 08``, FLG = FEXTRA, MTIME 0, XFL 4 at level 1,
  2 at level 9, 0 between, OS 255;
* XLEN 12 with one subfield ``'QZ'`` of 8 bytes: u32le input length, u32le
  deflate length;
* raw deflate: the input in 64 KiB chunks (the library's ``hw_buff_sz``),
  each deflated with a fresh state (memLevel 9), every chunk but the last
  ended by a sync flush, the last by Z_FINISH;
* CRC-32 and ISIZE, little-endian.

With the same zlib this reproduces the library's bytes (the vectors'
``deflate_body_equals_python_zlib``). QAT hardware writes one such member
per 64 KiB chunk; the readers here take any number of members.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from typing_extensions import Buffer

from mfdcomp.errors import CodecError

CHUNK = 64 * 1024
MEM_LEVEL = 9
_FEXTRA = 0x04
_OS_UNKNOWN = 255
# ID1 ID2 CM FLG MTIME XFL OS XLEN, then the 'QZ' subfield: SI1 SI2 LEN, source length, deflate length.
_HEADER = struct.Struct("<BBBBIBBHccHII")
_TRAILER = struct.Struct("<II")
HEADER_SIZE = _HEADER.size
TRAILER_SIZE = _TRAILER.size


def _xfl(level: int) -> int:
    # Seen in the library's output at every level: gzip's "fastest" and "best" marks only.
    return {1: 4, 9: 2}.get(level, 0)


def compress(data: Buffer, level: int) -> bytes:
    """One GZIP_EXT member holding ``data``, as libqatzip's software path writes it."""
    view = memoryview(data).cast("B")
    size = view.nbytes
    parts: list[bytes] = []
    for start in range(0, size, CHUNK):
        deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, MEM_LEVEL)
        last = start + CHUNK >= size
        parts.append(deflater.compress(view[start : start + CHUNK]))
        parts.append(deflater.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH))
    body = b"".join(parts)
    header = _HEADER.pack(
        0x1F, 0x8B, zlib.DEFLATED, _FEXTRA, 0, _xfl(level), _OS_UNKNOWN, 12, b"Q", b"Z", 8, size, len(body)
    )
    trailer = _TRAILER.pack(zlib.crc32(view), size & 0xFFFFFFFF)
    return b"".join((header, body, trailer))


@dataclass(frozen=True, slots=True)
class Member:
    """Where one GZIP_EXT member lies in a payload, and the size it says it decodes to."""

    offset: int
    length: int
    size: int


def qz_members(payload: Buffer) -> list[Member] | None:
    """The members of a payload framed by their 'QZ' fields, or None if one lacks that field.

    Checks what the fields promise without inflating anything: each member
    ends inside the payload, its ISIZE equals its 'QZ' input length, and the
    members fill the payload exactly. A payload of plain gzip members (no
    'QZ' field) cannot be framed this way; None sends it to :func:`decompress_into`.
    """
    view = memoryview(payload).cast("B")
    members: list[Member] = []
    offset = 0
    while offset < len(view):
        if len(view) - offset < HEADER_SIZE:
            return None
        magic1, magic2, method, flags, _, _, _, xlen, si1, si2, sublen, size, deflated = _HEADER.unpack_from(
            view, offset
        )
        if (magic1, magic2, method) != (0x1F, 0x8B, zlib.DEFLATED):
            raise CodecError(f"gzip member {len(members)} at byte {offset} has no gzip deflate header")
        if (flags, xlen, si1, si2, sublen) != (_FEXTRA, 12, b"Q", b"Z", 8):
            return None
        end = offset + HEADER_SIZE + deflated + TRAILER_SIZE
        if end > len(view):
            raise CodecError(
                f"payload truncated: gzip member {len(members)} at byte {offset} needs {end - offset} bytes, "
                f"the payload has {len(view) - offset} left"
            )
        isize = int.from_bytes(view[end - 4 : end], "little")
        if isize != size & 0xFFFFFFFF:
            raise CodecError(f"gzip member {len(members)}: ISIZE {isize} contradicts its 'QZ' input length {size}")
        members.append(Member(offset, end - offset, size))
        offset = end
    return members


def check_trailers(payload: Buffer, members: Sequence[Member], output: Buffer) -> None:
    """Check each member's CRC-32 and ISIZE against the bytes it decoded to (``output``, members in order).

    libqatzip 1.3.1 does not: a member whose deflate body was cut short (its
    'QZ' length adjusted) can inflate to the right length but other bytes.
    """
    view = memoryview(payload).cast("B")
    data = memoryview(output).cast("B")
    start = 0
    for index, member in enumerate(members):
        crc, isize = _TRAILER.unpack_from(view, member.offset + member.length - TRAILER_SIZE)
        part = data[start : start + member.size]
        if isize != len(part) & 0xFFFFFFFF:
            raise CodecError(f"gzip member {index}: ISIZE {isize} but it decoded to {len(part)} bytes")
        got = zlib.crc32(part)
        if got != crc:
            raise CodecError(
                f"gzip member {index}: CRC-32 0x{got:08x} of its decoded bytes, its trailer says 0x{crc:08x}"
            )
        start += member.size


def decompress_into(payload: Buffer, pages: Sequence[memoryview], page_size: int) -> None:
    """Decode gzip members (any number, 'QZ' field or not) into ``pages``, exactly filling them.

    zlib checks every member's header, CRC-32 and ISIZE. At most one byte more
    than the pages hold is ever inflated, and only the pages are written.
    """
    view = memoryview(payload).cast("B")
    expected = len(pages) * page_size
    produced = 0
    offset = 0
    member = 0
    while offset < len(view):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = inflater.decompress(view[offset:], expected - produced + 1)
        except zlib.error as exc:
            raise CodecError(f"gzip member {member} at payload byte {offset} is corrupt: {exc}") from exc
        if produced + len(chunk) > expected:
            raise CodecError(f"payload decodes to more than the {expected} bytes of its {len(pages)} pages")
        if not inflater.eof:
            raise CodecError(f"payload truncated inside gzip member {member} (at payload byte {offset})")
        _scatter(pages, page_size, produced, chunk)
        produced += len(chunk)
        offset = len(view) - len(inflater.unused_data)
        member += 1
    if produced != expected:
        raise CodecError(f"payload decodes to {produced} bytes, expected {expected} ({len(pages)} pages)")


def _scatter(pages: Sequence[memoryview], page_size: int, start: int, data: bytes) -> None:
    """Copy ``data`` into the pages as if they were one buffer, from byte ``start`` on."""
    source = memoryview(data)
    done = 0
    while done < len(source):
        index, within = divmod(start + done, page_size)
        count = min(page_size - within, len(source) - done)
        pages[index][within : within + count] = source[done : done + count]
        done += count

"""mfdcomp's file format, after QEMU's mapped-ram layout (spec §9): pure layout and headers.

A file holds every block at fixed offsets, so channels write pages with
``pwritev`` in any order and a page sent again overwrites its own slot::

    0       file header (one 4 KiB page): magic, version, state, page size, manifest place
    4096    per block: name record (u8 length, name, be64 used_length, as QEMU's setup
            record), QEMU's 28-byte MappedRamHeader, the block's bitmap, then its pages
            from the next 1 MiB boundary
    end     manifest: the session (JSON) and the sha256 of every block

The state word turns COMPLETE only after the bitmaps, the manifest and an
fsync: a file whose writer stopped half-way is never taken for a whole one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mfdcomp.errors import WireError

FILE_MAGIC = b"MFDR"
FILE_VERSION = 1
FILE_HEADER = struct.Struct(">4sIIIQQ")  # magic, version, state, page_size, manifest_offset, manifest_size
FILE_HEADER_AREA = 4096
STATE_WRITING = 0
STATE_COMPLETE = 1

MAPPED_RAM_VERSION = 1
MAPPED_RAM_HEADER = struct.Struct(">IQQQ")  # version, page_size, bitmap_offset, pages_offset
PAGES_ALIGNMENT = 0x100000
USED_LENGTH = struct.Struct(">Q")
LOAD_CHUNK = 0x100000
"""Largest single read of pages when loading, as QEMU's MAPPED_RAM_LOAD_BUF_SIZE."""


def _round_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def bitmap_size(pages: int) -> int:
    """Bytes of a block's bitmap: whole 64-bit words, as the host's unsigned long array."""
    return _round_up(pages, 64) // 8


@dataclass(frozen=True, slots=True)
class BlockPlace:
    """Where one block lives in the file."""

    name: str
    size: int
    record_offset: int
    bitmap_offset: int
    pages_offset: int
    page_size: int

    @property
    def pages(self) -> int:
        return self.size // self.page_size

    @property
    def bitmap_size(self) -> int:
        return bitmap_size(self.pages)

    @property
    def end(self) -> int:
        return self.pages_offset + self.size

    def record(self) -> bytes:
        """The name record and the MappedRamHeader, as they sit at ``record_offset``."""
        name = self.name.encode()
        return (
            bytes([len(name)])
            + name
            + USED_LENGTH.pack(self.size)
            + MAPPED_RAM_HEADER.pack(MAPPED_RAM_VERSION, self.page_size, self.bitmap_offset, self.pages_offset)
        )


def layout(blocks: list[tuple[str, int]], page_size: int) -> list[BlockPlace]:
    """The place of every block, one after the other from the end of the file header."""
    places: list[BlockPlace] = []
    position = FILE_HEADER_AREA
    for name, size in blocks:
        encoded = name.encode()
        if not 0 < len(encoded) < 256:
            raise WireError(f"block name {name!r} must be 1-255 bytes", field="ramblock", value=name)
        bitmap_offset = position + 1 + len(encoded) + USED_LENGTH.size + MAPPED_RAM_HEADER.size
        pages_offset = _round_up(bitmap_offset + bitmap_size(size // page_size), PAGES_ALIGNMENT)
        places.append(BlockPlace(name, size, position, bitmap_offset, pages_offset, page_size))
        position = pages_offset + size
    return places


@dataclass(frozen=True, slots=True)
class FileHeader:
    state: int
    page_size: int
    manifest_offset: int
    manifest_size: int

    def encode(self) -> bytes:
        return FILE_HEADER.pack(
            FILE_MAGIC, FILE_VERSION, self.state, self.page_size, self.manifest_offset, self.manifest_size
        )

    @classmethod
    def decode(cls, data: bytes, file_size: int) -> FileHeader:
        if len(data) < FILE_HEADER.size:
            raise WireError(
                f"file is {len(data)} bytes, shorter than its header",
                field="size",
                value=len(data),
                limit=FILE_HEADER.size,
            )
        magic, version, state, page_size, offset, size = FILE_HEADER.unpack_from(data)
        if magic != FILE_MAGIC:
            raise WireError(f"not an mfdcomp mapped-ram file (magic {magic!r})", field="magic", value=magic.hex())
        if version != FILE_VERSION:
            raise WireError(f"file version {version} is not {FILE_VERSION}", field="version", value=version)
        if state != STATE_COMPLETE:
            raise WireError(
                "the file was never completed: its writer stopped before the end, so it is refused",
                field="state",
                value=state,
            )
        if offset < FILE_HEADER_AREA or size > 1 << 24 or offset + size > file_size:
            raise WireError(
                f"manifest at {offset}+{size} lies outside the {file_size}-byte file",
                field="manifest_offset",
                value=offset,
                limit=file_size,
            )
        return cls(state, page_size, offset, size)


def check_record(data: bytes, place: BlockPlace) -> None:
    """The name record and MappedRamHeader found in the file must be the ones the layout implies."""
    expected = place.record()
    if data[: len(expected)] == expected:
        return
    if len(data) >= len(expected):
        version = MAPPED_RAM_HEADER.unpack_from(data, len(expected) - MAPPED_RAM_HEADER.size)[0]
        if version > MAPPED_RAM_VERSION:
            raise WireError(
                f"block {place.name!r}: mapped-ram header version {version} is newer than {MAPPED_RAM_VERSION}",
                field="version",
                value=version,
                limit=MAPPED_RAM_VERSION,
            )
    raise WireError(
        f"block {place.name!r}: record at offset {place.record_offset} does not match the manifest's layout",
        field="record",
        value=place.record_offset,
    )

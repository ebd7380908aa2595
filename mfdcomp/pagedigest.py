"""The xxh3-128 verification digest: one XXH3-128 per page, kept as the pages move.

A block's digest is XXH3-128 of its pages' XXH3-128 digests (16 bytes each,
canonical big-endian, in page order). Unlike sha256 or blake3 of the whole
image, it can be computed while the transfer runs: the source hashes each
page as it sends it, the destination each page right after the codec wrote
it into the target (read back from the target, cache-hot), and a zero page
takes the zero page's digest without being read. At the end of the stream
only the tables (16 bytes a page: 2 MiB for 512 MiB) are hashed, instead of
both images read again after the transfer.

What it proves: the target's pages, as they stood after their last write,
equal the source's pages as they were last sent; pages never written are
the fresh target's zeros. Computed in one pass over a whole block (a
mapped-ram file, ``mfdcomp recv --listen file:``), it is the same value.

The hashing is compiled (mfdcomp/_xxh3_pages.h, xxHash's own header, one
build per instruction set picked at load) or done
with the xxhash package, byte for byte the same (tests compare them).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
import numpy.typing as npt
import xxhash
from typing_extensions import Buffer

from mfdcomp import speedups

__all__ = ["ALGORITHM", "DIGEST_SIZE", "PageDigests", "block_digest", "zero_page_digest"]

ALGORITHM = "xxh3-128"
DIGEST_SIZE = 16
"""Bytes of one page's entry in a table: XXH3-128, canonical (big-endian)."""


Table = npt.NDArray[np.uint8]
"""One row of DIGEST_SIZE bytes per page."""


@functools.cache
def zero_page_digest(page_size: int) -> bytes:
    return xxhash.xxh3_128_digest(bytes(page_size))


def hash_pages(memory: Buffer, offsets: Sequence[int], page_size: int, table: Buffer | Table) -> None:
    """Write the digest of the page at each byte offset of ``memory`` into its slot of ``table``.

    Offsets must be page-aligned pages of ``memory`` whose slots fit ``table``: ValueError otherwise.
    """
    compiled = _speedups
    if compiled is not None:
        compiled.page_digests(memory, offsets, page_size, table)
        return
    view = memoryview(memory).cast("B")
    slots = memoryview(cast(Buffer, table)).cast("B")  # numpy's stubs do not say ndarray is a Buffer
    digest = xxhash.xxh3_128_digest
    for offset in _check(view.nbytes, offsets, page_size, slots.nbytes):
        slot = offset // page_size * DIGEST_SIZE
        slots[slot : slot + DIGEST_SIZE] = digest(view[offset : offset + page_size])


def _check(size: int, offsets: Sequence[int], page_size: int, table_size: int) -> list[int]:
    """The offsets as ints, checked in the compiled path's order (every page first, then every slot)."""
    checked = check_pages(size, offsets, page_size)
    check_slots(checked, page_size, table_size)
    return checked


def check_pages(size: int, offsets: Sequence[int], page_size: int) -> list[int]:
    """The offsets as ints, each the start of a whole page of a ``size``-byte block: ValueError otherwise."""
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    checked = [operator.index(offset) for offset in offsets]
    for offset in checked:
        if offset < 0 or offset % page_size or offset > size - page_size:
            raise ValueError(f"offset {offset} is not a page of a {size}-byte block ({page_size}-byte pages)")
    return checked


def check_slots(offsets: Sequence[int], page_size: int, table_size: int) -> None:
    """Every page's slot lies in a ``table_size``-byte table: ValueError otherwise."""
    for offset in offsets:
        if (offset // page_size + 1) * DIGEST_SIZE > table_size:
            raise ValueError(f"offset {offset}: no slot for its page in a {table_size}-byte digest table")


def hash_packed(staged: memoryview, offsets: Sequence[int], page_size: int, slots: memoryview) -> None:
    """Pure path: the digest of page k of ``staged`` (packed pages) into the slot of the page at offsets[k]."""
    digest = xxhash.xxh3_128_digest
    for k, offset in enumerate(offsets):
        slot = offset // page_size * DIGEST_SIZE
        slots[slot : slot + DIGEST_SIZE] = digest(staged[k * page_size : (k + 1) * page_size])


def new_table(size: int, page_size: int) -> Table:
    """A table for a ``size``-byte block whose every page is zero."""
    row = np.frombuffer(zero_page_digest(page_size), dtype=np.uint8)
    return np.tile(row, (size // page_size, 1))


def table_digest(table: Buffer | Table) -> str:
    return xxhash.xxh3_128_hexdigest(cast(Buffer, table))


def block_digest(memory: Buffer, page_size: int, data: Sequence[tuple[int, int]] | None = None) -> str:
    """The xxh3-128 digest of a whole block, in one pass (what the streamed tables end at).

    With ``data`` (page-aligned byte ranges), only those pages are read: the others count as zero pages.
    """
    view = memoryview(memory).cast("B")
    table = new_table(view.nbytes, page_size)
    pages_end = view.nbytes - view.nbytes % page_size  # a partial last page has no slot, as in new_table
    step = _BLOCK_STEP // page_size * page_size or page_size
    for first, last in [(0, pages_end)] if data is None else data:
        end = min(last, pages_end)
        for start in range(first, end, step):
            hash_pages(view, range(start, min(start + step, end), page_size), page_size, table)
    return table_digest(table)


# Pages hashed per call in block_digest: the offsets of 64 MiB of 4 KiB pages as one range.
_BLOCK_STEP = 64 << 20


class PageDigests:
    """The digest tables of a session's blocks, updated as pages are sent or written.

    Channels of one round touch distinct pages (as the received bitmap), so
    the tables need no lock; a table is read only after the channels ended.
    """

    def __init__(self, sizes: Mapping[str, int], page_size: int) -> None:
        self.page_size = page_size  # set once
        self.tables = {name: new_table(size, page_size) for name, size in sizes.items()}  # slots: see above
        self._zero = np.frombuffer(zero_page_digest(page_size), dtype=np.uint8)

    def hash_pages(self, name: str, memory: Buffer, offsets: Sequence[int]) -> None:
        """Pages at ``offsets`` of block ``name`` (read from ``memory``) now hold what they hold."""
        if offsets:
            hash_pages(memory, offsets, self.page_size, self.tables[name])

    def set_zero(self, name: str, offsets: Sequence[int]) -> None:
        """Pages at ``offsets`` of block ``name`` (checked offsets: pages of the block) are now zero."""
        if len(offsets):
            self.tables[name][np.asarray(offsets, dtype=np.intp) // self.page_size] = self._zero

    def hexdigests(self) -> dict[str, str]:
        return {name: table_digest(table) for name, table in self.tables.items()}


# The compiled module, or None for the pure path (the reference); tests swap it to run both.
_speedups = speedups.compiled()

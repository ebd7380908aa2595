"""Received pages into the target: from a channel's staging buffer, hashed on the way.

A destination channel has its codec write a packet's pages into a small
staging buffer (packed, one page after another), then :func:`store_pages`
puts each where it belongs. A file target is written with ``pwrite`` at the
pages' offsets: on tmpfs that costs the copy alone, while a store through
the file's shared mapping also maps each 4 KiB page (about 1 us of kernel
time per page on the 2-core VMs, 0.13 s per 512 MiB, measured with
MADV_POPULATE_WRITE after fallocate). A write that fails (no space left)
is an OSError, where a store through the mapping would be a SIGBUS. The
xxh3-128 digests (mfdcomp.pagedigest) are taken from the staging buffer,
still in the cache.

But each pwrite holds the file's inode lock, and the channels' writes then
wait on each other (on tmpfs spinning: 9-15 % of a 2-channel receiver's
samples). So the compiled store pwrites only while no other thread does;
otherwise it stores through the file's mapping, whose page faults take no
such lock, after asking for the pages with MADV_POPULATE_WRITE (which says
"no space" as an error, not a SIGBUS: the run is then pwritten, for the
OSError). Measured on a 512 MiB mixed image over TCP, 6 alternating pairs:
session 0.332 -> 0.311 s on 2 channels, 0.353 -> 0.310 s on 4.

Compiled in mfdcomp._speedups.store_pages, or pure Python here (the
reference); tests demand the same outcome of both.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from typing import cast

from typing_extensions import Buffer

from mfdcomp import speedups
from mfdcomp.pagedigest import Table, check_pages, check_slots, hash_packed

__all__ = ["page_runs", "store_pages"]


def store_pages(
    fd: int, block: Buffer, staged: Buffer, offsets: Sequence[int], page_size: int, table: Table | None
) -> None:
    """Page k of ``staged`` becomes the page at ``offsets[k]`` of ``block`` (and its digest goes into ``table``).

    ``fd`` is the file ``block`` maps (from its start), written with pwrite, or -1 to copy into ``block``.
    ValueError for offsets that are not pages of ``block``, slots outside ``table``, or pages that
    ``staged`` does not hold; OSError if a write fails.
    """
    compiled = _speedups
    if compiled is not None:
        compiled.store_pages(fd, block, staged, offsets, page_size, table)
        return
    if page_size <= 0:
        raise ValueError(f"page_size must be positive, got {page_size}")
    if fd < -1:
        raise ValueError(f"fd must be a file descriptor or -1, got {fd}")
    target = memoryview(block).cast("B")
    if target.readonly:
        raise BufferError("Object is not writable.")
    source = memoryview(staged).cast("B")
    checked = check_pages(target.nbytes, offsets, page_size)
    slots = None if table is None else memoryview(cast(Buffer, table)).cast("B")
    if slots is not None:
        check_slots(checked, page_size, slots.nbytes)
    if len(checked) * page_size > source.nbytes:
        raise ValueError(f"{len(checked)} pages of {page_size} bytes are not staged in a {source.nbytes}-byte buffer")
    if slots is not None:
        hash_packed(source, checked, page_size, slots)
    for first, count in page_runs(checked, page_size):
        data = source[first * page_size : (first + count) * page_size]
        if fd < 0:
            target[checked[first] : checked[first] + data.nbytes] = data
        else:
            _pwrite_all(fd, data, checked[first])


def page_runs(offsets: Sequence[int], page_size: int) -> Iterator[tuple[int, int]]:
    """(index of the first page, pages) of each run of adjacent pages in ``offsets``, in order."""
    start = 0
    for i in range(1, len(offsets) + 1):
        if i == len(offsets) or offsets[i] != offsets[i - 1] + page_size:
            yield start, i - start
            start = i


def _pwrite_all(fd: int, data: memoryview, at: int) -> None:
    while data:
        done = os.pwrite(fd, data, at)  # EINTR is retried by os.pwrite itself (PEP 475)
        if done == 0:
            raise OSError(errno.EIO, os.strerror(errno.EIO))  # as the compiled path: never spun on
        data = data[done:]
        at += done


# The compiled module, or None for the pure path (the reference); tests swap it to run both.
_speedups = speedups.compiled()

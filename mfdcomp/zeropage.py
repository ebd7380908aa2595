"""Zero-page detection and QEMU's sender-side zero-page partition.

A page is *zero* when every one of its bytes is 0. The multifd sender checks
each page of a packet, then reorders the packet's offsets with QEMU's
two-index swap (spec §6.2) so that normal pages come first and zero pages
after; :func:`partition` reproduces those swaps exactly, so the offsets land
in the same order as QEMU's and the packets are byte-identical.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided
from typing_extensions import Buffer  # collections.abc.Buffer is Python 3.12+

from mfdcomp import speedups

__all__ = ["is_zero_page", "partition", "zero_flags", "zero_page_mask"]

# Pages are read as uint64 words, 8 bytes at a time.
_WORD = 8


def _check_page_size(page_size: int) -> None:
    if page_size <= 0 or page_size % _WORD:
        raise ValueError(f"page_size must be a positive multiple of {_WORD}, got {page_size}")


def _byte_array(buf: Buffer) -> npt.NDArray[np.uint8]:
    """A flat uint8 view of ``buf``, sharing its memory."""
    view = memoryview(buf)
    # np.frombuffer can only map contiguous memory; a strided view would need a
    # copy, which is exactly what this module promises not to make.
    if not view.c_contiguous:
        raise ValueError("zero-page detection needs a C-contiguous buffer")
    return np.frombuffer(view, dtype=np.uint8)


# Why np.maximum.reduceat: measured (numpy 2.4, Python 3.11, one core of a
# shared 2-core Xeon VM, best of 5) over a 256 MiB buffer of 4 KiB pages, in
# GB/s of pages with 10 % / 100 % zero pages:
#   np.maximum.reduceat on uint64 (kept)        14.2 / 14.8
#   .any(axis=1) on (pages, words) uint64        11.8 / 12.2
#   np.bitwise_or.reduce(axis=1)                 11.5 / 11.9
#   .max(axis=1)                                 10.1 / 10.4
#   np.count_nonzero(axis=1)                      7.1 /  7.1
#   ctypes memcmp against a zero page, per page   8.3 /  5.6
#   bytes == zero page, per page                  8.2 /  7.8
#   first/last-word screen, then full check      30.3 / 13.3
# against a memory read bandwidth of 15.6 (np.sum) and a copy of 12.0
# (np.copyto). The row reductions pay a per-row overhead that reduceat does
# not; with 8 KiB and 64 KiB pages reduceat stays first or within noise of it
# (15-16 GB/s). The screen wins only when non-zero pages start or end with a
# non-zero word; it is 10 % slower on all-zero or sparse pages and 25 % slower
# on a cache-hot 512 KiB packet, so the full read is kept: its speed does not
# depend on the data.
def _mask(words: npt.NDArray[np.uint64], page_size: int) -> npt.NDArray[np.bool_]:
    """True for each all-zero page of ``words`` (a whole number of pages)."""
    starts = np.arange(0, words.size, page_size // _WORD)
    # A page's largest word is 0 only if all of its words are.
    zero: npt.NDArray[np.bool_] = np.maximum.reduceat(words, starts) == 0
    return zero


def zero_page_mask(pages: Buffer, page_size: int = 4096) -> npt.NDArray[np.bool_]:
    """Return one bool per page of ``pages``: True where the page is all zero.

    ``pages`` is any C-contiguous buffer whose length is a multiple of
    ``page_size``; it is read in place, never copied.
    """
    _check_page_size(page_size)
    data = _byte_array(pages)
    if data.size % page_size:
        raise ValueError(f"buffer of {data.size} bytes is not a whole number of {page_size}-byte pages")
    return _mask(data.view(np.uint64), page_size)


def zero_flags(block: Buffer, offsets: Sequence[int], page_size: int = 4096) -> list[bool]:
    """Return, for each byte offset in ``offsets``, whether the page of
    ``page_size`` bytes starting there in ``block`` is all zero."""
    _check_page_size(page_size)
    data = _byte_array(block)
    if len(offsets) == 0:
        return []
    # Checked on the Python ints, so that a huge offset is a clean ValueError
    # instead of an overflow when numpy converts it.
    low, high = min(offsets), max(offsets)
    if low < 0 or high > data.size - page_size:
        raise ValueError(
            f"page offsets must lie in [0, {data.size - page_size}] for a "
            f"{data.size}-byte block and {page_size}-byte pages, "
            f"got offsets from {low} to {high}"
        )
    if _speedups is not None:
        # Compiled: each page stops at its first non-zero 64 bytes, without the GIL (mfdcomp/_speedups.c).
        # Measured on the 512 MiB mixed image's sender: see README's Speed section.
        compiled: list[bool] = _speedups.zero_flags(data, offsets, page_size)
        return compiled
    first, count = offsets[0], len(offsets)
    # The first pass over RAM fills packets with consecutive pages: those are
    # read in place, which halves the time for 128 pages of 4 KiB (62 us ->
    # 32 us, out of cache); testing for it costs about 2.5 us otherwise.
    if list(offsets) == list(range(first, first + count * page_size, page_size)):
        pages = data[first : first + count * page_size]
    else:
        # One row per possible page start (rows overlap; nothing is copied),
        # so that one fancy index gathers the batch into a contiguous array.
        # For 128 random pages of 4 KiB this took 73 us against 89-100 us for
        # a per-page ``bytes ==`` loop, 85-126 us for per-page ctypes memcmp
        # and 180-240 us for per-page numpy reductions.
        windows = as_strided(
            data,
            shape=(data.size - page_size + 1, page_size),
            strides=(1, 1),
            writeable=False,
        )
        pages = windows[np.asarray(offsets, dtype=np.intp)].reshape(-1)
    flags: list[bool] = _mask(pages.view(np.uint64), page_size).tolist()
    return flags


# The compiled module, or None for the pure path (the reference); tests swap it to run both.
_speedups = speedups.compiled()


@functools.lru_cache(maxsize=8)
def _zero_bytes(size: int) -> bytes:
    return bytes(size)


def is_zero_page(page: Buffer) -> bool:
    """Return True if every byte of ``page`` is 0."""
    view = memoryview(page)
    # For a single page a copy plus memcmp beats numpy's call overhead: 0.19 us
    # for 4 KiB against 0.8-1.4 us for np.count_nonzero, np.max or np.any (at
    # 64 KiB numpy wins, 1.8 us against 3.0 us, but 4 KiB is the common page).
    return bytes(view) == _zero_bytes(view.nbytes)


def partition(offsets: list[int], zero: list[bool]) -> int:
    """Reorder ``offsets`` and ``zero`` in place, normal pages first, exactly
    as QEMU's sender does, and return the number of normal pages.

    ``zero[k]`` tells whether the page at ``offsets[k]`` is all zero; the two
    lists are swapped together. The order is not preserved.
    """
    if len(offsets) != len(zero):
        raise ValueError(f"offsets and zero flags differ in length: {len(offsets)} != {len(zero)}")
    i, j = 0, len(offsets) - 1
    while i <= j:
        if not zero[i]:
            i += 1
        else:
            # QEMU swaps even when i == j; swapping an entry with itself is a
            # no-op, so no special case is needed. Entry i is examined again.
            offsets[i], offsets[j] = offsets[j], offsets[i]
            zero[i], zero[j] = zero[j], zero[i]
            j -= 1
    return i

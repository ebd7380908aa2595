"""Tests for mfdcomp.zeropage: detection and QEMU's sender partition."""

from __future__ import annotations

import mmap
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
from conftest import COMPILED, speedups_as
from hypothesis import given, settings
from hypothesis import strategies as st
from typing_extensions import Buffer

from mfdcomp import zeropage
from mfdcomp.zeropage import is_zero_page, partition, zero_flags, zero_page_mask

PAGE_SIZES = [4096, 8192, 65536]


@pytest.fixture(autouse=True, params=["compiled", "pure"])
def hot_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test on both paths: mfdcomp._speedups and the pure-Python reference (issue 18.3)."""
    if request.param == "compiled" and COMPILED is None:
        pytest.skip("mfdcomp._speedups is not built here")
    with speedups_as(None if request.param == "pure" else COMPILED, zeropage):
        yield request.param


Maker = Callable[[bytes], Buffer]


def as_buffer(arr: npt.NDArray[Any]) -> Buffer:
    """An ndarray is a buffer at run time; numpy's stubs say so only for 3.12+."""
    return cast(Buffer, arr)


def _make_mmap(data: bytes, opened: list[mmap.mmap]) -> Buffer:
    m = mmap.mmap(-1, max(len(data), 1))
    m.write(data)
    opened.append(m)
    # An anonymous map cannot be empty; a view trims it to the wanted length.
    return m if len(data) == len(m) else memoryview(m)[: len(data)]


@pytest.fixture(params=["bytes", "bytearray", "memoryview", "mmap", "ndarray"])
def make(request: pytest.FixtureRequest) -> Iterator[Maker]:
    """Build a buffer of the requested kind holding the given bytes."""
    opened: list[mmap.mmap] = []
    makers: dict[str, Maker] = {
        "bytes": bytes,
        "bytearray": bytearray,
        "memoryview": lambda d: memoryview(bytearray(d)),
        "mmap": lambda d: _make_mmap(d, opened),
        "ndarray": lambda d: as_buffer(np.frombuffer(d, dtype=np.uint8).copy()),
    }
    yield makers[request.param]
    for m in opened:
        # close() fails with BufferError if the module kept a view of the map.
        m.close()


def pages_from(pattern: str, page_size: int) -> bytes:
    """One page per character: 'Z' all zero, 'N' all 0xA5."""
    return b"".join(bytes(page_size) if c == "Z" else b"\xa5" * page_size for c in pattern)


# --- detection ------------------------------------------------------------


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_mask_mixed_pages(make: Maker, page_size: int) -> None:
    buf = make(pages_from("ZNNZZN", page_size))
    mask = zero_page_mask(buf, page_size)
    assert mask.dtype == np.bool_
    assert mask.tolist() == [True, False, False, True, True, False]


@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("where", ["first", "last"])
def test_single_nonzero_byte_at_page_edge(make: Maker, page_size: int, where: str) -> None:
    data = bytearray(3 * page_size)
    # Only the middle page gets one non-zero byte, at its first or last byte.
    pos = page_size if where == "first" else 2 * page_size - 1
    data[pos] = 1
    buf = make(bytes(data))
    assert zero_page_mask(buf, page_size).tolist() == [True, False, True]
    assert zero_flags(buf, [0, page_size, 2 * page_size], page_size) == [True, False, True]
    assert is_zero_page(make(bytes(data[page_size : 2 * page_size]))) is False
    assert is_zero_page(make(bytes(data[:page_size]))) is True


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_all_zero_and_empty(make: Maker, page_size: int) -> None:
    assert zero_page_mask(make(bytes(4 * page_size)), page_size).tolist() == [True] * 4
    assert zero_page_mask(make(b""), page_size).tolist() == []


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_zero_flags_batch(make: Maker, page_size: int) -> None:
    pattern = "NZ" * 64 + "ZZN"
    buf = make(pages_from(pattern, page_size))
    # 128 offsets in a shuffled order, with one page asked for twice.
    order = [(k * 37) % len(pattern) for k in range(127)] + [5]
    offsets = [k * page_size for k in order]
    assert zero_flags(buf, offsets, page_size) == [pattern[k] == "Z" for k in order]
    # 128 consecutive pages (a first-pass packet) are read in place.
    consecutive = [k * page_size for k in range(3, 131)]
    assert zero_flags(buf, consecutive, page_size) == [pattern[k] == "Z" for k in range(3, 131)]
    assert zero_flags(buf, [], page_size) == []


def test_zero_flags_accepts_any_sequence_and_unaligned_offsets() -> None:
    block = bytearray(64)
    block[20] = 7  # inside the 16-byte pages at offsets 8 and 16, not 24 or 0
    assert zero_flags(block, (0, 8, 16, 24, 48), page_size=16) == [True, False, False, True, True]
    assert zero_flags(block, range(0, 49, 24), page_size=16) == [True, True, True]
    # Consecutive pages from an unaligned start: [4, 20) [20, 36) [36, 52).
    assert zero_flags(block, range(4, 52, 16), page_size=16) == [True, False, True]
    assert zero_flags(block, [5, 21], page_size=16) == [False, True]


def test_unaligned_buffer_start() -> None:
    # A view starting at an odd address: the uint64 view of it is unaligned.
    raw = bytearray(1 + 3 * 4096)
    raw[1 + 4096 + 100] = 9
    view = memoryview(raw)[1:]
    assert zero_page_mask(view).tolist() == [True, False, True]
    assert zero_flags(view, [4096, 0, 8192]) == [False, True, True]


def test_multidimensional_and_read_only_buffers() -> None:
    arr = np.zeros((4, 512), dtype=np.float64)  # four 4 KiB rows
    arr[2, 511] = -0.0  # the sign bit alone makes the page non-zero
    assert zero_page_mask(as_buffer(arr)).tolist() == [True, True, False, True]
    ro = mmap.mmap(-1, 8192)
    ro.write(b"\0" * 4095 + b"\1")
    readonly = memoryview(ro).toreadonly()
    assert zero_page_mask(readonly).tolist() == [False, True]
    assert zero_flags(readonly, [4096, 0]) == [True, False]
    readonly.release()
    ro.close()


def test_mask_does_not_copy() -> None:
    buf = bytearray(64 << 20)
    tracemalloc.start()
    try:
        zero_page_mask(buf)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 16384 pages: a page-start index and a result per page, nothing near 64 MiB.
    assert peak < 1 << 20


@pytest.mark.parametrize("page", [b"", b"\0", bytes(7), bytes(4096), bytes(65536), bytearray(100)])
def test_is_zero_page_true(page: bytes) -> None:
    assert is_zero_page(page)


@pytest.mark.parametrize(
    "page", [b"\1", b"\0" * 6 + b"\x80", bytes(4095) + b"\1", as_buffer(np.array([0, 0, 1], np.uint16))]
)
def test_is_zero_page_false(page: Buffer) -> None:
    assert not is_zero_page(page)


def test_is_zero_page_buffer_kinds(make: Maker) -> None:
    assert is_zero_page(make(bytes(4096)))
    assert not is_zero_page(make(b"\1" + bytes(4095)))


# --- errors ---------------------------------------------------------------


@pytest.mark.parametrize("page_size", [0, -8, 4, 12, 4097])
def test_bad_page_size(page_size: int) -> None:
    with pytest.raises(ValueError, match="page_size must be a positive multiple of 8"):
        zero_page_mask(bytes(4096), page_size)
    with pytest.raises(ValueError, match="page_size"):
        zero_flags(bytes(4096), [0], page_size)


@pytest.mark.parametrize("size", [1, 4095, 4097, 3 * 4096 + 8])
def test_mask_length_not_whole_pages(size: int) -> None:
    with pytest.raises(ValueError, match=f"buffer of {size} bytes is not a whole number of 4096-byte pages"):
        zero_page_mask(bytes(size))


def test_non_contiguous_buffer() -> None:
    strided = as_buffer(np.zeros((8, 1024), dtype=np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="C-contiguous"):
        zero_page_mask(strided)
    with pytest.raises(ValueError, match="C-contiguous"):
        zero_flags(strided, [0])


@pytest.mark.parametrize("offsets", [[-1], [0, 4097], [8192], [2**70], [0, -(2**70)]])
def test_zero_flags_offsets_outside_block(offsets: list[int]) -> None:
    with pytest.raises(ValueError, match=r"page offsets must lie in \[0, 4096\]"):
        zero_flags(bytes(8192), offsets)


def test_zero_flags_block_smaller_than_a_page() -> None:
    with pytest.raises(ValueError, match="page offsets"):
        zero_flags(bytes(100), [0])


def test_partition_length_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in length: 2 != 1"):
        partition([0, 4096], [True])


# --- partition ------------------------------------------------------------


def test_partition_hand_worked_zn_zn() -> None:
    # Pages 0..3 with pattern [Z, N, Z, N] (offsets in page units for reading):
    #   i=0 j=3: entry 0 (page 0) is Z -> swap 0,3 -> [3, 1, 2, 0], j=2
    #   i=0: page 3 is N -> i=1;  i=1: page 1 is N -> i=2
    #   i=2 j=2: page 2 is Z -> swap 2,2 (no-op) -> j=1; stop, normal_num = 2
    # The normal pages come out as [3, 1]: reversed from their input order.
    offsets = [0, 4096, 8192, 12288]
    zero = [True, False, True, False]
    assert partition(offsets, zero) == 2
    assert offsets == [12288, 4096, 8192, 0]
    assert zero == [False, False, True, True]


def test_partition_hand_worked_zzn_nz() -> None:
    # Pattern [Z, Z, N, N, Z] over pages 0..4:
    #   i=0 j=4: page 0 Z -> swap 0,4 -> [4, 1, 2, 3, 0], j=3
    #   i=0 j=3: page 4 Z -> swap 0,3 -> [3, 1, 2, 4, 0], j=2
    #   i=0: page 3 N -> i=1
    #   i=1 j=2: page 1 Z -> swap 1,2 -> [3, 2, 1, 4, 0], j=1
    #   i=1: page 2 N -> i=2 > j; normal_num = 2
    offsets = [0, 1, 2, 3, 4]
    zero = [True, True, False, False, True]
    assert partition(offsets, zero) == 2
    assert offsets == [3, 2, 1, 4, 0]
    assert zero == [False, False, True, True, True]


@pytest.mark.parametrize(
    ("zero", "normal_num", "expected"),
    [
        ([], 0, []),
        ([False], 1, [0]),
        ([True], 0, [0]),
        ([False] * 5, 5, [0, 1, 2, 3, 4]),
        # Each Z at the front is swapped with the current back entry, which is
        # also Z, so the swaps rotate the list left by one: 0 ends up last.
        ([True] * 5, 0, [1, 2, 3, 4, 0]),
    ],
)
def test_partition_edges(zero: list[bool], normal_num: int, expected: list[int]) -> None:
    offsets = list(range(len(zero)))
    assert partition(offsets, list(zero)) == normal_num
    assert offsets == expected


def reference_partition(items: tuple[tuple[int, bool], ...]) -> tuple[tuple[tuple[int, bool], ...], int]:
    """QEMU's swap loop restated as a recursion over immutable tuples."""

    def step(state: tuple[tuple[int, bool], ...], i: int, j: int) -> tuple[tuple[tuple[int, bool], ...], int]:
        if i > j:
            return state, i
        if not state[i][1]:
            return step(state, i + 1, j)
        swapped = list(state)
        swapped[i], swapped[j] = state[j], state[i]
        return step(tuple(swapped), i, j - 1)

    return step(items, 0, len(items) - 1)


@settings(max_examples=400)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=2**40), st.booleans()),
        max_size=200,
    )
)
def test_partition_properties(pairs: list[tuple[int, bool]]) -> None:
    offsets = [o for o, _ in pairs]
    zero = [z for _, z in pairs]
    normal_num = partition(offsets, zero)
    result = list(zip(offsets, zero, strict=True))
    # Offset and flag travel together; nothing lost or duplicated.
    assert Counter(result) == Counter(pairs)
    assert normal_num == zero.count(False)
    assert not any(zero[:normal_num])
    assert all(zero[normal_num:])
    expected, expected_num = reference_partition(tuple(pairs))
    assert (tuple(result), normal_num) == (expected, expected_num)


@settings(max_examples=100, deadline=None)
@given(
    page_size=st.sampled_from([8, 64, 4096]),
    kinds=st.lists(st.sampled_from(["zero", "first", "last", "middle", "random"]), max_size=40),
    data=st.data(),
)
def test_detect_then_partition_matches_bytes(page_size: int, kinds: list[str], data: st.DataObject) -> None:
    pages = []
    for kind in kinds:
        page = bytearray(page_size)
        if kind == "first":
            page[0] = 1
        elif kind == "last":
            page[-1] = 0x80
        elif kind == "middle":
            page[data.draw(st.integers(0, page_size - 1))] = data.draw(st.integers(1, 255))
        elif kind == "random":
            page[:] = data.draw(st.binary(min_size=page_size, max_size=page_size))
        pages.append(bytes(page))
    block = b"".join(pages)
    truth = [not any(p) for p in pages]
    assert zero_page_mask(block, page_size).tolist() == truth
    assert [is_zero_page(p) for p in pages] == truth

    order = data.draw(st.permutations(range(len(pages))))
    offsets = [k * page_size for k in order]
    flags = zero_flags(block, offsets, page_size)
    assert flags == [truth[k] for k in order]
    normal_num = partition(offsets, flags)
    assert normal_num == truth.count(False)
    expected, _ = reference_partition(tuple((k * page_size, truth[k]) for k in order))
    assert offsets == [o for o, _ in expected]

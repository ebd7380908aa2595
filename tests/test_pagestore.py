"""Received pages into the target (mfdcomp/pagestore.py, issue 18): staged, hashed, written in place.

The compiled and the pure path must leave the same target, the same digest
table and raise the same errors (a differential fuzz); a file target is
written with pwrite and left sparse where nothing was written, and so it is
when the compiled store goes through the file's mapping because another
channel is writing that file; a full filesystem is a typed error, through the
mapping too; every build of the compiled page hashing (AVX-512, AVX2, the
baseline) gives xxHash's own digests.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import xxhash
from conftest import COMPILED, outcome, speedups_as
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_faults_disk import mount_tmpfs

from mfdcomp import pagedigest, pagestore
from mfdcomp.clients.ram import RamClient, block_digest
from mfdcomp.engine.destination import TargetMemory
from mfdcomp.errors import NoSpaceError

PATHS = ["pure", pytest.param("compiled", marks=pytest.mark.skipif(COMPILED is None, reason="not built here"))]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    with speedups_as(None if request.param == "pure" else COMPILED, pagestore, pagedigest):
        yield request.param


def _pages(count: int, page_size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, count * page_size, dtype=np.uint8).tobytes()


def _both(
    block_size: int, staged: bytes, offsets: Sequence[object], page_size: int, table_size: int | None
) -> list[tuple[tuple[str, object], bytes, bytes | None]]:
    """Each path's outcome, target and table for one call into fresh memory (fd -1)."""
    outcomes = []
    for module in (None, COMPILED):
        with speedups_as(module, pagestore):
            block = bytearray(block_size)
            table = None if table_size is None else np.zeros(table_size, dtype=np.uint8)
            result = outcome(
                lambda b=block, t=table: pagestore.store_pages(-1, b, staged, offsets, page_size, t)  # type: ignore[arg-type,misc]
            )
            outcomes.append((result, bytes(block), None if table is None else table.tobytes()))
    return outcomes


@pytest.mark.skipif(COMPILED is None, reason="mfdcomp._speedups is not built here: nothing to compare")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    page_size=st.sampled_from([-64, 0, 8, 64, 96, 4096]),
    pages=st.integers(0, 6),
    extra=st.integers(0, 70),
    staged_pages=st.integers(0, 8),
    offsets=st.lists(
        st.one_of(
            st.integers(-(2**70), 2**70),
            st.integers(-100, 40000),
            st.booleans(),
            st.integers(0, 7).map(lambda k: k * 64),  # pages of a 64-byte-page block: the calls that write
        ),
        max_size=8,
    ),
    slots=st.one_of(st.none(), st.integers(0, 8)),
    seed=st.integers(0, 3),
)
def test_compiled_and_pure_paths_agree_on_hostile_calls(
    page_size: int, pages: int, extra: int, staged_pages: int, offsets: list[object], slots: int | None, seed: int
) -> None:
    unit = max(page_size, 8)
    staged = _pages(staged_pages, unit, seed)
    table_size = None if slots is None else slots * pagedigest.DIGEST_SIZE
    pure, fast = _both(pages * unit + extra, staged, offsets, page_size, table_size)
    assert pure == fast


@pytest.mark.skipif(COMPILED is None, reason="mfdcomp._speedups is not built here: nothing to compare")
def test_compiled_and_pure_paths_agree_on_runs_and_gaps() -> None:
    staged = _pages(9, 4096, seed=5)
    offsets = [0, 4096, 8192, 40960, 20480, 24576, 12288, 61440, 57344]  # runs, a reversed pair, a gap
    pure, fast = _both(16 * 4096, staged, offsets, 4096, 16 * 16)
    assert pure == fast and pure[0] == ("result", None)
    target = pure[1]
    for k, offset in enumerate(offsets):
        assert target[offset : offset + 4096] == staged[k * 4096 : (k + 1) * 4096]


def test_a_file_target_is_written_with_pwrite_and_keeps_its_holes(path: str, tmp_path: Path) -> None:
    size, ps = 64 * 4096, 4096
    with RamClient.create_targets([("ram0", size)], lambda _: tmp_path / "t.img", reserve=False) as client:
        block = client.blocks["ram0"]
        assert block.fd is not None
        memory = TargetMemory({"ram0": block}, ps, hash_pages=True)
        staged = _pages(3, ps, seed=1)
        memory.store("ram0", [8 * ps, 9 * ps, 40 * ps], memoryview(staged))
        # The mapping sees what pwrite wrote: one page cache.
        assert bytes(block.memory[8 * ps : 10 * ps]) == staged[: 2 * ps]
        assert bytes(block.memory[40 * ps : 41 * ps]) == staged[2 * ps :]
        expected = bytes(8 * ps) + staged[: 2 * ps] + bytes(30 * ps) + staged[2 * ps :] + bytes(23 * ps)
        assert memory.page_digests is not None
        assert memory.page_digests.hexdigests()["ram0"] == pagedigest.block_digest(expected, ps)
        blocks_before = os.stat(tmp_path / "t.img").st_blocks
        for algorithm in ("sha256", "blake3", "xxh3-128"):
            assert client.digest("ram0", algorithm) == block_digest(memoryview(expected), algorithm, ps)
        # Hashing read around the holes: nothing was allocated for them.
        assert os.stat(tmp_path / "t.img").st_blocks == blocks_before < size // 512
    assert (tmp_path / "t.img").read_bytes() == expected


def mapped_kib(memory: memoryview) -> int:
    """The KiB of ``memory``'s mapping that this process has in its page tables (smaps' Rss)."""
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for k, line in enumerate(lines):
        span = line.split(" ", 1)[0]
        if "-" in span and all(c in "0123456789abcdef-" for c in span):
            start, end = (int(x, 16) for x in span.split("-"))
            if start <= address < end:
                rss = next(entry for entry in lines[k + 1 :] if entry.startswith("Rss:"))
                return int(rss.split()[1])
    raise AssertionError("the mapping is not in /proc/self/smaps")


@contextlib.contextmanager
def another_writer(fd: int) -> Iterator[None]:
    """As if another channel were writing the file now (its writer slot taken)."""
    assert COMPILED is not None
    assert COMPILED.set_write_slot(fd, True) is False
    try:
        yield
    finally:
        assert COMPILED.set_write_slot(fd, False) is True, "the store left the slot taken or freed it"


@pytest.mark.skipif(COMPILED is None, reason="mfdcomp._speedups is not built here")
@pytest.mark.parametrize("busy", [False, True], ids=["slot-free", "another-writer"])
def test_the_compiled_store_goes_through_the_mapping_only_while_another_thread_writes(
    tmp_path: Path, busy: bool
) -> None:
    """A channel that finds the file's writer slot taken stores through the file's mapping instead of waiting
    for the file's lock: the same pages, digests and holes; otherwise pwrite, which maps nothing."""
    size, ps = 64 * 4096, 4096
    with (
        speedups_as(COMPILED, pagestore, pagedigest),
        RamClient.create_targets([("ram0", size)], lambda _: tmp_path / "t.img", reserve=False) as client,
    ):
        block = client.blocks["ram0"]
        assert block.fd is not None
        memory = TargetMemory({"ram0": block}, ps, hash_pages=True)
        staged = _pages(3, ps, seed=3)
        with another_writer(block.fd) if busy else contextlib.nullcontext():
            memory.store("ram0", [8 * ps, 9 * ps, 40 * ps], memoryview(staged))
        assert mapped_kib(block.memory) == (12 if busy else 0)
        expected = bytes(8 * ps) + staged[: 2 * ps] + bytes(30 * ps) + staged[2 * ps :] + bytes(23 * ps)
        assert memory.page_digests is not None
        assert memory.page_digests.hexdigests()["ram0"] == pagedigest.block_digest(expected, ps)
        assert os.stat(tmp_path / "t.img").st_blocks * 512 == 3 * ps  # the three pages, the rest holes
    assert (tmp_path / "t.img").read_bytes() == expected


@pytest.mark.skipif(COMPILED is None, reason="mfdcomp._speedups is not built here")
def test_a_full_filesystem_under_the_mapping_is_a_typed_error_not_a_signal(tmp_path: Path) -> None:
    """Through the mapping, a page the full filesystem can't give would be a SIGBUS: the store asks for the pages
    first (MADV_POPULATE_WRITE), and on refusal writes the run with pwrite, whose ENOSPC is the typed error."""
    where = tmp_path / "small"
    if not mount_tmpfs(where, 16 * 4096):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount rights): nothing to fill")
    try:
        with (
            speedups_as(COMPILED, pagestore, pagedigest),
            RamClient.create_targets([("ram0", 8 * 4096)], lambda _: where / "t.img", reserve=False) as client,
        ):
            block = client.blocks["ram0"]
            assert block.fd is not None
            filler = os.open(where / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
            with contextlib.suppress(OSError):
                while True:  # every page of the filesystem taken
                    os.write(filler, bytes(4096))
            os.close(filler)
            memory = TargetMemory({"ram0": block}, 4096)
            with (
                another_writer(block.fd),
                pytest.raises(NoSpaceError, match=r"cannot write 2 pages into target block 'ram0': No space"),
            ):
                memory.store("ram0", [0, 4096], memoryview(_pages(2, 4096, seed=4)))
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_reserved_target_is_allocated_in_full(tmp_path: Path) -> None:
    with RamClient.create_targets([("ram0", 1 << 20)], lambda _: tmp_path / "r.img"):
        assert os.stat(tmp_path / "r.img").st_blocks * 512 >= 1 << 20


@pytest.mark.parametrize("data", [[], [(0, 8192)], [(4096, 8192), (16384, 20480)], [(12288, 20480)]])
@pytest.mark.parametrize("algorithm", ["sha256", "blake3", "xxh3-128"])
def test_digest_around_holes_is_the_digest_of_the_whole(data: list[tuple[int, int]], algorithm: str) -> None:
    content = bytearray(20480)
    for start, end in data:
        content[start:end] = _pages((end - start) // 4096, 4096, seed=start)
    whole = block_digest(memoryview(bytes(content)), algorithm, 4096)
    assert block_digest(memoryview(bytes(content)), algorithm, 4096, data=data) == whole


def test_a_full_filesystem_is_a_typed_error_not_a_signal(path: str) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    region = bytearray(8 * 4096)

    class Block:
        name, size, memory = "ram0", len(region), memoryview(region)
        fd = os.open("/dev/full", os.O_WRONLY)

    try:
        memory = TargetMemory({"ram0": Block()}, 4096)
        with pytest.raises(NoSpaceError, match=r"cannot write 2 pages into target block 'ram0': No space left"):
            memory.store("ram0", [0, 4096], memoryview(bytes(8192)))
    finally:
        os.close(Block.fd)


def test_an_anonymous_target_is_copied_into(path: str) -> None:
    region = bytearray(8 * 4096)

    class Block:
        name, size, memory = "ram0", len(region), memoryview(region)

    memory = TargetMemory({"ram0": Block()}, 4096)
    staged = _pages(2, 4096, seed=2)
    memory.store("ram0", [4096 * 5, 4096], memoryview(staged))
    assert region[5 * 4096 : 6 * 4096] == staged[:4096] and region[4096:8192] == staged[4096:]
    assert memory.received["ram0"].tolist() == [False, True, False, False, False, True, False, False]


@pytest.mark.skipif(COMPILED is None, reason="mfdcomp._speedups is not built here")
def test_every_build_of_the_page_hashing_gives_xxhashs_digests() -> None:
    assert COMPILED is not None
    builds = COMPILED.xxh3_builds()
    assert builds[-1] == "default" and COMPILED.xxh3_build() == builds[0]
    data = _pages(16, 4096, seed=7)
    offsets = list(range(0, len(data), 4096))[::-1]
    expected = b"".join(xxhash.xxh3_128_digest(data[o : o + 4096]) for o in range(0, len(data), 4096))
    first = COMPILED.xxh3_build()
    try:
        for build in builds:
            COMPILED.set_xxh3_build(build)
            table = bytearray(16 * 16)
            COMPILED.page_digests(data, offsets, 4096, table)
            assert bytes(table) == expected, build
            table = bytearray(16 * 16)
            COMPILED.store_pages(-1, bytearray(len(data)), data, list(range(0, len(data), 4096)), 4096, table)
            assert bytes(table) == expected, build
    finally:
        COMPILED.set_xxh3_build(first)
    with pytest.raises(ValueError, match="no xxh3 build 'sse9' runs on this CPU"):
        COMPILED.set_xxh3_build("sse9")

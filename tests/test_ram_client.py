"""RamClient: mapping, batches of dirty pages, perturbation, digests, lifetime."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfdcomp.clients import RamBlock, RamClient
from mfdcomp.errors import MfdcompError

PS = 4096


def write_image(path: Path, pages: int, seed: int = 0, page_size: int = PS) -> Path:
    """Pages of random bytes, with every fourth page zero."""
    data = np.random.default_rng(seed).integers(0, 256, size=(pages, page_size), dtype=np.uint8)
    data[::4] = 0
    path.write_bytes(data.tobytes())
    return path


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(ram: RamClient) -> dict[str, npt.NDArray[np.uint8]]:
    """A copy of every block, one row per page."""
    return {
        name: np.frombuffer(block.memory, dtype=np.uint8).reshape(-1, block.page_size).copy()
        for name, block in ram.blocks.items()
    }


def drain(ram: RamClient, max_pages: int = 128) -> list[tuple[RamBlock, list[int]]]:
    return list(ram.iter_batches(max_pages))


@pytest.fixture
def source(tmp_path: Path) -> Iterator[RamClient]:
    first = write_image(tmp_path / "a.img", 300, seed=1)
    second = write_image(tmp_path / "b.img", 5, seed=2)
    with RamClient.from_images([str(first), f"vga={second}"]) as ram:
        yield ram


def test_from_images_names_sizes_and_order(tmp_path: Path, source: RamClient) -> None:
    assert list(source.blocks) == ["ram0", "vga"]
    block = source.blocks["ram0"]
    assert (block.size, block.pages, block.page_size, block.path) == (300 * PS, 300, PS, tmp_path / "a.img")
    assert block.memory.format == "B" and block.memory.ndim == 1 and not block.memory.readonly
    assert source.digests() == {"ram0": file_sha(tmp_path / "a.img"), "vga": file_sha(tmp_path / "b.img")}
    assert source.dirty_count() == 305  # round 0 sends everything


def test_default_names_follow_positions(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{n}.img", 1) for n in range(3)]
    with RamClient.from_images([str(paths[0]), f"x={paths[1]}", str(paths[2])]) as ram:
        assert list(ram.blocks) == ["ram0", "x", "ram2"]


@pytest.mark.parametrize("max_pages", [1, 3, 128, 1000])
@pytest.mark.parametrize("dirty", ["all", "sparse", "none-in-first"])
def test_batches(source: RamClient, max_pages: int, dirty: str) -> None:
    if dirty != "all":
        drain(source)
        marked = {"ram0": [0, 1, 2, 50, 129, 130, 299] if dirty == "sparse" else [], "vga": [0, 4]}
        for name, pages in marked.items():
            source.mark_dirty(name, pages)
    expected = {name: source.dirty_pages(name).tolist() for name in source.blocks}
    seen: dict[str, list[int]] = {name: [] for name in source.blocks}
    order: list[str] = []
    for block, offsets in source.iter_batches(max_pages):
        assert 1 <= len(offsets) <= max_pages
        assert offsets == sorted(offsets)
        assert all(offset % PS == 0 and 0 <= offset < block.size for offset in offsets)
        seen[block.name].extend(offset // PS for offset in offsets)
        assert not block.dirty[[offset // PS for offset in offsets]].any(), "cleared as yielded"
        if not order or order[-1] != block.name:
            order.append(block.name)
    assert seen == expected  # every dirty page exactly once, ascending
    assert order == [name for name in source.blocks if expected[name]]  # block by block, never mixed
    assert source.dirty_count() == 0
    assert drain(source) == []


@settings(max_examples=50, deadline=None)
@given(
    pages=st.lists(st.integers(0, 199), max_size=200),
    max_pages=st.integers(1, 64),
)
def test_batches_cover_any_dirty_set(pages: list[int], max_pages: int) -> None:
    with RamClient.anonymous([("a", 200 * PS), ("b", 8 * PS)]) as ram:
        drain(ram)
        ram.mark_dirty("a", pages)
        batches = drain(ram, max_pages)
    offsets = [offset for _, batch in batches for offset in batch]
    assert offsets == [page * PS for page in sorted(set(pages))]
    assert all(0 < len(batch) <= max_pages for _, batch in batches)
    assert len(batches) == -(-len(set(pages)) // max_pages)


def test_iter_batches_is_cheap_on_a_gibibyte() -> None:
    with RamClient.anonymous([("ram0", 1 << 30)]) as ram:
        started = time.perf_counter()
        count = sum(len(offsets) for _, offsets in ram.iter_batches(128))
        elapsed = time.perf_counter() - started
    assert count == 262144
    assert elapsed < 0.1


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 1.0])
def test_perturb_changes_exactly_the_pages_it_marks(source: RamClient, fraction: float) -> None:
    drain(source)
    before = snapshot(source)
    count = source.perturb(fraction, np.random.default_rng(3))
    after = snapshot(source)
    assert count == round(fraction * 305) == source.dirty_count()
    for name in source.blocks:
        changed = np.flatnonzero((before[name] != after[name]).any(axis=1))
        assert changed.tolist() == source.dirty_pages(name).tolist()


def test_perturb_makes_every_page_kind() -> None:
    with RamClient.anonymous([("ram0", 2000 * PS)]) as ram:
        drain(ram)
        count = ram.perturb(0.5, np.random.default_rng(1))
        pages = snapshot(ram)["ram0"][ram.dirty_pages("ram0")]
    # All pages were zero: zeroing would change nothing, so no page stays zero.
    assert count == 1000 and pages.any(axis=1).all()
    nonzero = np.count_nonzero(pages, axis=1)
    half = ~pages[:, PS // 2 :].any(axis=1)
    assert (nonzero == 1).sum() > 400  # byte flips (and zero pages turned to flips)
    assert (half & (nonzero > 1)).sum() > 150  # random first half, zero second half
    assert (~half & (nonzero > 1)).sum() > 150  # new random bytes


def test_perturb_zeroes_pages(source: RamClient) -> None:
    drain(source)
    source.perturb(1.0, np.random.default_rng(2))
    pages = snapshot(source)["ram0"]
    assert (~pages.any(axis=1)).sum() > 30  # some of the 225 non-zero pages were zeroed


def test_perturb_is_deterministic(tmp_path: Path) -> None:
    image = write_image(tmp_path / "a.img", 64)
    digests = []
    for _ in range(2):
        with RamClient.from_images([str(image)]) as ram:
            ram.perturb(0.25, np.random.default_rng(9))
            digests.append((ram.digests(), ram.dirty_pages("ram0").tolist()))
    assert digests[0] == digests[1]


def test_copy_on_write_source_never_touches_the_file(tmp_path: Path) -> None:
    image = write_image(tmp_path / "a.img", 64)
    original = file_sha(image)
    with RamClient.from_images([str(image)]) as ram:
        ram.perturb(1.0, np.random.default_rng(0))
        ram.blocks["ram0"].memory[:PS] = b"\xff" * PS
        assert ram.sha256("ram0") != original
    assert file_sha(image) == original


def test_read_only_source(tmp_path: Path) -> None:
    image = write_image(tmp_path / "a.img", 4)
    with RamClient.from_images([str(image)], writable_source=False) as ram:
        assert ram.blocks["ram0"].memory.readonly
        with pytest.raises(MfdcompError, match="read-only"):
            ram.perturb(0.5, np.random.default_rng(0))


def test_targets_are_zeroed_sized_and_written_through(tmp_path: Path) -> None:
    old = tmp_path / "ram0.img"
    old.write_bytes(b"\x5a" * (10 * PS))  # longer and not zero: truncated and zeroed
    layout = [("ram0", 3 * PS), ("pc.bios", 2 * 65536)]
    paths = {"ram0": old, "pc.bios": tmp_path / "bios.img"}
    with RamClient.create_targets(layout, paths.__getitem__, page_size=PS) as ram:
        assert [(block.name, block.size) for block in ram.blocks.values()] == layout
        for block in ram.blocks.values():
            assert not block.memory.readonly
            assert not np.frombuffer(block.memory, dtype=np.uint8).any()
        ram.blocks["ram0"].memory[PS : 2 * PS] = b"\x01" * PS
        digests = ram.digests()
    assert old.read_bytes() == bytes(PS) + b"\x01" * PS + bytes(PS)
    assert paths["pc.bios"].read_bytes() == bytes(2 * 65536)
    assert digests == {name: file_sha(path) for name, path in paths.items()}


def test_anonymous_blocks() -> None:
    layout = [("a", 2 * PS), ("b", PS)]
    with RamClient.anonymous(layout) as ram:
        assert ram.digests() == {name: hashlib.sha256(bytes(size)).hexdigest() for name, size in layout}
        ram.blocks["b"].memory[0] = 7
        assert ram.blocks["b"].memory[0] == 7


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (PS + 100, f"({PS + 100} bytes) is not a multiple of the page size {PS}"),
        (0, "is empty"),
    ],
)
def test_image_size_must_be_whole_pages(tmp_path: Path, size: int, message: str) -> None:
    image = tmp_path / "odd.img"
    image.write_bytes(b"\1" * size)
    with pytest.raises(MfdcompError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RamClient.from_images([str(image)])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: RamClient.from_images([str(tmp / "missing.img")]), "cannot open .*missing.img: No such file"),
        (lambda tmp: RamClient.from_images([]), "no image given"),
        (lambda tmp: RamClient.from_images([f"a={tmp / 'x.img'}", f"a={tmp / 'x.img'}"]), "'a' given twice"),
        (lambda tmp: RamClient.from_images([str(tmp / "x.img")], page_size=1000), "power of two"),
        (lambda tmp: RamClient.anonymous([("a", PS + 1)]), "not a multiple of the page size"),
        (lambda tmp: RamClient.anonymous([("a", 0)]), "empty"),
        (lambda tmp: RamClient.anonymous([("", PS)]), "ramblock name must be"),
        (lambda tmp: RamClient.anonymous([("n" * 256, PS)]), "ramblock name must be 1-255 bytes"),
        (lambda tmp: RamClient.create_targets([("a", PS)], lambda name: tmp / "no" / "dir"), "cannot use directory"),
        (lambda tmp: RamClient.create_targets([("a", PS), ("a", PS)], lambda name: tmp / name), "'a' given twice"),
    ],
)
def test_construction_errors(tmp_path: Path, make: Callable[[Path], RamClient], message: str) -> None:
    write_image(tmp_path / "x.img", 1)
    with pytest.raises(MfdcompError, match=message):
        make(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["x.img"]  # nothing created


def test_bad_calls(source: RamClient) -> None:
    with pytest.raises(MfdcompError, match="no ramblock 'nope' \\(blocks: ram0, vga\\)"):
        source.sha256("nope")
    with pytest.raises(MfdcompError, match="out of range"):
        source.mark_dirty("vga", [5])
    with pytest.raises(MfdcompError, match="out of range"):
        source.mark_dirty("vga", [-1])
    with pytest.raises(MfdcompError, match="between 0 and 1"):
        source.perturb(1.5, np.random.default_rng(0))
    with pytest.raises(MfdcompError, match="at least 1"):
        drain(source, 0)


def test_close_is_idempotent_and_later_use_fails_cleanly(source: RamClient) -> None:
    block = source.blocks["ram0"]
    source.close()
    source.close()
    assert source.closed
    with pytest.raises(ValueError, match="released"):
        block.memory[0]
    for use in (
        lambda: source.sha256("ram0"),
        source.digests,
        source.dirty_count,
        lambda: drain(source),
        lambda: source.mark_dirty("ram0", [0]),
        lambda: source.perturb(0.1, np.random.default_rng(0)),
    ):
        with pytest.raises(MfdcompError, match="RAM client is closed"):
            use()


def test_close_with_a_page_still_held(tmp_path: Path) -> None:
    image = write_image(tmp_path / "a.img", 2, seed=4)
    ram = RamClient.from_images([str(image)])
    page = ram.blocks["ram0"].memory[PS : 2 * PS]
    ram.close()  # the held page keeps its mapping alive instead of crashing
    assert bytes(page) == image.read_bytes()[PS:]
    page.release()


def test_close_during_iteration(source: RamClient) -> None:
    batches = source.iter_batches(1)
    next(batches)
    source.close()
    with pytest.raises(MfdcompError, match="closed"):
        next(batches)

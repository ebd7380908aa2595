"""The xxh3-128 verification (mfdcomp/pagedigest.py, issue 18): pages hashed as they move.

The compiled and the pure path must write the same tables and raise the same
errors (a differential fuzz); a table filled page by page, in any order, must
end at the digest of the whole block; and a session must catch a page the
destination wrote wrong, with every zero-page mode and over several rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import xxhash
from conftest import COMPILED, outcome, speedups_as
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfdcomp import pagedigest
from mfdcomp.clients.ram import RamClient, block_digest
from mfdcomp.engine.migrate import MigrateOptions
from mfdcomp.methods import CodecPath, MultiFDMethods
from mfdcomp.registry import get_codec
from mfdcomp.testing import run_loopback

PATHS = ["pure", pytest.param("compiled", marks=pytest.mark.skipif(COMPILED is None, reason="not built here"))]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> object:
    with speedups_as(None if request.param == "pure" else COMPILED, pagedigest):
        yield request.param


def _reference(data: bytes, page_size: int) -> str:
    """The definition, without mfdcomp: XXH3-128 of the pages' XXH3-128 digests in order."""
    pages = b"".join(xxhash.xxh3_128_digest(data[i : i + page_size]) for i in range(0, len(data), page_size))
    return xxhash.xxh3_128_hexdigest(pages)


def _image(pages: int, page_size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, pages * page_size, dtype=np.uint8)
    data[rng.random(pages).repeat(page_size) < 0.3] = 0  # a third of the pages zero
    return data.tobytes()


@pytest.mark.parametrize("page_size", [64, 4096, 65536])
def test_a_table_filled_in_any_order_ends_at_the_whole_blocks_digest(path: object, page_size: int) -> None:
    data = _image(40, page_size, seed=page_size)
    digests = pagedigest.PageDigests({"ram0": len(data)}, page_size)
    offsets = list(range(0, len(data), page_size))
    order = np.random.default_rng(3).permutation(len(offsets))
    for chunk in np.array_split(order, 7):
        chosen = [offsets[i] for i in chunk]
        zero = [o for o in chosen if not any(data[o : o + page_size])]
        digests.hash_pages("ram0", data, [o for o in chosen if o not in zero])
        digests.set_zero("ram0", zero)
    expected = _reference(data, page_size)
    assert digests.hexdigests() == {"ram0": expected}
    assert pagedigest.block_digest(data, page_size) == expected
    assert block_digest(memoryview(data), "xxh3-128", page_size) == expected


def test_a_fresh_table_is_the_digest_of_zeros(path: object) -> None:
    assert pagedigest.PageDigests({"z": 1 << 20}, 4096).hexdigests() == {"z": _reference(bytes(1 << 20), 4096)}


def test_a_block_larger_than_one_step_of_block_digest(path: object) -> None:
    data = _image((pagedigest._BLOCK_STEP >> 12) + 3, 4096, seed=9)
    assert pagedigest.block_digest(data, 4096) == _reference(data, 4096)


def test_one_changed_byte_changes_the_digest(path: object) -> None:
    data = bytearray(_image(8, 4096, seed=1))
    before = pagedigest.block_digest(data, 4096)
    data[5 * 4096 + 17] ^= 1
    assert pagedigest.block_digest(data, 4096) != before


Outcome = tuple[tuple[str, object], bytes]
"""What a call did: its result or error, and the table it left."""


def _both(data: bytes, offsets: Sequence[object], page_size: int, table_size: int) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for module in (None, COMPILED):
        with speedups_as(module, pagedigest):
            table = bytearray(table_size)
            result = outcome(lambda t=table: pagedigest.hash_pages(data, offsets, page_size, t))  # type: ignore[arg-type,misc]
            outcomes.append((result, bytes(table)))
    return outcomes


@pytest.mark.skipif(COMPILED is None, reason="mfdcomp._speedups is not built here: nothing to compare")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    page_size=st.sampled_from([-64, 0, 8, 64, 96, 4096]),
    pages=st.integers(0, 6),
    extra=st.integers(0, 70),
    offsets=st.lists(st.one_of(st.integers(-(2**70), 2**70), st.integers(-100, 40000), st.booleans()), max_size=8),
    slots=st.integers(0, 8),
    seed=st.integers(0, 3),
)
def test_compiled_and_pure_paths_agree_on_hostile_calls(
    page_size: int, pages: int, extra: int, offsets: list[object], slots: int, seed: int
) -> None:
    data = _image(pages, max(page_size, 8), seed)[: pages * max(page_size, 8) + extra]
    pure, fast = _both(data, offsets, page_size, slots * pagedigest.DIGEST_SIZE)
    assert pure == fast


@pytest.mark.skipif(COMPILED is None, reason="mfdcomp._speedups is not built here: nothing to compare")
def test_compiled_and_pure_paths_agree_on_every_page_of_an_image() -> None:
    data = _image(64, 4096, seed=4)
    offsets = list(range(0, len(data), 4096))[::-1]
    pure, fast = _both(data, offsets, 4096, 64 * 16)
    assert pure == fast and pure[0] == ("result", None) and any(pure[1])


class _FlipOnePage:
    """nocomp at the destination, but the 3rd packet's first page is written with one bit flipped."""

    def __init__(self) -> None:
        self.inner = get_codec("none")
        self.info = self.inner.info
        self.packets = 0

    def probe(self) -> object:
        return self.inner.probe()

    def methods(self, page_size: int, level: int | None, path: CodecPath = CodecPath.RAW) -> MultiFDMethods:
        methods = self.inner.methods(page_size, level, path)
        recv = methods.recv
        owner = self

        def flipping(packet: object, source: object, pages: Sequence[memoryview]) -> CodecPath:
            result = recv(packet, source, pages)  # type: ignore[arg-type]
            owner.packets += 1
            if owner.packets == 3:
                pages[0][0] ^= 0x40
            return result

        methods.recv = flipping  # type: ignore[method-assign]
        return methods


@pytest.mark.parametrize("zero_pages", ["multifd", "legacy", "none"])
def test_a_session_proves_the_copy_and_catches_a_wrong_page(tmp_path: Path, zero_pages: str) -> None:
    size = 2 << 20
    data = _image(size // 4096, 4096, seed=11)
    options = MigrateOptions(channels=2, rounds=3, dirty_fraction=0.2, zero_page_detection=zero_pages)
    assert options.digest == "sha256"  # the API's default stays the reference: choose it here
    options = MigrateOptions(**{**options.__dict__, "digest": "xxh3-128"})
    with RamClient.anonymous([("ram0", size)]) as ram:
        ram.blocks["ram0"].memory[:] = data
        good = run_loopback(ram, get_codec("none"), options, workdir=tmp_path)
        good.raise_for_errors()
        final = bytes(ram.blocks["ram0"].memory)  # after the dirty rounds
        assert good.destination is not None and good.source is not None
        assert good.destination.digests == good.source.digests == {"ram0": _reference(final, 4096)}

        ram.blocks["ram0"].memory[:] = data
        flip = _FlipOnePage()
        # One round: a later round must not send the flipped page again (and write it right).
        once = MigrateOptions(**{**options.__dict__, "rounds": 1})
        bad = run_loopback(ram, get_codec("none"), once, workdir=tmp_path, find_codec=lambda name: flip)  # type: ignore[arg-type,return-value]
    assert flip.packets >= 3
    assert bad.destination is not None and not bad.destination.ok
    assert bad.destination.digests != bad.destination.source_digests

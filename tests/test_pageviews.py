"""PageViews: per-page views and runs of adjacent pages describe the same bytes."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from mfdcomp.methods import PageViews

PS = 64
MEMORY = memoryview(bytes(range(256)) * 16)  # 64 pages of 64 bytes


@given(st.lists(st.integers(0, 63), unique=True, max_size=64))
def test_runs_hold_the_pages_in_order(indices: list[int]) -> None:
    offsets = [i * PS for i in indices]
    views = PageViews(MEMORY, offsets, PS)
    assert len(views) == len(offsets)
    per_page = b"".join(bytes(views[i]) for i in range(len(views)))
    assert b"".join(bytes(v) for v in views.runs()) == per_page
    assert [bytes(v) for v in views[1:3]] == [bytes(MEMORY[o : o + PS]) for o in offsets[1:3]]
    # A run never spans a gap: the number of runs is the number of breaks plus one.
    breaks = sum(1 for a, b in itertools.pairwise(offsets) if b != a + PS)
    assert len(views.runs()) == (breaks + 1 if offsets else 0)

"""mfdcomp._speedups against the pure-Python reference (issue 18.3): same results, same errors.

The differential fuzz feeds both paths the same hostile blocks, offsets and
page sizes, and demands the same outcome: the same flags, or the same
exception type and message. The switch (MFDCOMP_PURE_PYTHON) and doctor's
line are checked in fresh processes, where the choice is made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

import pytest
from conftest import COMPILED, outcome, speedups_as
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfdcomp import speedups, zeropage

needs_compiled = pytest.mark.skipif(COMPILED is None, reason="mfdcomp._speedups is not built here")


def _both(block: object, offsets: Sequence[int], page_size: int) -> tuple[tuple[str, object], tuple[str, object]]:
    with speedups_as(None, zeropage):
        pure = outcome(lambda: zeropage.zero_flags(block, offsets, page_size))  # type: ignore[arg-type]
    with speedups_as(COMPILED, zeropage):
        fast = outcome(lambda: zeropage.zero_flags(block, offsets, page_size))  # type: ignore[arg-type]
    return pure, fast


@st.composite
def blocks(draw: st.DrawFn) -> tuple[bytes, list[int], int]:
    """A block of zero and non-zero pages (a lone non-zero byte anywhere), with offsets in and out of it."""
    page_size = draw(st.sampled_from([8, 16, 64, 72, 120, 4096]))
    pages = draw(st.integers(0, 12))
    data = bytearray(page_size * pages + draw(st.integers(0, page_size - 1)))
    for _ in range(draw(st.integers(0, 6))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(1, 255))
    size = len(data)
    inside = st.integers(0, max(0, size - page_size))
    hostile = st.sampled_from([-1, -page_size, size - page_size + 1, size, 2**63 - 1, 2**63, -(2**63), 2**80])
    offsets = draw(st.lists(st.one_of(inside, inside, inside, hostile), max_size=20))
    return bytes(data), offsets, page_size


@needs_compiled
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks())
def test_differential_fuzz_same_flags_or_same_error(case: tuple[bytes, list[int], int]) -> None:
    data, offsets, page_size = case
    pure, fast = _both(data, offsets, page_size)
    assert pure == fast


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(blocks(), st.sampled_from([0, -8, 12, 7]))
def test_differential_fuzz_bad_page_sizes(case: tuple[bytes, list[int], int], page_size: int) -> None:
    data, offsets, _ = case
    pure, fast = _both(data, offsets, page_size)
    assert pure == fast and pure[0] == "ValueError"


@needs_compiled
def test_differential_non_contiguous_and_non_buffer() -> None:
    import numpy as np

    strided = memoryview(np.zeros(8192, dtype=np.uint8).tobytes())[::2]
    assert _both(strided, [0], 8)[0] == _both(strided, [0], 8)[1]
    pure, fast = _both(12345, [0], 8)
    assert pure[0] == fast[0] == "TypeError"


@needs_compiled
@pytest.mark.parametrize(
    ("offsets", "page_size"),
    [([-1], 8), ([2**70], 8), ([9], 8), ([0], 24), ([0], 0), ([0], 12), (["x"], 8), (5, 8)],
)
def test_the_compiled_call_checks_its_own_arguments(offsets: object, page_size: int) -> None:
    """Called directly (not through zeropage's checks), hostile values are an exception, never a read out of bounds."""
    assert COMPILED is not None
    with pytest.raises((ValueError, TypeError)):
        COMPILED.zero_flags(bytes(16), offsets, page_size)


@needs_compiled
def test_the_compiled_scan_stops_nowhere_but_at_a_non_zero_byte() -> None:
    # Every position of a lone non-zero byte in a 4 KiB page, including the 64-byte steps' edges and the tail.
    assert COMPILED is not None
    for page_size in (8, 72, 4096):
        for where in range(page_size):
            page = bytearray(page_size * 2)
            page[page_size + where] = 1
            assert COMPILED.zero_flags(bytes(page), [0, page_size], page_size) == [True, False], (page_size, where)


def test_load_says_which_path_and_why() -> None:
    module, text = speedups.load({speedups.ENV: "1"})
    assert module is None and text == "pure Python (MFDCOMP_PURE_PYTHON=1 forces it)"
    module, text = speedups.load({speedups.ENV: "0"})
    if COMPILED is not None:
        assert module is COMPILED and text.startswith("compiled (mfdcomp._speedups, ")
        assert text.endswith(f"; page hashing: {COMPILED.xxh3_build()})")
    else:
        assert module is None and "not built here" in text


def _fresh(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={k: v for k, v in os.environ.items() if k != speedups.ENV} | env,
    )
    return done.stdout.strip()


def test_the_environment_variable_forces_the_pure_path_in_a_fresh_process() -> None:
    code = "from mfdcomp import speedups, zeropage; print(zeropage._speedups is None, speedups.status())"
    assert _fresh(code, MFDCOMP_PURE_PYTHON="1") == "True pure Python (MFDCOMP_PURE_PYTHON=1 forces it)"
    if COMPILED is not None:
        assert _fresh(code).startswith("False compiled (mfdcomp._speedups")


def test_doctor_names_the_path_in_use() -> None:
    code = "import json, sys; from mfdcomp.cli import main; sys.exit(main(['doctor', '--json']))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
        env=os.environ | {speedups.ENV: "1"},
    )  # fmt: skip
    findings = json.loads(done.stdout)["findings"]
    (line,) = [f for f in findings if f["item"] == "per-packet hot paths"]
    assert line["detail"] == "pure Python (MFDCOMP_PURE_PYTHON=1 forces it)" and line["status"] == "info"

"""gen-image: exact counts, page kinds, determinism, errors (library and CLI)."""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mfdcomp.cli import main
from mfdcomp.errors import MfdcompError
from mfdcomp.imagegen import DEFAULT_MIX, KINDS, generate_image, page_counts, parse_mix

MIB = 1 << 20
DEFAULT = parse_mix(DEFAULT_MIX)
# 256 pages at 10/40/30/20 %: floors 25/102/76/51, the 2 left to random (.8) and zero (.6).
SMALL_COUNTS = {"zero": 26, "text": 102, "random": 77, "half": 51}
TEXT_BYTES = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ,.\n", dtype=np.uint8)

# Computed once from this generator; a change here means the images changed.
GOLDEN = {
    (MIB, 1, 4096): "16ac40552504d2fca13bcb0ac9c3d3846d84e75ae3ac22884ca149a921ac55bc",
}


def classify(pages: npt.NDArray[np.uint8]) -> list[str]:
    """The kind each page looks like; no page of one kind can look like another."""
    half = pages.shape[1] // 2
    kinds = []
    for page in pages:
        if not page.any():
            kinds.append("zero")
        elif not page[half:].any():
            kinds.append("half")
        elif np.isin(page, TEXT_BYTES).all():
            kinds.append("text")
        else:
            kinds.append("random")
    return kinds


def read_pages(path: Path, page_size: int) -> npt.NDArray[np.uint8]:
    return np.fromfile(path, dtype=np.uint8).reshape(-1, page_size)


@pytest.mark.parametrize(
    ("size", "page_size", "mix", "expected"),
    [
        (MIB, 4096, DEFAULT, SMALL_COUNTS),
        (MIB, 4096, {"zero": 0.1, "text": 0.4, "random": 0.3, "half": 0.2}, SMALL_COUNTS),
        (4 * MIB, 4096, {"text": 100}, {"zero": 0, "text": 1024, "random": 0, "half": 0}),
        # Thirds: 85.33 pages each, the one page left goes to the first kind listed.
        (2 * MIB, 8192, dict.fromkeys(KINDS[:3], 1 / 3), {"zero": 86, "text": 85, "random": 85, "half": 0}),
        (8 * MIB, 65536, {"zero": 25, "text": 25, "random": 25, "half": 25}, {k: 32 for k in KINDS}),
    ],
)
def test_counts_are_exact_and_pages_are_what_they_claim(
    tmp_path: Path, size: int, page_size: int, mix: dict[str, float], expected: dict[str, int]
) -> None:
    out = tmp_path / "image"
    stats = generate_image(out, size, mix, seed=7, page_size=page_size)
    assert stats.counts == expected
    assert out.stat().st_size == size == stats.size
    assert stats.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    pages = read_pages(out, page_size)
    kinds = classify(pages)
    assert {kind: kinds.count(kind) for kind in KINDS} == expected
    for page, kind in zip(pages, kinds, strict=True):
        compressed = len(zlib.compress(page.tobytes()))
        if kind == "random":
            assert compressed >= page_size
        elif kind == "text":
            assert compressed < 0.45 * page_size
    text = [page.tobytes() for page, kind in zip(pages, kinds, strict=True) if kind == "text"]
    assert len(set(text)) == len(text), "text pages must all differ"


def test_text_is_words_and_separators(tmp_path: Path) -> None:
    stats = generate_image(tmp_path / "t", MIB, {"text": 100}, seed=3)
    text = (tmp_path / "t").read_bytes().decode("ascii")
    assert stats.counts["text"] == 256
    words = Counter(re.findall(r"[a-z]+", text))
    assert len(words) > 300  # a vocabulary, not a handful of words
    [(_, top)] = words.most_common(1)
    assert top > words.total() / 100  # Zipf-like: the top word is frequent
    assert "\n" in text and ". " in text and ", " in text


@pytest.mark.parametrize(("size", "seed", "page_size"), list(GOLDEN))
def test_golden_sha256(tmp_path: Path, size: int, seed: int, page_size: int) -> None:
    stats = generate_image(tmp_path / "g", size, DEFAULT, seed, page_size=page_size)
    assert stats.sha256 == GOLDEN[(size, seed, page_size)]


def test_same_arguments_same_bytes(tmp_path: Path) -> None:
    first = generate_image(tmp_path / "a", 8 * MIB, DEFAULT, 5)
    second = generate_image(tmp_path / "b", 8 * MIB, DEFAULT, 5)
    other = generate_image(tmp_path / "c", 8 * MIB, DEFAULT, 6)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert first.sha256 == second.sha256 != other.sha256
    assert first.counts == other.counts


def test_overwrites_and_reports_progress(tmp_path: Path) -> None:
    out = tmp_path / "image"
    out.write_bytes(b"x" * (3 * MIB))
    done: list[int] = []
    generate_image(out, 5 * MIB, DEFAULT, 1, progress=done.append)
    assert out.stat().st_size == 5 * MIB
    assert sum(done) == 5 * MIB and len(done) > 1


@given(
    pages=st.integers(1, 10**7),
    weights=st.lists(st.integers(0, 1000), min_size=len(KINDS), max_size=len(KINDS)).filter(lambda w: sum(w) > 0),
)
def test_page_counts_floor_plus_remainder(pages: int, weights: list[int]) -> None:
    total = sum(weights)
    # Percentages that sum to exactly 100 as decimals.
    mix = {kind: weight * 100 / total for kind, weight in zip(KINDS, weights, strict=True)}
    shares = dict(zip(KINDS, weights, strict=True))
    counts = page_counts(pages, mix)
    assert sum(counts.values()) == pages
    for kind in KINDS:
        exact = pages * shares[kind] / total
        assert int(exact) - 1 <= counts[kind] <= int(exact) + 1
        if shares[kind] == 0:
            assert counts[kind] == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda out: generate_image(out, 1000, DEFAULT, 1), "multiple of the page size 4096, got 1000"),
        (lambda out: generate_image(out, 0, DEFAULT, 1), "multiple of the page size"),
        (lambda out: generate_image(out, MIB, DEFAULT, 1, page_size=3000), "power of two"),
        (lambda out: generate_image(out, MIB, DEFAULT, 1, page_size=1 << 20), "power of two"),
        (
            lambda out: generate_image(out, MIB, {"zero": 50, "bogus": 50}, 1),
            "unknown page kind 'bogus'; kinds: zero, text, random, half",
        ),
        (
            lambda out: generate_image(out, MIB, {"zero": 50, "text": 40}, 1),
            "must sum to 100 (percent) or 1.0 (fractions), got 90 (zero=50, text=40, random=0, half=0)",
        ),
        (lambda out: generate_image(out, MIB, {"zero": 0.5, "text": 0.4}, 1), "got 0.9"),
        (lambda out: generate_image(out, MIB, {"zero": 110, "text": -10}, 1), "finite number >= 0"),
        (lambda out: generate_image(out, MIB, {"zero": float("nan")}, 1), "finite number >= 0"),
        (lambda out: generate_image(out, MIB, {}, 1), "must sum to 100"),
        (lambda out: generate_image(out, MIB, DEFAULT, -1), "seed must be >= 0"),
    ],
)
def test_bad_arguments(tmp_path: Path, call: Callable[[Path], object], message: str) -> None:
    with pytest.raises(MfdcompError, match=re.escape(message)):
        call(tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zero=10,text", "mix entries are KIND=SHARE, got 'text'; kinds: zero, text, random, half"),
        ("zero=x", "share of 'zero' is not a number"),
        ("zero=10,zero=90", "given twice"),
    ],
)
def test_bad_mix_text(text: str, message: str) -> None:
    with pytest.raises(MfdcompError, match=re.escape(message)):
        parse_mix(text)


def test_mix_text_forms() -> None:
    assert parse_mix("zero = 10%, text=90") == {"zero": 10.0, "text": 90.0}
    assert page_counts(10, parse_mix("zero=0.25,half=0.75")) == {"zero": 3, "text": 0, "random": 0, "half": 7}


def test_cli_prints_counts_and_sha(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "image"
    assert main(["gen-image", str(out), "--size", "1M", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"sha256 {GOLDEN[(MIB, 1, 4096)]}"
    assert any(re.fullmatch(r"\s*text\s+102 pages\s+39.84 %", line) for line in lines)


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "image"
    argv = ["gen-image", str(out), "--size", "2M", "--mix", "zero=0.5,random=0.5", "--page-size", "8K", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"zero": 128, "text": 0, "random": 128, "half": 0}
    assert report["page_size"] == 8192 and report["pages"] == 256
    assert report["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "1M", "--mix", "zero=10,foo=90"], "unknown page kind 'foo'; kinds: zero, text, random, half"),
        (["--size", "1M", "--mix", "zero=10,text=10"], "must sum to 100"),
        (["--size", "5000"], "multiple of the page size 4096"),
        (["--size", "1M", "--page-size", "100"], "power of two"),
    ],
)
def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    assert main(["gen-image", str(tmp_path / "x"), *extra]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mfdcomp gen-image: error: ")
    assert message in captured.err


def test_cli_unwritable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gen-image", str(tmp_path / "missing" / "x"), "--size", "1M"]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_cli_bad_size_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["gen-image", str(tmp_path / "x"), "--size", "lots"])
    assert exit_info.value.code == 2
    assert "--size" in capsys.readouterr().err

"""Deterministic guest-memory test images: a seeded shuffle of four page kinds.

* ``zero``: every byte 0.
* ``text``: invented words (no real text) from a vocabulary drawn from the
  seed, grouped into phrases with Zipf-like frequencies and separated by
  spaces, commas, full stops and newlines. Pages are cut from one fresh
  stream of phrases, so no two are copies, yet zlib shrinks one to about 0.37.
* ``random``: uniform bytes.
* ``half``: ``page_size / 2`` random bytes, then zeros.

Only the raw streams of :class:`numpy.random.SFC64` seeded through
:class:`numpy.random.SeedSequence` (both stable across numpy versions),
integer arithmetic and Python floats decide the bytes, so the same arguments
give the same image.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from mfdcomp.clients.ram import check_page_size
from mfdcomp.errors import MfdcompError

__all__ = ["DEFAULT_MIX", "KINDS", "ImageStats", "generate_image", "page_counts", "parse_mix"]

KINDS = ("zero", "text", "random", "half")
DEFAULT_MIX = "zero=10,text=40,random=30,half=20"
_ZERO, _TEXT, _RANDOM, _HALF = range(len(KINDS))

# Pages are generated and written this many bytes at a time (memory stays flat).
_CHUNK_BYTES = 4 << 20

# Text model. Measured on 4 KiB pages: zlib level 6 gives 0.37 of a page,
# 0.24 of a 512 KiB packet; generation runs at ~700 MB/s of text.
_WORDS = 2000
_WORD_ZIPF = 1.2
_PHRASES = 16384
_PHRASE_ZIPF = 1.1
_PHRASE_WORDS = (4, 9)  # inclusive
_TABLE_BITS = 16  # phrases are drawn through a table of 2**16 slots
_CONSONANTS = b"bcdfghjklmnprstvwz"
_VOWELS = b"aeiou"
# One separator per phrase; a space most of the time.
_SEPARATORS = (b" ",) * 14 + (b"\n", b"\n", b", ", b". ")


@dataclass(frozen=True)
class ImageStats:
    """What :func:`generate_image` wrote."""

    path: str
    size: int
    page_size: int
    seed: int
    counts: dict[str, int]
    sha256: str
    seconds: float

    @property
    def pages(self) -> int:
        return self.size // self.page_size

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"pages": self.pages, "mb_per_s": self.mb_per_s}


def parse_mix(text: str) -> dict[str, float]:
    """``zero=10,text=40,random=30,half=20`` (or fractions, or ``10%``) as a dict; kinds left out are 0."""
    mix: dict[str, float] = {}
    for item in text.split(","):
        kind, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not kind:
            raise MfdcompError(f"mix entries are KIND=SHARE, got {item.strip()!r}; kinds: {', '.join(KINDS)}")
        if kind in mix:
            raise MfdcompError(f"page kind {kind!r} given twice in the mix")
        try:
            mix[kind] = float(value.removesuffix("%"))
        except ValueError:
            raise MfdcompError(f"share of {kind!r} is not a number: {value!r}") from None
    return mix


def _shares(mix: Mapping[str, float]) -> dict[str, Fraction]:
    """Each kind's exact share of the pages; the mix sums to 100 (percent) or 1 (fractions)."""
    unknown = [kind for kind in mix if kind not in KINDS]
    if unknown:
        raise MfdcompError(f"unknown page kind {', '.join(map(repr, unknown))}; kinds: {', '.join(KINDS)}")
    values: dict[str, Fraction] = {}
    for kind in KINDS:
        value = mix.get(kind, 0)
        if not 0 <= value < float("inf"):
            raise MfdcompError(f"share of {kind!r} must be a finite number >= 0, got {value}")
        # str() first: 0.1 becomes exactly 1/10, as typed.
        values[kind] = Fraction(str(value))
    total = sum(values.values(), Fraction(0))
    # Shares like 1/3 as floats miss 1 by an ulp; they still mean 1.
    if not (abs(total - 100) <= Fraction(1, 10**6) or abs(total - 1) <= Fraction(1, 10**9)):
        given = ", ".join(f"{kind}={mix.get(kind, 0):g}" for kind in KINDS)
        raise MfdcompError(
            f"the mix must sum to 100 (percent) or 1.0 (fractions), got {float(total):g} "
            f"({given}); kinds: {', '.join(KINDS)}"
        )
    return {kind: value / total for kind, value in values.items()}


def page_counts(pages: int, mix: Mapping[str, float]) -> dict[str, int]:
    """Exact page count of each kind: the floor of its share, the remainder to the largest fractions.

    Ties in the fractions go to the kind listed first in :data:`KINDS`.
    """
    exact = {kind: share * pages for kind, share in _shares(mix).items()}
    counts = {kind: int(value) for kind, value in exact.items()}
    leftover = pages - sum(counts.values())
    by_fraction = sorted(KINDS, key=lambda kind: (-(exact[kind] - counts[kind]), KINDS.index(kind)))
    for kind in by_fraction[:leftover]:
        counts[kind] += 1
    return counts


class _Bits:
    """Raw 64-bit draws of one SFC64 stream, turned into bytes and bounded integers."""

    def __init__(self, seed: np.random.SeedSequence) -> None:
        self._raw = np.random.SFC64(seed).random_raw

    def bytes(self, count: int) -> npt.NDArray[np.uint8]:
        words = self._raw((count + 7) // 8).astype("<u8", copy=False)
        return words.view(np.uint8)[:count]

    def below(self, bound: int, count: int) -> npt.NDArray[np.uint64]:
        """``count`` integers in ``[0, bound)`` (bound < 2**32): the high half of 32 bits times bound."""
        low32 = self._raw(count) & np.uint64(0xFFFFFFFF)
        return (low32 * np.uint64(bound)) >> np.uint64(32)


def _zipf_table(count: int, exponent: float, bits: int) -> npt.NDArray[np.uint16]:
    """``2**bits`` slots, each rank filling about its Zipf share (weight 1 / (rank + 2.7) ** exponent)."""
    weights = [(rank + 2.7) ** -exponent for rank in range(count)]
    total = sum(weights)
    cumulative = np.array(list(itertools.accumulate(weights)), dtype=np.float64) / total
    slots = 1 << bits
    centres = (np.arange(slots, dtype=np.float64) + 0.5) / slots
    return np.minimum(np.searchsorted(cumulative, centres), count - 1).astype(np.uint16)


class _TextModel:
    """Invented words → phrases → a stream of phrases drawn with Zipf-like frequencies."""

    def __init__(self, bits: _Bits) -> None:
        words = self._vocabulary(bits)
        word_table = _zipf_table(len(words), _WORD_ZIPF, _TABLE_BITS)
        low, high = _PHRASE_WORDS
        lengths = (low + bits.below(high - low + 1, _PHRASES)).tolist()
        picks = word_table[bits.below(1 << _TABLE_BITS, sum(lengths))].tolist()
        separators = bits.below(len(_SEPARATORS), _PHRASES).tolist()
        phrases = np.empty(_PHRASES, dtype=object)
        start = 0
        for index, length in enumerate(lengths):
            phrase = b" ".join(words[pick] for pick in picks[start : start + length])
            phrases[index] = phrase + _SEPARATORS[separators[index]]
            start += length
        self._phrases = phrases
        self._table = _zipf_table(_PHRASES, _PHRASE_ZIPF, _TABLE_BITS)
        # Integer sum: the mean decides how many draws each call takes.
        self._mean = sum(map(len, phrases[self._table].tolist())) / len(self._table)
        self._bits = bits

    @staticmethod
    def _vocabulary(bits: _Bits) -> list[bytes]:
        """Distinct words of 1-4 consonant-vowel syllables, some closed by a consonant; shortest first."""
        words: dict[bytes, None] = {}  # a dict keeps the draw order
        while len(words) < _WORDS:
            draws = bits.below(1 << 30, 4096).tolist()
            for at in range(0, len(draws) - 10, 11):
                word = bytearray()
                syllables = 1 + draws[at] % 4
                for syllable in range(syllables):
                    word.append(_CONSONANTS[draws[at + 1 + 2 * syllable] % len(_CONSONANTS)])
                    word.append(_VOWELS[draws[at + 2 + 2 * syllable] % len(_VOWELS)])
                if draws[at + 9] % 3 == 0:
                    word.append(_CONSONANTS[draws[at + 10] % len(_CONSONANTS)])
                words.setdefault(bytes(word))
                if len(words) == _WORDS:
                    break
        # Short words frequent, as in natural languages.
        return sorted(words, key=len)

    def text(self, count: int) -> bytes:
        """The next ``count`` bytes of fresh text."""
        pieces: list[bytes] = []
        produced = 0
        while produced < count:
            draws = int((count - produced) / self._mean * 1.05) + 16
            picks = self._table[self._bits.below(1 << _TABLE_BITS, draws)]
            piece = b"".join(self._phrases[picks].tolist())
            pieces.append(piece)
            produced += len(piece)
        return b"".join(pieces)[:count]


def _layout(pages: int, counts: Mapping[str, int], bits: _Bits) -> npt.NDArray[np.uint8]:
    """The kind (index into :data:`KINDS`) of every page, shuffled by sorting random keys."""
    kinds = np.repeat(np.arange(len(KINDS), dtype=np.uint8), [counts[kind] for kind in KINDS])
    order = np.argsort(bits.bytes(8 * pages).view("<u8"), kind="stable")
    return kinds[order]


def _fill(chunk: npt.NDArray[np.uint8], kinds: npt.NDArray[np.uint8], random_bits: _Bits, text: _TextModel) -> None:
    """Fill the pages of ``chunk`` with the kinds given, in page order."""
    page_size = chunk.shape[1]
    half_size = page_size // 2
    rows = [np.flatnonzero(kinds == kind) for kind in range(len(KINDS))]
    chunk[rows[_ZERO]] = 0
    chunk[rows[_RANDOM]] = random_bits.bytes(len(rows[_RANDOM]) * page_size).reshape(-1, page_size)
    chunk[rows[_HALF], :half_size] = random_bits.bytes(len(rows[_HALF]) * half_size).reshape(-1, half_size)
    chunk[rows[_HALF], half_size:] = 0
    if len(rows[_TEXT]):
        data = text.text(len(rows[_TEXT]) * page_size)
        chunk[rows[_TEXT]] = np.frombuffer(data, dtype=np.uint8).reshape(-1, page_size)


def _sink(chunk: npt.NDArray[np.uint8], digest: hashlib._Hash, out: BinaryIO) -> int:
    digest.update(chunk.data)
    out.write(chunk.data)
    return chunk.nbytes


def _done(job: Future[int], progress: Callable[[int], None] | None) -> None:
    written = job.result()
    if progress is not None:
        progress(written)


def generate_image(
    path: str | Path,
    size: int,
    mix: Mapping[str, float],
    seed: int,
    page_size: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> ImageStats:
    """Write a test image of ``size`` bytes to ``path``; ``progress`` gets the bytes of each chunk written."""
    check_page_size(page_size)
    if size <= 0 or size % page_size:
        raise MfdcompError(f"image size must be a positive multiple of the page size {page_size}, got {size}")
    if seed < 0:
        raise MfdcompError(f"seed must be >= 0, got {seed}")
    pages = size // page_size
    counts = page_counts(pages, mix)
    started = time.monotonic()
    layout_seed, bytes_seed, text_seed = np.random.SeedSequence(seed).spawn(3)
    kinds = _layout(pages, counts, _Bits(layout_seed))
    random_bits = _Bits(bytes_seed)
    text = _TextModel(_Bits(text_seed))
    digest = hashlib.sha256()
    chunk_pages = max(1, _CHUNK_BYTES // page_size)
    # Two buffers: one is filled here while the writer thread hashes and
    # writes the other (hashlib and file writes release the GIL).
    buffers = [np.empty((chunk_pages, page_size), dtype=np.uint8) for _ in range(2)]
    pending: deque[Future[int]] = deque()
    try:
        with open(path, "wb") as out, ThreadPoolExecutor(1, thread_name_prefix="mfdcomp-gen-image") as writer:
            for number, first in enumerate(range(0, pages, chunk_pages)):
                if len(pending) == len(buffers):
                    _done(pending.popleft(), progress)  # its buffer is ours again
                chunk_kinds = kinds[first : first + chunk_pages]
                chunk = buffers[number % len(buffers)][: len(chunk_kinds)]
                _fill(chunk, chunk_kinds, random_bits, text)
                pending.append(writer.submit(_sink, chunk, digest, out))
            while pending:
                _done(pending.popleft(), progress)
    except OSError as exc:
        raise MfdcompError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return ImageStats(
        path=str(path),
        size=size,
        page_size=page_size,
        seed=seed,
        counts=counts,
        sha256=digest.hexdigest(),
        seconds=time.monotonic() - started,
    )


def fill_memory(memory: memoryview, mix: Mapping[str, float], seed: int, page_size: int = 4096) -> dict[str, int]:
    """Fill ``memory`` in place with the pages :func:`generate_image` would write; the page counts by kind."""
    check_page_size(page_size)
    if len(memory) % page_size:
        raise MfdcompError(f"memory of {len(memory)} bytes is not a whole number of {page_size}-byte pages")
    pages = len(memory) // page_size
    counts = page_counts(pages, mix)
    layout_seed, bytes_seed, text_seed = np.random.SeedSequence(seed).spawn(3)
    kinds = _layout(pages, counts, _Bits(layout_seed))
    random_bits = _Bits(bytes_seed)
    text = _TextModel(_Bits(text_seed))
    array = np.frombuffer(memory, dtype=np.uint8).reshape(pages, page_size)
    chunk_pages = max(1, _CHUNK_BYTES // page_size)
    for first in range(0, pages, chunk_pages):
        _fill(array[first : first + chunk_pages], kinds[first : first + chunk_pages], random_bits, text)
    return counts

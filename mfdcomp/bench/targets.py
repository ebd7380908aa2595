"""The issue's performance targets, judged on one matrix's results against baselines of the same run.

Best-of-repeats on both sides of every comparison: on a shared machine,
interference only ever slows a run down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from mfdcomp.bench.results import Cell, MatrixResult
from mfdcomp.units import format_bytes

__all__ = ["FAIL", "NOT_EVALUATED", "PASS", "Verdict", "evaluate_targets"]

PASS = "PASS"
FAIL = "FAIL"
NOT_EVALUATED = "NOT EVALUATED"

# The data kinds the targets are judged on: the realistic mix, and the 90 %-zero image.
TARGET_KIND = "mixed"
ZERO_KIND = "zero90"
LOOPBACK_SHARE = 0.80
NO_QEMU_SECONDS = 1.0
LIBRARY_SHARE = 0.90
ZERO_GB_PER_S = 3.0
RSS_HEADROOM = 64 << 20
STREAM_CODECS = ("zstd-1", "zlib-1")


@dataclass(frozen=True)
class Verdict:
    target: str
    subject: str
    status: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return f"{self.status:<13} {self.target} [{self.subject}]: {self.detail}"


def _mib(count: int) -> str:
    # MiB, not format_bytes: 1.0 GiB and 1.1 GiB would hide a few MiB over the limit.
    return f"{count / (1 << 20):.0f} MiB"


def _subject(cell: Cell) -> str:
    return f"{cell.codec.label}, {cell.kind}, {cell.channels} ch"


def _cells(result: MatrixResult, keep: Callable[[Cell], bool]) -> list[Cell]:
    return [cell for cell in result.cells if cell.ok and keep(cell)]


def _missing(target: str, what: str) -> Verdict:
    return Verdict(target, "-", NOT_EVALUATED, f"no {what} in this run")


def _loopback(result: MatrixResult) -> list[Verdict]:
    target = f"nocomp ≥ {LOOPBACK_SHARE:.0%} of the loopback limit"
    cells = _cells(result, lambda c: c.codec.name == "none" and c.kind == TARGET_KIND)
    verdicts = []
    for cell in cells:
        pump = result.find_pump(cell.kind, cell.channels)
        if pump is None or not pump.gb_per_s_runs:
            why = pump.not_run if pump is not None else "not measured"
            verdicts.append(Verdict(target, _subject(cell), NOT_EVALUATED, f"loopback pump not run: {why}"))
            continue
        share = cell.gb_per_s / pump.gb_per_s
        detail = f"{cell.gb_per_s:.2f} GB/s = {share:.0%} of the pump's {pump.gb_per_s:.2f} GB/s"
        verdicts.append(Verdict(target, _subject(cell), PASS if share >= LOOPBACK_SHARE else FAIL, detail))
    return verdicts or [_missing(target, f"nocomp cell on the {TARGET_KIND} image")]


def _versus_qemu(result: MatrixResult, cell: Cell, target: str, *, strictly: bool) -> Verdict:
    """``cell`` against QEMU's time; for nocomp without QEMU, against NO_QEMU_SECONDS."""
    qemu = result.find_qemu(cell.kind, cell.codec, cell.channels)
    seconds = f"{cell.seconds:.3f} s for {format_bytes(cell.guest_bytes)}"
    if qemu is not None and qemu.seconds_runs:
        ok = cell.seconds < qemu.seconds if strictly else cell.seconds <= qemu.seconds
        detail = f"{seconds} against QEMU {qemu.version}'s {qemu.seconds:.3f} s"
        return Verdict(target, _subject(cell), PASS if ok else FAIL, detail)
    why = f"QEMU not run: {qemu.not_run if qemu is not None else 'not measured'}"
    if not strictly:
        return Verdict(target, _subject(cell), NOT_EVALUATED, why)
    detail = f"{seconds} against {NO_QEMU_SECONDS:.1f} s instead ({why})"
    return Verdict(target, _subject(cell), PASS if cell.seconds < NO_QEMU_SECONDS else FAIL, detail)


def _nocomp_qemu(result: MatrixResult) -> list[Verdict]:
    target = f"nocomp faster than QEMU (or than {NO_QEMU_SECONDS:.1f} s without QEMU)"
    cells = _cells(result, lambda c: c.codec.name == "none" and c.kind == TARGET_KIND)
    return [_versus_qemu(result, cell, target, strictly=True) for cell in cells] or [
        _missing(target, f"nocomp cell on the {TARGET_KIND} image")
    ]


def _library(result: MatrixResult) -> list[Verdict]:
    target = f"within {1 - LIBRARY_SHARE:.0%} of min(cores, channels) × the raw library"
    cells = _cells(result, lambda c: c.codec.label in STREAM_CODECS and c.kind == TARGET_KIND)
    verdicts = []
    for cell in cells:
        baseline = result.find_library(cell.kind, cell.codec)
        if baseline is None or baseline.result is None:
            why = baseline.not_run if baseline is not None else "not measured"
            verdicts.append(Verdict(target, _subject(cell), NOT_EVALUATED, f"library reference not run: {why}"))
            continue
        single = baseline.result.compress_gb_per_s
        threads = min(result.cores, cell.channels)
        ideal = threads * single
        share = cell.gb_per_s / ideal
        detail = (
            f"{cell.gb_per_s:.3f} GB/s = {share:.0%} of {threads} × {single:.3f} GB/s "
            f"(library compress, one thread; {result.cores} cores)"
        )
        verdicts.append(Verdict(target, _subject(cell), PASS if share >= LIBRARY_SHARE else FAIL, detail))
    return verdicts or [_missing(target, f"zstd-1 or zlib-1 cell on the {TARGET_KIND} image")]


def _stream_qemu(result: MatrixResult) -> list[Verdict]:
    target = "no slower than QEMU on the same image"
    cells = _cells(result, lambda c: c.codec.label in STREAM_CODECS and c.kind == TARGET_KIND)
    return [_versus_qemu(result, cell, target, strictly=False) for cell in cells] or [
        _missing(target, f"zstd-1 or zlib-1 cell on the {TARGET_KIND} image")
    ]


def _zero(result: MatrixResult) -> list[Verdict]:
    target = f"90%-zero image ≥ {ZERO_GB_PER_S:.0f} GB/s of guest RAM"
    verdicts = []
    for cell in _cells(result, lambda c: c.kind == ZERO_KIND):
        status = PASS if cell.gb_per_s >= ZERO_GB_PER_S else FAIL
        verdicts.append(Verdict(target, _subject(cell), status, f"{cell.gb_per_s:.2f} GB/s"))
    return verdicts or [_missing(target, f"cell on the {ZERO_KIND} image (add it to --kinds)")]


def _rss(result: MatrixResult) -> list[Verdict]:
    target = f"nocomp peak RSS of each side ≤ image + {format_bytes(RSS_HEADROOM)}"
    verdicts = []
    for cell in _cells(result, lambda c: c.codec.name == "none"):
        limit = cell.guest_bytes + RSS_HEADROOM
        worst = max(cell.send_peak_rss, cell.recv_peak_rss)
        detail = f"send {_mib(cell.send_peak_rss)}, recv {_mib(cell.recv_peak_rss)}, limit {_mib(limit)}"
        verdicts.append(Verdict(target, _subject(cell), PASS if worst <= limit else FAIL, detail))
    return verdicts or [_missing(target, "nocomp cell")]


def evaluate_targets(result: MatrixResult) -> list[Verdict]:
    """One verdict per target and cell it applies to; NOT EVALUATED (with the reason) where data is missing."""
    return [
        *_loopback(result),
        *_nocomp_qemu(result),
        *_library(result),
        *_stream_qemu(result),
        *_zero(result),
        *_rss(result),
    ]

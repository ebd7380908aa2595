"""Issue 18's performance targets, judged on one matrix's results against baselines of the same run.

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

# Issue 18's targets: each cell's time over QEMU's, both measured in the same run over the same transport.
TARGET_KIND = "mixed"
ZERO_KIND = "zero90"
LOOPBACK_SHARE = 0.90
RSS_HEADROOM = 64 << 20
# (kind, codec label, most mfdcomp/QEMU): zlib-1 runs ISA-L, about 6× the zlib QEMU links, hence 0.5.
RATIO_CELLS = (
    (TARGET_KIND, "none", 1.0),
    (TARGET_KIND, "zstd-1", 1.0),
    (TARGET_KIND, "zlib-1", 0.5),
    (ZERO_KIND, "none", 1.0),
)
SESSION_RATIO = 1.0


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
    target = f"nocomp ≥ {LOOPBACK_SHARE:.0%} of the {result.pump_name}"
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


def _shown(ratio: float, limit: float) -> str:
    """The ratio to two places, or to as many more as tell it from its limit (1.002 is no "1.00" FAIL)."""
    places = 2
    while ratio != limit and float(f"{ratio:.{places}f}") == limit and places < 6:
        places += 1
    return f"{ratio:.{places}f}"


def _ratio(result: MatrixResult, *, session: bool) -> list[Verdict]:
    """Transfer (or whole-session) time over QEMU's total-time, for each of RATIO_CELLS' cells in the run."""
    verdicts = []
    for kind, label, most in RATIO_CELLS:
        limit = SESSION_RATIO if session else most
        what = "whole session (connect to verified end)" if session else "transfer"
        target = f"{what} ≤ {limit:g} × QEMU's total-time"
        cells = [c for c in result.cells if c.ok and (c.kind, c.codec.label) == (kind, label)]
        if not cells:
            verdicts.append(
                Verdict(target, f"{label}, {kind}", NOT_EVALUATED, f"no {label} cell on the {kind} image in this run")
            )
        for cell in cells:
            qemu = result.find_qemu(cell.kind, cell.codec, cell.channels)
            if qemu is None or not qemu.seconds_runs:
                why = qemu.not_run if qemu is not None else "not measured"
                verdicts.append(Verdict(target, _subject(cell), NOT_EVALUATED, f"QEMU not run: {why}"))
                continue
            seconds = cell.session_seconds if session else cell.seconds
            ratio = seconds / qemu.seconds
            detail = (
                f"{seconds:.3f} s for {format_bytes(cell.guest_bytes)} against QEMU {qemu.version}'s "
                f"{qemu.seconds:.3f} s: ratio {_shown(ratio, limit)}"
            )
            verdicts.append(Verdict(target, _subject(cell), PASS if ratio <= limit else FAIL, detail))
    return verdicts


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
    return [*_ratio(result, session=False), *_ratio(result, session=True), *_loopback(result), *_rss(result)]

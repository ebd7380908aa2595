"""Link-speed sweep: source and destination in two network namespaces joined by a veth pair, rate-limited by tc.

The sender runs in one namespace and the receiver in the other (``ip netns
exec``, which execs the program, so each side's rusage is still its own);
TCP over the veth pair, whose source end carries a token bucket filter (tbf)
at each rate. The unlimited pair is measured too, as the reference of what the
veth itself allows. Namespaces are removed on every path, SIGTERM included;
the veth pair goes with them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from mfdcomp.bench.matrix import Say
from mfdcomp.bench.transfer import CodecChoice, Endpoints, TransferRun, add_run

__all__ = [
    "LinkCell",
    "LinkSweepResult",
    "LinkedNamespaces",
    "NamespaceError",
    "Payoff",
    "compression_pays",
    "rate_text",
    "run_link_sweep",
]

# Link-local addresses on a link of our own: nothing outside the two namespaces is reachable.
SOURCE_ADDRESS = "169.254.77.1"
DESTINATION_ADDRESS = "169.254.77.2"


class NamespaceError(RuntimeError):
    """An ``ip``/``tc`` command failed; the message is the command and what it said."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NamespaceError(f"`ip {' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")


def rate_text(rate: float | None) -> str:
    return "unlimited" if rate is None else f"{rate:g} Gbit/s"


class LinkedNamespaces:
    """Two namespaces (source, destination) joined by a veth pair, for use as a context manager."""

    def __init__(self, tag: str) -> None:
        self.source = f"mfdb{tag}s"
        self.destination = f"mfdb{tag}d"
        # Interface names: at most 15 characters.
        self._source_link = f"mfb{tag}s"
        self._destination_link = f"mfb{tag}d"
        self._created: list[str] = []

    def __enter__(self) -> LinkedNamespaces:
        try:
            for namespace in (self.source, self.destination):
                _ip("netns", "add", namespace)
                self._created.append(namespace)
            _ip(
                "link", "add", self._source_link, "netns", self.source, "type", "veth",
                "peer", "name", self._destination_link, "netns", self.destination,
            )  # fmt: skip
            for namespace, link, address in (
                (self.source, self._source_link, SOURCE_ADDRESS),
                (self.destination, self._destination_link, DESTINATION_ADDRESS),
            ):
                _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", link)
                _ip("-n", namespace, "link", "set", link, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Delete the namespaces made (the veth pair and its qdisc go with them)."""
        while self._created:
            with contextlib.suppress(NamespaceError):
                _ip("netns", "del", self._created.pop())

    def limit(self, rate: float | None) -> None:
        """A tbf of ``rate`` Gbit/s on the source's end of the link, or none."""
        if rate is None:
            # Unchecked: "no qdisc to delete" is as good as deleting one.
            subprocess.run(
                ["ip", "netns", "exec", self.source, "tc", "qdisc", "del", "dev", self._source_link, "root"],
                capture_output=True,
                check=False,
            )
            return
        per_second = rate * 1e9 / 8
        # A bucket of 1 ms of traffic (at least two 64 KiB GSO packets), and 20 ms of queue.
        burst = max(int(per_second / 1000), 128 << 10)
        _ip(
            "netns", "exec", self.source, "tc", "qdisc", "replace", "dev", self._source_link, "root",
            "tbf", "rate", f"{rate:g}gbit", "burst", str(burst), "latency", "20ms",
        )  # fmt: skip

    def endpoints(self) -> Endpoints:
        return Endpoints(
            listen=f"tcp:{DESTINATION_ADDRESS}:0",
            recv_prefix=("ip", "netns", "exec", self.destination),
            send_prefix=("ip", "netns", "exec", self.source),
        )


def _exit_on_term(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit meanwhile, so the finally clauses that remove the namespaces run."""
    previous = signal.signal(signal.SIGTERM, _exit_on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class LinkCell:
    rate: float | None  # Gbit/s; None: no limit
    codec: CodecChoice
    runs: list[TransferRun] = field(default_factory=list)
    error: str | None = None

    @property
    def gb_per_s(self) -> float:
        """Median of the runs."""
        return statistics.median(run.gb_per_s for run in self.runs)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"rate_gbit": self.rate, "label": self.codec.label, "error": self.error}
        data["runs"] = [run.as_dict() for run in self.runs]
        if self.runs:
            data |= {"gb_per_s_median": self.gb_per_s, "gb_per_s_best": max(r.gb_per_s for r in self.runs)}
        return data


@dataclass(frozen=True)
class Payoff:
    """Where one codec beats none on the links measured."""

    codec: str
    wins: list[float | None]
    losses: list[float | None]
    summary: str
    break_even_gbit: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "codec": self.codec,
            "wins_at_gbit": self.wins,
            "loses_at_gbit": self.losses,
            "summary": self.summary,
            "break_even_gbit_estimate": self.break_even_gbit,
        }


def _order(rate: float | None) -> float:
    return float("inf") if rate is None else rate


def compression_pays(
    rates: Sequence[float | None], gb_per_s: dict[str, dict[float | None, float]], none_ratio: float | None = None
) -> list[Payoff]:
    """For every codec but ``none``: at which links (Gbit/s, None unlimited) it moves guest RAM faster than none.

    ``gb_per_s[label][rate]`` holds what was measured; rates missing for a
    codec or for none are left out. With ``none_ratio`` (none's guest bytes
    per wire byte), the break-even link speed is estimated too: the speed at
    which none, filling the link, moves guest RAM as fast as the codec does at
    its best on these links (8 × GB/s / ratio).
    """
    baseline = gb_per_s.get("none", {})
    payoffs = []
    for label, measured in gb_per_s.items():
        if label == "none":
            continue
        common = sorted((r for r in rates if r in measured and r in baseline), key=_order)
        wins = [r for r in common if measured[r] > baseline[r]]
        losses = [r for r in common if r not in wins]
        names = ", ".join
        if not common:
            summary = "not compared: none or this codec has no measurement on a common link"
        elif not losses:
            summary = f"beats none on every link measured, up to {rate_text(common[-1])}"
        elif not wins:
            summary = f"never beats none here, not even at {rate_text(common[0])}"
        elif common[: len(wins)] == wins:
            summary = (
                f"pays below a link speed between {rate_text(wins[-1])} and {rate_text(losses[0])}: "
                f"beats none at {names(map(rate_text, wins))}"
            )
        else:
            summary = (
                f"no single crossover: beats none at {names(map(rate_text, wins))}, "
                f"not at {names(map(rate_text, losses))}"
            )
        estimate = 8 * max(measured.values()) / none_ratio if none_ratio and measured else None
        if estimate is not None:
            summary += f"; break-even ≈ {estimate:.2g} Gbit/s"
        payoffs.append(Payoff(label, wins, losses, summary, estimate))
    return payoffs


@dataclass
class LinkSweepResult:
    kind: str
    size: int
    channels: int
    rates: list[float | None]
    cells: list[LinkCell] = field(default_factory=list)
    payoffs: list[Payoff] = field(default_factory=list)
    not_run: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "size": self.size,
            "channels": self.channels,
            "rates_gbit": self.rates,
            "not_run": self.not_run,
            "cells": [cell.as_dict() for cell in self.cells],
            "payoffs": [payoff.as_dict() for payoff in self.payoffs],
        }


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found (iproute2)" if missing else None


def run_link_sweep(
    image: Path,
    kind: str,
    codecs: list[CodecChoice],
    channels: int,
    rates: list[float],
    repeats: int,
    workdir: Path,
    say: Say,
) -> LinkSweepResult:
    """Every codec at each rate, then over the unlimited veth pair; ``not_run`` says why where namespaces fail."""
    links: list[float | None] = [*sorted(rates), None]
    result = LinkSweepResult(kind, image.stat().st_size, channels, links)
    why = _unavailable()
    if why is None:
        try:
            with _sigterm_unwinds(), LinkedNamespaces(str(os.getpid())) as namespaces:
                for rate in links:
                    namespaces.limit(rate)
                    cells = [LinkCell(rate, codec) for codec in codecs]
                    for repeat in range(repeats):
                        for cell in cells:
                            _one(cell, image, channels, namespaces.endpoints(), workdir, f"{repeat + 1}/{repeats}", say)
                    result.cells.extend(cells)
        except NamespaceError as exc:
            why = str(exc)
    if why is not None:
        result.not_run = why
        say(f"NOT RUN: link sweep: {why}")
        return result
    measured: dict[str, dict[float | None, float]] = {codec.label: {} for codec in codecs}
    for cell in result.cells:
        if cell.runs:
            measured[cell.codec.label][cell.rate] = cell.gb_per_s
    none_runs = [run for cell in result.cells if cell.codec.name == "none" for run in cell.runs]
    ratio = sum(r.guest_bytes for r in none_runs) / sum(r.wire_bytes for r in none_runs) if none_runs else None
    result.payoffs = compression_pays(links, measured, ratio)
    return result


def _one(cell: LinkCell, image: Path, channels: int, ends: Endpoints, workdir: Path, repeat: str, say: Say) -> None:
    where = f"link {rate_text(cell.rate)} {cell.codec.label} ×{channels} run {repeat}"
    if cell.error is not None:
        return
    run = add_run(cell, image, channels, ends, workdir)
    if run is None:
        say(f"FAILED: {where}: {cell.error}")
        return
    say(f"{where}: {run.gb_per_s:.3f} GB/s, wire {run.wire_bytes / run.guest_bytes:.1%} of guest")

"""What a bench matrix measured: cells (codec × channels × kind) and, from the same run, their baselines."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from mfdcomp.bench.images import Image
from mfdcomp.bench.library import LibraryResult
from mfdcomp.bench.transfer import CodecChoice, TransferRun

__all__ = ["Cell", "LibraryBaseline", "MatrixResult", "PumpBaseline", "QemuBaseline"]


@dataclass
class Cell:
    """Every run of one codec over some channels on one data kind (or why it failed)."""

    kind: str
    codec: CodecChoice
    channels: int
    runs: list[TransferRun] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.runs) and self.error is None

    @property
    def gb_per_s(self) -> float:
        """Best of the runs."""
        return max(run.gb_per_s for run in self.runs)

    @property
    def gb_per_s_median(self) -> float:
        return statistics.median(run.gb_per_s for run in self.runs)

    @property
    def seconds(self) -> float:
        """Best (shortest) transfer time."""
        return min(run.seconds for run in self.runs)

    @property
    def session_seconds(self) -> float:
        """Best (shortest) whole session: connect to the verified end, as the user waits."""
        return min(run.session_seconds for run in self.runs)

    @property
    def wire_bytes(self) -> int:
        """Median: zlib/zstd streams vary a little with which channel got which packet."""
        return int(statistics.median(run.wire_bytes for run in self.runs))

    @property
    def guest_bytes(self) -> int:
        return self.runs[0].guest_bytes

    @property
    def ratio(self) -> float:
        """Guest bytes per wire byte (compression ratio)."""
        return self.guest_bytes / self.wire_bytes

    @property
    def send_cpu_seconds(self) -> float:
        return statistics.median(run.send_cpu_seconds for run in self.runs)

    @property
    def recv_cpu_seconds(self) -> float:
        return statistics.median(run.recv_cpu_seconds for run in self.runs)

    @property
    def send_peak_rss(self) -> int:
        return max(run.send_peak_rss for run in self.runs)

    @property
    def recv_peak_rss(self) -> int:
        return max(run.recv_peak_rss for run in self.runs)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "codec": self.codec.name,
            "level": self.codec.level,
            "label": self.codec.label,
            "channels": self.channels,
            "error": self.error,
            "runs": [run.as_dict() for run in self.runs],
        }
        if self.ok:
            data |= {
                "gb_per_s_best": self.gb_per_s,
                "gb_per_s_median": self.gb_per_s_median,
                "transfer_seconds_best": self.seconds,
                "session_seconds_best": self.session_seconds,
                "guest_bytes": self.guest_bytes,
                "wire_bytes": self.wire_bytes,
                "ratio": self.ratio,
                "send_cpu_seconds": self.send_cpu_seconds,
                "recv_cpu_seconds": self.recv_cpu_seconds,
                "send_peak_rss": self.send_peak_rss,
                "recv_peak_rss": self.recv_peak_rss,
            }
        return data


@dataclass
class PumpBaseline:
    """The Python loopback pump on the same image over the same number of connections."""

    kind: str
    channels: int
    gb_per_s_runs: list[float] = field(default_factory=list)
    not_run: str | None = None

    @property
    def gb_per_s(self) -> float:
        return max(self.gb_per_s_runs)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "channels": self.channels, "not_run": self.not_run}
        data["gb_per_s_runs"] = self.gb_per_s_runs
        if self.gb_per_s_runs:
            data |= {"gb_per_s_best": self.gb_per_s, "gb_per_s_median": statistics.median(self.gb_per_s_runs)}
        return data


@dataclass
class LibraryBaseline:
    """The codec's raw library, one thread, on the same pages."""

    kind: str
    codec: CodecChoice
    result: LibraryResult | None = None
    not_run: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "label": self.codec.label, "not_run": self.not_run}
        return data | (self.result.as_dict() if self.result else {"codec": self.codec.name})


@dataclass
class QemuBaseline:
    """QEMU 10's own multifd migration of the same image with the same codec and channels."""

    kind: str
    codec: CodecChoice
    channels: int
    seconds_runs: list[float] = field(default_factory=list)
    guest_bytes: int = 0
    version: str = ""
    not_run: str | None = None
    cpu_runs: list[tuple[float, float]] = field(default_factory=list)
    """CPU seconds of the source and the destination QEMU during each migration (where /proc told)."""

    @property
    def seconds(self) -> float:
        return min(self.seconds_runs)

    @property
    def gb_per_s(self) -> float:
        return self.guest_bytes / self.seconds / 1e9

    @property
    def send_cpu_seconds(self) -> float | None:
        return statistics.median(send for send, _ in self.cpu_runs) if self.cpu_runs else None

    @property
    def recv_cpu_seconds(self) -> float | None:
        return statistics.median(recv for _, recv in self.cpu_runs) if self.cpu_runs else None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "label": self.codec.label,
            "channels": self.channels,
            "version": self.version,
            "seconds_runs": self.seconds_runs,
            "cpu_seconds_runs": [{"send": send, "recv": recv} for send, recv in self.cpu_runs],
            "not_run": self.not_run,
        }
        if self.seconds_runs:
            data |= {"seconds_best": self.seconds, "gb_per_s_best": self.gb_per_s}
        if self.cpu_runs:
            data |= {"send_cpu_seconds": self.send_cpu_seconds, "recv_cpu_seconds": self.recv_cpu_seconds}
        return data


@dataclass
class MatrixResult:
    size: int
    transport: str
    repeats: int
    cores: int
    images: dict[str, Image] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    pump: list[PumpBaseline] = field(default_factory=list)
    library: list[LibraryBaseline] = field(default_factory=list)
    qemu: list[QemuBaseline] = field(default_factory=list)

    @property
    def pump_name(self) -> str:
        """The pump's name in the report: a TLS run's pump runs under TLS too (loopback_pump.py --tls-creds)."""
        return "TLS loopback pump" if self.transport.endswith("+TLS") else "loopback pump"

    def find_pump(self, kind: str, channels: int) -> PumpBaseline | None:
        return next((p for p in self.pump if (p.kind, p.channels) == (kind, channels)), None)

    def find_library(self, kind: str, codec: CodecChoice) -> LibraryBaseline | None:
        return next((b for b in self.library if (b.kind, b.codec) == (kind, codec)), None)

    def find_qemu(self, kind: str, codec: CodecChoice, channels: int) -> QemuBaseline | None:
        return next((q for q in self.qemu if (q.kind, q.codec, q.channels) == (kind, codec, channels)), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "transport": self.transport,
            "repeats": self.repeats,
            "cores": self.cores,
            "images": {kind: image.as_dict() for kind, image in self.images.items()},
            "cells": [cell.as_dict() for cell in self.cells],
            "baselines": {
                "loopback_pump": [p.as_dict() for p in self.pump],
                "library": [b.as_dict() for b in self.library],
                "qemu": [q.as_dict() for q in self.qemu],
            },
        }

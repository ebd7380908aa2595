"""How transfer time grows with the image: a few sizes, a least-squares line of seconds over GiB per codec."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdcomp.bench.fit import LineFit, fit_line
from mfdcomp.bench.images import ensure_image
from mfdcomp.bench.matrix import Say
from mfdcomp.bench.procs import ChildFailed
from mfdcomp.bench.transfer import CodecChoice, TransferRun, loopback, transfer
from mfdcomp.units import format_bytes

__all__ = ["ScalingResult", "run_scaling"]

GiB = 1 << 30


@dataclass
class ScalingResult:
    kind: str
    channels: int
    transport: str
    sizes: list[int]
    runs: dict[str, list[tuple[int, TransferRun]]] = field(default_factory=dict)  # label → (size, run)
    fits: dict[str, LineFit] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "channels": self.channels,
            "transport": self.transport,
            "sizes": self.sizes,
            "runs": {
                label: [{"size": size} | run.as_dict() for size, run in runs] for label, runs in self.runs.items()
            },
            "fits": {
                label: fit.as_dict() | {"slope_seconds_per_gib": fit.slope, "intercept_seconds": fit.intercept}
                for label, fit in self.fits.items()
            },
            "errors": self.errors,
        }


def run_scaling(
    codecs: list[CodecChoice],
    sizes: list[int],
    channels: int,
    kind: str,
    repeats: int,
    transport: str,
    cache: Path,
    workdir: Path,
    say: Say,
) -> ScalingResult:
    result = ScalingResult(kind, channels, transport, sizes, {codec.label: [] for codec in codecs})
    ends = loopback(transport, workdir)
    for size in sizes:
        say(f"scaling: image {kind} of {format_bytes(size)}")
        image = Path(ensure_image(cache, kind, size).path)
        for repeat in range(repeats):
            for codec in codecs:
                if codec.label in result.errors:
                    continue
                try:
                    run = transfer(image, codec, channels, ends, workdir)
                except ChildFailed as exc:
                    result.errors[codec.label] = f"{format_bytes(size)}: {exc}"
                    say(f"FAILED: scaling {codec.label} {format_bytes(size)}: {exc}")
                    continue
                result.runs[codec.label].append((size, run))
                say(
                    f"scaling {codec.label} ×{channels} {format_bytes(size)} run {repeat + 1}/{repeats}: "
                    f"{run.seconds:.3f} s ({run.gb_per_s:.2f} GB/s)"
                )
    for label, runs in result.runs.items():
        if len({size for size, _ in runs}) >= 2:
            result.fits[label] = fit_line([size / GiB for size, _ in runs], [run.seconds for _, run in runs])
        elif label not in result.errors:
            result.errors[label] = "fewer than two image sizes measured: no line to fit"
    return result

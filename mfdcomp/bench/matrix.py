"""The matrix: codec × channels × data kind, each cell beside its baselines measured in the same run.

For every kind, the image is made (or found in the cache), every codec's raw
library is timed on its pages, then for every channel count the repeats go
round: the loopback pump (under TLS too for --tls), then each codec's transfer followed by QEMU's own
migration of the same image with that codec (where QEMU and the harness are
here), so that a cell and its baselines see the same moment of a shared
machine. On this kind of VM one transfer's time can double from one minute to
the next (page cache, the host handing memory back): baselines taken in a
block after all the cells were seen 30-50 % faster or slower than the same
baselines taken between them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mfdcomp.bench.images import ensure_image
from mfdcomp.bench.library import measure_apart
from mfdcomp.bench.procs import ChildFailed
from mfdcomp.bench.qemu import add_qemu_run, qemu_baseline, qemu_unavailable
from mfdcomp.bench.results import Cell, LibraryBaseline, MatrixResult, PumpBaseline
from mfdcomp.bench.transfer import CodecChoice, Endpoints, add_run, loopback, pump_run
from mfdcomp.transport.tlscreds import make_creds

__all__ = ["MatrixConfig", "Say", "available_cores", "run_matrix"]

Say = Callable[[str], None]
"""Where progress lines go (stderr in the CLI)."""


@dataclass(frozen=True)
class MatrixConfig:
    codecs: list[CodecChoice]
    channels: list[int]
    kinds: list[str]
    size: int
    repeats: int
    transport: str
    qemu: bool = True
    tls: bool = False
    """TLS on every channel of both mfdcomp and QEMU (the harness's generated x509 credentials)."""


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def _library(result: MatrixResult, kind: str, codec: CodecChoice, image: Path, repeats: int, say: Say) -> None:
    baseline = LibraryBaseline(kind, codec)
    try:
        baseline.result = measure_apart(codec.name, codec.level, image, repeats)
        say(
            f"{kind} {codec.label} raw library, one thread: compress {baseline.result.compress_gb_per_s:.3f} GB/s, "
            f"decompress {baseline.result.decompress_gb_per_s:.3f} GB/s of guest RAM"
        )
    except RuntimeError as exc:
        baseline.not_run = str(exc)
        say(f"NOT RUN: {kind} {codec.label} raw-library reference: {exc}")
    result.library.append(baseline)


def _transfer(cell: Cell, image: Path, channels: int, ends: Endpoints, workdir: Path, where: str, say: Say) -> None:
    """One more run of ``cell``; a failed cell is not run again."""
    if cell.error is not None:
        return
    run = add_run(cell, image, channels, ends, workdir)
    if run is None:
        say(f"FAILED: {where} {cell.codec.label}: {cell.error}")
        return
    say(
        f"{where} {cell.codec.label}: {run.gb_per_s:.2f} GB/s, "
        f"{run.seconds:.3f} s, wire {run.wire_bytes / run.guest_bytes:.1%} of guest"
    )


def run_matrix(config: MatrixConfig, cache: Path, workdir: Path, say: Say) -> MatrixResult:
    transport = f"{config.transport}+TLS" if config.tls else config.transport
    result = MatrixResult(config.size, transport, config.repeats, available_cores())
    no_qemu = qemu_unavailable() if config.qemu else "--no-qemu was given"
    if no_qemu is not None:
        say(f"NOT RUN: QEMU baselines: {no_qemu}")
    ends = loopback(config.transport, workdir)
    if config.tls:
        ends = dataclasses.replace(ends, tls_creds=str(make_creds(workdir / "tls")))
        say("TLS on every channel: mfdcomp send/recv --tls-creds, QEMU with tls-creds-x509 (verify-peer=on)")
    total = len(config.kinds) * len(config.channels) * config.repeats * (len(config.codecs) + 1)
    step = 0
    for kind in config.kinds:
        say(f"image {kind}: {config.size >> 20} MiB (cached in {cache})")
        image = ensure_image(cache, kind, config.size)
        result.images[kind] = image
        path = Path(image.path)
        for codec in config.codecs:
            _library(result, kind, codec, path, config.repeats, say)
        for channels in config.channels:
            pump = PumpBaseline(kind, channels)
            cells = [Cell(kind, codec, channels) for codec in config.codecs]
            qemus = [qemu_baseline(image, codec, channels, no_qemu) for codec in config.codecs]
            for baseline in qemus:
                if baseline.not_run is not None and baseline.not_run != no_qemu:
                    say(f"NOT RUN: {kind} ×{channels} QEMU {baseline.codec.label}: {baseline.not_run}")
            for repeat in range(config.repeats):
                where = f"{kind} ×{channels} run {repeat + 1}/{config.repeats}"
                step += 1
                if pump.not_run is None:
                    try:
                        rate = pump_run(path, config.transport, channels, workdir, ends.tls_creds)
                        pump.gb_per_s_runs.append(rate)
                        say(f"[{step}/{total}] {where} {result.pump_name}: {rate:.2f} GB/s")
                    except ChildFailed as exc:
                        pump.not_run = str(exc)
                        say(f"NOT RUN: {where} {result.pump_name}: {exc}")
                for cell, baseline in zip(cells, qemus, strict=True):
                    step += 1
                    _transfer(cell, path, channels, ends, workdir, f"[{step}/{total}] {where}", say)
                    if baseline.not_run is not None:
                        continue
                    add_qemu_run(baseline, image, config.transport, tls=config.tls)
                    if baseline.not_run is None:
                        say(f"{where} QEMU {cell.codec.label}: {baseline.seconds_runs[-1]:.3f} s")
                    else:
                        say(f"NOT RUN: {where} QEMU {cell.codec.label}: {baseline.not_run}")
            result.pump.append(pump)
            result.cells.extend(cells)
            result.qemu.extend(qemus)
    return result

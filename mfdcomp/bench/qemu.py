"""QEMU 10's own multifd migration of the same image, through mfdcomp.qemu.harness, where QEMU is installed.

The harness generates the guest's RAM from the same mix and seed (so the
same bytes; its sha256 is checked against the bench's image) and migrates
between two paused TCG QEMUs over the bench's transport (a unix socket or
loopback TCP, as mfdcomp's cells), zero-page detection in the multifd
threads as mfdcomp's default. The time is QEMU's own ``total-time``
from the source's query-migrate (setup and the final stop included); the
CPU seconds of each QEMU are read from /proc around the migration, to set
beside mfdcomp's per-side CPU.
"""

from __future__ import annotations

from mfdcomp.bench.images import Image
from mfdcomp.bench.memory import warm_memory, warm_size
from mfdcomp.bench.results import QemuBaseline
from mfdcomp.bench.transfer import CodecChoice
from mfdcomp.errors import MfdcompError
from mfdcomp.qemu.harness import MigrationPair, MigrationSettings
from mfdcomp.qemu.locate import QemuNotFound, build
from mfdcomp.registry import default_registry

__all__ = ["add_qemu_run", "qemu_baseline", "qemu_unavailable"]

QEMU_BUILD = "10.0"


def qemu_unavailable() -> str | None:
    """Why QEMU baselines cannot run here, or None."""
    try:
        build(QEMU_BUILD).version()
    except QemuNotFound as exc:
        return str(exc)
    return None


def qemu_baseline(image: Image, codec: CodecChoice, channels: int, no_qemu: str | None = None) -> QemuBaseline:
    """An empty baseline for ``codec`` on ``image``, its ``not_run`` set where QEMU cannot run it.

    ``no_qemu`` is :func:`qemu_unavailable`'s answer (or another reason to leave QEMU out).
    """
    baseline = QemuBaseline(image.kind, codec, channels, guest_bytes=image.size)
    if default_registry().get(codec.name).info.qemu_flag is None:
        baseline.not_run = f"{codec.name} is an mfdcomp extension: QEMU has no such codec"
    elif no_qemu is not None:
        baseline.not_run = no_qemu
    return baseline


def add_qemu_run(baseline: QemuBaseline, image: Image, transport: str) -> None:
    """One more migration of ``image``'s bytes by QEMU itself over ``transport`` (unix, tcp), added to ``baseline``.

    On failure the baseline's runs are dropped and ``not_run`` says why; a
    baseline that is not run stays so.
    """
    if baseline.not_run is not None:
        return
    codec = baseline.codec
    settings = MigrationSettings(
        codec=codec.name, channels=baseline.channels, level=codec.level, zero_page_detection="multifd"
    )
    try:
        qemu = build(QEMU_BUILD)
        # A pair migrates once: a fresh one per run.
        with MigrationPair(
            qemu, qemu, settings, ram_size=image.size, mix=image.mix, seed=image.seed, timeout=600.0
        ) as pair:
            address = pair.listen(transport)
            warm_memory(warm_size(image.size))  # as before mfdcomp's runs: see mfdcomp/bench/memory.py
            migration = pair.migrate(address)
        if migration.image_sha256 != image.sha256:
            raise MfdcompError(f"QEMU's guest RAM is not the bench's {image.kind} image")
        if not migration.ram_equal:
            raise MfdcompError("the destination QEMU's RAM differs from the source's")
        if migration.total_time_ms is None:
            raise MfdcompError("QEMU did not report the migration's total-time")
    except MfdcompError as exc:
        baseline.seconds_runs.clear()
        baseline.cpu_runs.clear()
        baseline.not_run = f"QEMU {QEMU_BUILD} with {codec.label} failed: {exc}"
        return
    # "QEMU emulator version 10.0.2 (Debian ...)" → "10.0.2"
    baseline.version = migration.source_version.partition("version ")[2].split(" ")[0]
    baseline.seconds_runs.append(migration.total_time_ms / 1000)
    if migration.source_cpu_seconds is not None and migration.destination_cpu_seconds is not None:
        baseline.cpu_runs.append((migration.source_cpu_seconds, migration.destination_cpu_seconds))

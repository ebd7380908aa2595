"""QEMU 10's own multifd migration of the same image, through mfdcomp.qemu.harness, where QEMU is installed.

none, zlib and zstd run on Debian's QEMU; qpl, uadk and qatzip on QEMU 10.0 built with them
(``ci/system/qemu-hw.sh``), with QEMU's own software paths on a host without the accelerators.

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
from mfdcomp.qemu.harness import HW, HW_CODECS, MigrationPair, MigrationSettings
from mfdcomp.qemu.locate import QemuNotFound, build
from mfdcomp.registry import default_registry

__all__ = ["add_qemu_run", "qemu_baseline", "qemu_unavailable"]

QEMU_BUILD = "10.0"
# Debian's QEMU has no qpl, uadk or qatzip: their baselines run on the build that has them, through
# QEMU's own software paths where this host has no accelerator (libqpl software, QATzip's backup).
HW_ONLY_CODECS = frozenset(codec for codec, _ in HW_CODECS)


def build_for(codec: str) -> str:
    """The QEMU build whose migration is ``codec``'s baseline."""
    return HW if codec in HW_ONLY_CODECS else QEMU_BUILD


def qemu_unavailable(name: str = QEMU_BUILD) -> str | None:
    """Why QEMU baselines on build ``name`` cannot run here, or None."""
    try:
        build(name).version()
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
    elif build_for(codec.name) != QEMU_BUILD:
        baseline.not_run = qemu_unavailable(build_for(codec.name))
    return baseline


def add_qemu_run(baseline: QemuBaseline, image: Image, transport: str, tls: bool = False) -> None:
    """One more migration of ``image``'s bytes by QEMU itself over ``transport`` (unix, tcp), added to ``baseline``.

    On failure the baseline's runs are dropped and ``not_run`` says why; a
    baseline that is not run stays so.
    """
    if baseline.not_run is not None:
        return
    codec = baseline.codec
    settings = MigrationSettings(
        codec=codec.name, channels=baseline.channels, level=codec.level, zero_page_detection="multifd", tls=tls
    )
    name = build_for(codec.name)
    try:
        qemu = build(name)
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
        baseline.not_run = f"QEMU {name} with {codec.label} failed: {exc}"
        return
    # "QEMU emulator version 10.0.2 (Debian ...)" → "10.0.2"
    baseline.version = migration.source_version.partition("version ")[2].split(" ")[0]
    if name != QEMU_BUILD:
        baseline.version += f" ({name})"
    baseline.seconds_runs.append(migration.total_time_ms / 1000)
    if migration.source_cpu_seconds is not None and migration.destination_cpu_seconds is not None:
        baseline.cpu_runs.append((migration.source_cpu_seconds, migration.destination_cpu_seconds))

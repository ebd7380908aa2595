"""One measured transfer: `mfdcomp recv` and `mfdcomp send --json` as two processes; and the loopback pump."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import mfdcomp
from mfdcomp.bench.memory import warm_memory, warm_size
from mfdcomp.bench.procs import MFDCOMP, Child, ChildFailed, Finished
from mfdcomp.errors import MfdcompError
from mfdcomp.registry import default_registry

__all__ = [
    "PUMP_SCRIPT",
    "CodecChoice",
    "Endpoints",
    "Measured",
    "TransferRun",
    "add_run",
    "loopback",
    "median_best",
    "parse_codecs",
    "pump_run",
    "transfer",
]

# The Python loopback limit lives beside the package in a source checkout.
PUMP_SCRIPT = Path(mfdcomp.__file__).resolve().parent.parent / "benchmarks" / "loopback_pump.py"


@dataclass(frozen=True)
class CodecChoice:
    """A codec and its level (None for codecs without levels)."""

    name: str
    level: int | None = None

    @property
    def label(self) -> str:
        """``zstd-1``, ``none``: how tables and targets name it."""
        return self.name if self.level is None else f"{self.name}-{self.level}"

    def send_args(self) -> list[str]:
        args = ["--multifd-compression", self.name]
        if self.level is not None:
            args += [f"--multifd-{self.name}-level", str(self.level)]
        return args


def parse_codecs(text: str) -> list[CodecChoice]:
    """``none,zstd,zlib:6``: registered codecs, each at its default level unless ``:LEVEL`` is given."""
    registry = default_registry()
    choices: list[CodecChoice] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, level_text = item.partition(":")
        codec = registry.get(name)
        try:
            level = codec.info.check_level(int(level_text) if level_text else None)
        except ValueError:
            raise MfdcompError(f"codec level must be a number: {item!r}") from None
        choices.append(CodecChoice(name, level))
    if not choices:
        raise MfdcompError("no codec given")
    return choices


def median_best(values: Sequence[float], *, higher_is_better: bool = True) -> tuple[float, float]:
    """(median, best) of ``values``."""
    return statistics.median(values), (max(values) if higher_is_better else min(values))


@dataclass(frozen=True)
class TransferRun:
    """One transfer as both ends reported it, with each process's peak RSS."""

    seconds: float  # the sender's transfer_seconds: connect to the last packet written
    session_seconds: float  # the sender's "seconds": connect to the verified end, what the user waits for
    guest_bytes: int
    wire_bytes: int
    payload_bytes: int
    normal_pages: int
    zero_pages: int
    packets: int
    send_cpu_seconds: float  # transfer_cpu_seconds of each end
    recv_cpu_seconds: float
    send_process_cpu_seconds: float  # the whole process, verification and start-up included
    recv_process_cpu_seconds: float
    send_peak_rss: int
    recv_peak_rss: int
    paths: dict[str, int] = field(default_factory=dict)
    implementations: dict[str, int] = field(default_factory=dict)  # packets by library (isal, zlib, libqpl)

    @property
    def gb_per_s(self) -> float:
        """GB/s of guest RAM (10**9 bytes)."""
        return self.guest_bytes / self.seconds / 1e9

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"gb_per_s": self.gb_per_s}


@dataclass(frozen=True)
class Endpoints:
    """Where the two ends run: the receiver's listening address and each end's command prefix."""

    listen: str
    recv_prefix: tuple[str, ...] = ()
    send_prefix: tuple[str, ...] = ()
    tls_creds: str | None = None
    """QEMU-layout x509 directory: both ends run with --tls-creds (bench --tls)."""


def loopback(transport: str, workdir: Path) -> Endpoints:
    """Where the receiver listens for ``transport``: tcp (the default, as between hosts) or unix."""
    if transport == "unix":
        return Endpoints(f"unix:{workdir / 'bench.sock'}")
    return Endpoints("tcp:127.0.0.1:0")


def _timeout(size: int) -> float:
    # Generous: the slowest codec on one channel (per-page deflate of random pages) runs at ~50 MB/s.
    return 120 + size / 10e6


def transfer(image: Path, codec: CodecChoice, channels: int, ends: Endpoints, workdir: Path) -> TransferRun:
    """Send ``image`` once from one process to another; the receiver's copy is deleted afterwards."""
    size = image.stat().st_size
    target = workdir / "target.img"
    if ends.listen.startswith("unix:"):
        Path(ends.listen.removeprefix("unix:")).unlink(missing_ok=True)
    tls = ["--tls-creds", ends.tls_creds] if ends.tls_creds is not None else []
    recv_argv = [*ends.recv_prefix, *MFDCOMP, "recv", "--listen", ends.listen, "--out", str(target), "--json", *tls]
    try:
        with Child(recv_argv, "mfdcomp recv") as recv:
            ready = recv.stderr_line("listening on ", timeout=60)
            address = ready.rsplit("listening on ", 1)[1].strip()
            send_argv = [
                *ends.send_prefix,
                *MFDCOMP,
                "send",
                str(image),
                "--to",
                address,
                "--multifd-channels",
                str(channels),
                *codec.send_args(),
                "--json",
                *tls,
            ]
            warm_memory(warm_size(size))  # as before QEMU's runs: see mfdcomp/bench/memory.py
            with Child(send_argv, "mfdcomp send") as send:
                sent = send.finish(_timeout(size), check=False)
            # A failed sender usually tells only of a broken connection: the receiver's own words are wanted too.
            problems = [sent.failure(send.name)]
            try:
                received = recv.finish(60 if problems == [None] else 15, check=False)
                problems.append(received.failure(recv.name))
            except ChildFailed as exc:
                problems.append(str(exc))
    finally:
        target.unlink(missing_ok=True)
    if any(problems):
        raise ChildFailed("; ".join(filter(None, problems)))
    try:
        return _run_of(json.loads(sent.stdout), json.loads(received.stdout), sent, received)
    except (ValueError, KeyError) as exc:
        raise ChildFailed(f"unexpected JSON from mfdcomp send or recv: {exc!r}") from exc


class Measured(Protocol):
    """A cell of runs: the matrix's and the link sweep's."""

    codec: CodecChoice
    runs: list[TransferRun]
    error: str | None


def add_run(cell: Measured, image: Path, channels: int, ends: Endpoints, workdir: Path) -> TransferRun | None:
    """One more transfer for ``cell``, added to its runs; None when it failed, ``cell.error`` saying why.

    Call only while ``cell.error`` is None: a failed cell is not run again.
    """
    try:
        run = transfer(image, cell.codec, channels, ends, workdir)
    except ChildFailed as exc:
        cell.error = str(exc)
        return None
    cell.runs.append(run)
    return run


def _run_of(summary: dict[str, Any], destination: dict[str, Any], sent: Finished, received: Finished) -> TransferRun:
    if not (summary["ok"] and destination["ok"]):
        raise ChildFailed("the destination's image differs from the source's")
    if summary["peak_rss_bytes"] is None or destination["peak_rss_bytes"] is None:
        raise ChildFailed("mfdcomp send or recv could not read its peak RSS (no VmHWM in /proc/self/status)")
    totals = summary["totals"]
    return TransferRun(
        seconds=summary["transfer_seconds"],
        session_seconds=summary["seconds"],
        guest_bytes=summary["guest_bytes"],
        wire_bytes=totals["wire_bytes"],
        payload_bytes=totals["payload_bytes"],
        normal_pages=totals["normal_pages"],
        zero_pages=totals["zero_pages"],
        packets=totals["packets"],
        send_cpu_seconds=summary["transfer_cpu_seconds"],
        recv_cpu_seconds=destination["transfer_cpu_seconds"],
        send_process_cpu_seconds=sent.cpu_seconds,
        recv_process_cpu_seconds=received.cpu_seconds,
        send_peak_rss=summary["peak_rss_bytes"],
        recv_peak_rss=destination["peak_rss_bytes"],
        paths=dict(totals["paths"]),
        implementations=dict(totals.get("implementations", {})),
    )


def pump_run(image: Path, transport: str, channels: int, workdir: Path, tls_creds: str | None = None) -> float:
    """GB/s of the plain Python pump moving the image's pages over ``channels`` connections into a fresh target.

    The pump makes its target in a temporary folder: under ``workdir``, like the engine's. With
    ``tls_creds`` every connection is under TLS (Python's ``ssl``), as the transfers it is compared to.
    """
    if not PUMP_SCRIPT.is_file():
        raise ChildFailed(f"{PUMP_SCRIPT} is not there (the pump comes with a source checkout)")
    argv = [MFDCOMP[0], str(PUMP_SCRIPT), "--image", str(image), "--transport", transport]
    argv += ["--connections", str(channels), "--repeats", "1", "--json"]
    argv += ["--tls-creds", tls_creds] if tls_creds is not None else []
    with Child(argv, "loopback_pump.py", env=os.environ | {"TMPDIR": str(workdir)}) as pump:
        done = pump.finish(_timeout(image.stat().st_size))
    try:
        rate: float = json.loads(done.stdout)["gb_per_s"]
    except (ValueError, KeyError) as exc:
        raise ChildFailed(f"unexpected JSON from loopback_pump.py: {exc!r}") from exc
    return rate

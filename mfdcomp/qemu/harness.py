"""Two real QEMU processes migrating a deterministic guest, optionally through the tap.

The recipe (spec §14): TCG, no devices, guest RAM in a ``memory-backend-file``
with ``share=on`` in /dev/shm, so the RAM is a file to fill before and hash
after. The source's file holds a generated image (:func:`mfdcomp.imagegen.
generate_image`) and the source stays paused (``-S``), so its RAM is exactly
the image; the destination starts with ``-incoming defer -S`` on a fresh
all-zero file, so pages never sent are zero and the firmware never runs.
Both sides get the multifd capability and the same parameters; the source's
``max-bandwidth`` is raised from QEMU's 128 MiB/s default.

:class:`MigrationPair` owns both processes and the folder of their files and
removes them on every path. :func:`run_case` is one row of the matrix that
the tests and ``mfdcomp qemu-check`` run: a pair, the tap between them
(recording, and transcoding when asked), QEMU's own timing and the checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from mfdcomp.errors import MfdcompError
from mfdcomp.imagegen import DEFAULT_MIX, generate_image, parse_mix
from mfdcomp.procinfo import cpu_seconds
from mfdcomp.qemu.locate import QemuBuild, QemuUnavailable, build
from mfdcomp.qemu.qmp import QMPClient, QMPError
from mfdcomp.qemu.replay import replay_capture
from mfdcomp.qemu.tap import Tap, TapSummary
from mfdcomp.transport.tlscreds import make_creds

MiB = 1 << 20
DEFAULT_RAM_SIZE = 128 * MiB
SHM = "/dev/shm"
BLOCK = "ram0"
# QEMU's default max-bandwidth is 128 MiB/s; a test must not wait on that.
MAX_BANDWIDTH = 16 << 30
TLS_OBJECT = "tls0"  # the id of both QEMUs' tls-creds-x509 object
_POLL = 0.05


class MigrationError(MfdcompError):
    """A migration between two QEMUs failed, or did not finish in time."""


def _older(a: QemuBuild, b: QemuBuild) -> QemuBuild:
    def version(x: QemuBuild) -> tuple[int, ...]:
        # "10.0", "7.2", "10.0hw": the build's QEMU version leads its name.
        return tuple(int(part) for part in re.findall(r"\d+", x.name)[:2])

    return a if version(a) <= version(b) else b


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            sha.update(chunk)
    return sha.hexdigest()


@dataclass(frozen=True)
class MigrationSettings:
    """Multifd settings of one side; ``zero_page_detection`` None keeps the machine type's default."""

    codec: str = "none"
    channels: int = 2
    level: int | None = None
    zero_page_detection: str | None = None
    tls: bool = False
    """TLS on every channel: a ``tls-creds-x509`` object ``tls0`` over the pair's generated credentials."""

    def parameters(self, qemu: QemuBuild) -> dict[str, Any]:
        params: dict[str, Any] = {"multifd-channels": self.channels, "multifd-compression": self.codec}
        if self.tls:
            params["tls-creds"] = TLS_OBJECT
        if self.level is not None:
            params[f"multifd-{self.codec}-level"] = self.level
        if self.zero_page_detection is not None and qemu.zero_page_detection:
            params["zero-page-detection"] = self.zero_page_detection
        return params


class QemuProcess:
    """One QEMU (paused, TCG, RAM in ``ram_path``) and its QMP monitor; :meth:`stop` ends it."""

    def __init__(
        self,
        qemu: QemuBuild,
        role: str,
        workdir: Path,
        *,
        machine: str,
        ram_path: Path,
        ram_size: int,
        incoming: bool,
        timeout: float,
        extra: Sequence[str] = (),
    ) -> None:
        self.qemu = qemu
        self.role = role
        self.timeout = timeout
        self.log_path = workdir / f"{role}.log"
        self.qmp_path = workdir / f"{role}.qmp"
        self.command = qemu.command(
            "-machine",
            f"{machine},memory-backend={BLOCK}",
            "-accel",
            "tcg",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-m",
            f"{ram_size // MiB}M",
            "-object",
            f"memory-backend-file,id={BLOCK},size={ram_size},mem-path={ram_path},share=on",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
            "-S",
            *(["-incoming", "defer"] if incoming else []),
            *extra,
        )
        # A run killed before it could stop QEMU (a CI timeout, say) takes QEMU with it:
        # util-linux's setpriv sets the parent-death signal and execs QEMU.
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            self.command = [setpriv, "--pdeathsig", "KILL", "--", *self.command]
        self.process: subprocess.Popen[bytes] | None = None
        self._qmp: QMPClient | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.qemu.environment(),
                start_new_session=True,  # a terminal's Ctrl-C reaches mfdcomp, which then stops QEMU itself
            )
        except OSError as exc:
            raise MigrationError(f"cannot start QEMU {self.qemu.name} ({self.qemu.binary}): {exc}") from exc
        try:
            self._qmp = QMPClient.connect(str(self.qmp_path), timeout=self.timeout, alive=self.alive)
        except QMPError as exc:
            raise MigrationError(f"{self.role} QEMU {self.qemu.name} did not start: {exc}{self.log_tail()}") from exc

    @property
    def qmp(self) -> QMPClient:
        if self._qmp is None:
            raise MigrationError(f"{self.role} QEMU is not running")
        return self._qmp

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float | None:
        """CPU seconds (user + system, all threads) the process has used so far; None if it is not running."""
        return None if self.process is None else cpu_seconds(self.process.pid)

    def log_tail(self, lines: int = 8) -> str:
        """QEMU's last output lines, as a suffix for an error message."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        exit_status = "" if self.process is None or self.process.poll() is None else f" (exit {self.process.poll()})"
        return f"\n  {self.role} QEMU{exit_status} said: " + "\n    ".join(text) if text else exit_status

    def stop(self) -> None:
        """Quit through QMP, else kill; always reaps the process."""
        if self._qmp is not None:
            if self.alive():
                # QEMU may close the monitor before it answers; the wait below decides.
                with contextlib.suppress(QMPError):
                    self.qmp.execute("quit", timeout=5)
            self._qmp.close()
            self._qmp = None
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class MigrationResult:
    """QEMU's view of one migration (the source's query-migrate) and the RAM files' digests."""

    source_version: str
    destination_version: str
    machine: str
    zero_page_detection: str | None
    """The source's mode as QEMU reports it (None: QEMU 7.2 has no such parameter)."""
    status: str
    total_time_ms: int | None
    downtime_ms: int | None
    setup_time_ms: int | None
    ram: dict[str, Any]
    wall_seconds: float
    source_cpu_seconds: float | None
    """CPU seconds of the source QEMU from the migrate command until both ends completed (None: /proc unreadable)."""
    destination_cpu_seconds: float | None
    image_sha256: str
    source_sha256: str
    destination_sha256: str

    @property
    def ram_equal(self) -> bool:
        return self.destination_sha256 == self.source_sha256 == self.image_sha256


def _spent(before: float | None, after: float | None) -> float | None:
    # Both are whole clock ticks: rounding drops the float noise of the difference.
    return None if before is None or after is None else round(after - before, 6)


class MigrationPair:
    """A source and a destination QEMU with their RAM files in a private folder under /dev/shm.

    Use as a context manager: entering generates the image and starts and
    configures both QEMUs, leaving stops them and removes the folder, also
    when anything failed. ``machine`` defaults to the older build's, which
    both sides then use.
    """

    def __init__(
        self,
        source: QemuBuild,
        destination: QemuBuild,
        source_settings: MigrationSettings,
        destination_settings: MigrationSettings | None = None,
        *,
        ram_size: int = DEFAULT_RAM_SIZE,
        mix: str = DEFAULT_MIX,
        seed: int = 1,
        machine: str | None = None,
        timeout: float = 120.0,
        workdir_root: str = SHM,
    ) -> None:
        self.source_build = source
        self.destination_build = destination
        self.source_settings = source_settings
        self.destination_settings = destination_settings or source_settings
        self.ram_size = ram_size
        self.mix = mix
        self.seed = seed
        self.machine = machine or _older(source, destination).machine
        self.timeout = timeout
        self.workdir_root = workdir_root
        self.workdir: Path | None = None
        self.image_sha256 = ""
        self.incoming: str | None = None
        self.processes: list[QemuProcess] = []  # the ones started, to stop
        self._source: QemuProcess | None = None
        self._destination: QemuProcess | None = None
        self._versions = ("", "")
        self.tls_creds: Path | None = None
        """The generated x509 directory (QEMU's layout) when either side uses TLS; a tap between uses it too."""

    def __enter__(self) -> MigrationPair:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def source(self) -> QemuProcess:
        if self._source is None:
            raise MigrationError("the source QEMU is not running")
        return self._source

    @property
    def destination(self) -> QemuProcess:
        if self._destination is None:
            raise MigrationError("the destination QEMU is not running")
        return self._destination

    def open(self) -> None:
        self._versions = (self.source_build.version(), self.destination_build.version())
        self.workdir = Path(tempfile.mkdtemp(prefix="mfdcomp-qemu-", dir=self.workdir_root))
        src_ram, dst_ram = self.workdir / "src.ram", self.workdir / "dst.ram"
        self.image_sha256 = generate_image(src_ram, self.ram_size, parse_mix(self.mix), self.seed).sha256
        if self.source_settings.tls or self.destination_settings.tls:
            self.tls_creds = make_creds(self.workdir / "tls")
        with dst_ram.open("wb") as f:
            f.truncate(self.ram_size)  # sparse: all zero, as a destination's RAM must start
        self._destination = self._start("destination", self.destination_build, dst_ram, self.destination_settings)
        self._source = self._start("source", self.source_build, src_ram, self.source_settings)
        self._execute(self._source, "migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})

    def _start(self, role: str, qemu: QemuBuild, ram: Path, settings: MigrationSettings) -> QemuProcess:
        assert self.workdir is not None
        extra: list[str] = []
        if settings.tls:
            assert self.tls_creds is not None
            endpoint = "server" if role == "destination" else "client"
            extra = [
                "-object",
                f"tls-creds-x509,id={TLS_OBJECT},dir={self.tls_creds},endpoint={endpoint},verify-peer=on",
            ]
        process = QemuProcess(
            qemu,
            role,
            self.workdir,
            machine=self.machine,
            ram_path=ram,
            ram_size=self.ram_size,
            incoming=role == "destination",
            timeout=self.timeout,
            extra=extra,
        )
        self.processes.append(process)
        process.start()
        self._execute(process, "migrate-set-capabilities", {"capabilities": [{"capability": "multifd", "state": True}]})
        self._execute(process, "migrate-set-parameters", settings.parameters(qemu))
        return process

    def _execute(self, process: QemuProcess, command: str, arguments: dict[str, Any] | None = None) -> Any:
        try:
            return process.qmp.execute(command, arguments)
        except QMPError as exc:
            raise MigrationError(f"{process.role} QEMU {process.qemu.name}: {exc}{process.log_tail()}") from exc

    def listen(self, transport: str = "tcp") -> str:
        """Start the destination's incoming side (once); its address.

        ``tcp``: a free loopback port, ``tcp:HOST:PORT``; ``unix``: a socket in the pair's folder.
        """
        if transport not in ("tcp", "unix"):
            raise ValueError(f"transport must be tcp or unix, got {transport!r}")
        if self.incoming is not None:
            return self.incoming
        if transport == "unix":
            assert self.workdir is not None
            self.incoming = f"unix:{self.workdir / 'incoming.sock'}"
            self._execute(self.destination, "migrate-incoming", {"uri": self.incoming})
        else:
            self._execute(self.destination, "migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
            info = self._execute(self.destination, "query-migrate")
            addresses = info.get("socket-address") or []
            inet = [a for a in addresses if a.get("type") == "inet"]
            if not inet:
                raise MigrationError(f"the destination does not say where it listens: {info}")
            self.incoming = f"tcp:{inet[0]['host']}:{inet[0]['port']}"
        return self.incoming

    def migrate(self, uri: str | None = None) -> MigrationResult:
        """Migrate to ``uri`` (a tap's address) or straight to the destination; wait until both completed."""
        target = uri or self.listen()
        ends = (self.source, self.destination)
        cpu_before = [end.cpu_seconds() for end in ends]
        started = time.monotonic()
        deadline = started + self.timeout
        self._execute(self.source, "migrate", {"uri": target})
        info = self._wait(self.source, deadline)
        self._wait(self.destination, deadline)
        wall = time.monotonic() - started
        cpu = [_spent(before, end.cpu_seconds()) for before, end in zip(cpu_before, ends, strict=True)]
        parameters = self._execute(self.source, "query-migrate-parameters")
        assert self.workdir is not None
        return MigrationResult(
            source_version=self._versions[0],
            destination_version=self._versions[1],
            machine=self.machine,
            zero_page_detection=parameters.get("zero-page-detection"),
            status=info["status"],
            total_time_ms=info.get("total-time"),
            downtime_ms=info.get("downtime"),
            setup_time_ms=info.get("setup-time"),
            ram=info.get("ram", {}),
            wall_seconds=wall,
            source_cpu_seconds=cpu[0],
            destination_cpu_seconds=cpu[1],
            image_sha256=self.image_sha256,
            source_sha256=file_sha256(self.workdir / "src.ram"),
            destination_sha256=file_sha256(self.workdir / "dst.ram"),
        )

    def _wait(self, process: QemuProcess, deadline: float) -> dict[str, Any]:
        while True:
            info: dict[str, Any] = self._execute(process, "query-migrate")
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                raise MigrationError(self._failure(process, f"{status}: {info.get('error-desc', 'no error-desc')}"))
            if time.monotonic() > deadline:
                raise MigrationError(self._failure(process, f"still {status} after {self.timeout:.0f} s"))
            time.sleep(_POLL)

    def _failure(self, process: QemuProcess, what: str) -> str:
        text = f"migration {process.role} side {what}"
        for other in self.processes:
            if other is not process and other.alive():
                try:
                    # Generous: a loaded machine can keep QEMU from answering at once, and this is the reason.
                    peer = other.qmp.execute("query-migrate", timeout=30)
                    text += f"; {other.role}: {peer.get('status')} {peer.get('error-desc', '')}".rstrip()
                except QMPError as exc:
                    text += f"; {other.role}: {exc}"
        return text + "".join(p.log_tail() for p in self.processes)

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        self.processes = []
        self._source = self._destination = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


@dataclass(frozen=True)
class Case:
    """One row of the matrix: builds, the source's codec, what the tap transcodes to, channels, zero pages."""

    codec: str = "none"
    transcode: str | None = None
    channels: int = 2
    zero_page_detection: str | None = None
    source: str = "10.0"
    destination: str = "10.0"
    ram_size: int = DEFAULT_RAM_SIZE
    level: int | None = None
    """The source's ``multifd-CODEC-level``; None keeps QEMU's default."""
    tls: bool = False
    """Both QEMUs with TLS; the tap terminates it on each side."""

    @property
    def destination_codec(self) -> str:
        return self.transcode or self.codec

    @property
    def name(self) -> str:
        codec = self.codec if self.level is None else f"{self.codec}-{self.level}"
        codecs = codec if self.transcode is None else f"{codec}>{self.transcode}"
        zero = self.zero_page_detection or "default"
        tls = " tls" if self.tls else ""
        return f"{self.source}>{self.destination} {codecs} {self.channels}ch zp={zero}{tls}"

    @property
    def test_id(self) -> str:
        return self.name.replace(" ", "-").replace(">", "to")


@dataclass
class CaseResult:
    """What :func:`run_case` found; ``ok`` only when QEMU, the RAM and every replay agree.

    ``unavailable`` is the install script's reason when a build of the row
    cannot run on this host at all: the row is then not run (verdict N/A).
    """

    case: Case
    seconds: float
    migration: MigrationResult | None = None
    tap: TapSummary | None = None
    replay_sha256: str | None = None
    transcoded_replay_sha256: str | None = None
    problems: list[str] = field(default_factory=list)
    unavailable: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        if self.unavailable is not None:
            return "N/A"
        return "PASS" if self.ok else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": asdict(self.case) | {"name": self.case.name},
            "verdict": self.verdict,
            "problems": self.problems,
            "unavailable": self.unavailable,
            "seconds": round(self.seconds, 3),
            "qemu": asdict(self.migration) | {"ram_equal": self.migration.ram_equal} if self.migration else None,
            "tap": self.tap.as_dict() if self.tap else None,
            "replay_sha256": self.replay_sha256,
            "transcoded_replay_sha256": self.transcoded_replay_sha256,
        }


def run_case(case: Case, *, timeout: float = 120.0, scratch_root: str = SHM) -> CaseResult:
    """Migrate ``case`` through a recording tap; problems are collected, not raised.

    Checked: the migration completed on both sides, the destination's RAM
    equals the source's and the image, the tap's recording of what the source
    sent replays to the image, and (transcoding) so does the recording of what
    the destination received.
    """
    started = time.monotonic()
    result = CaseResult(case, seconds=0.0)
    try:
        _run(case, result, timeout, scratch_root)
    except QemuUnavailable as exc:
        result.unavailable = str(exc)
    except MfdcompError as exc:
        result.problems.append(str(exc))
    result.seconds = time.monotonic() - started
    return result


def _run(case: Case, result: CaseResult, timeout: float, scratch_root: str) -> None:
    source, destination = build(case.source), build(case.destination)
    common = MigrationSettings(channels=case.channels, zero_page_detection=case.zero_page_detection, tls=case.tls)
    source_settings = dataclasses.replace(common, codec=case.codec, level=case.level)
    destination_settings = dataclasses.replace(common, codec=case.destination_codec)
    with (
        tempfile.TemporaryDirectory(prefix="mfdcomp-tap-", dir=scratch_root) as scratch,
        MigrationPair(
            source, destination, source_settings, destination_settings, ram_size=case.ram_size, timeout=timeout
        ) as pair,
    ):
        record = Path(scratch)
        with Tap(
            "tcp:127.0.0.1:0", pair.listen(), record=record, transcode=case.transcode, tls_creds=pair.tls_creds
        ) as tap:
            via = tap.start()
            try:
                result.migration = pair.migrate(via)
            except MigrationError as exc:
                # Both sides of the story: a packet the tap refused breaks QEMU's connection, and
                # a destination that refuses the tap's bytes shows up at the tap as a reset.
                if tap.error:
                    result.problems.append(f"tap: {tap.error}")
                result.problems.append(str(exc))
                result.tap = tap.close()
                return
            if not tap.finished(timeout=30):
                result.problems.append("tap: the connections were still open 30 s after the migration completed")
            result.tap = tap.close()
        if result.tap.error:
            result.problems.append(f"tap: {result.tap.error}")
            return
        _check(result, record)


def _check(result: CaseResult, record: Path) -> None:
    migration, tap = result.migration, result.tap
    assert migration is not None and tap is not None
    if migration.source_sha256 != migration.image_sha256:
        result.problems.append(f"source RAM {migration.source_sha256} is not the image {migration.image_sha256}")
    if migration.destination_sha256 != migration.source_sha256:
        result.problems.append(
            f"destination RAM {migration.destination_sha256} differs from the source's {migration.source_sha256}"
        )
    if len(tap.multifd) != result.case.channels:
        result.problems.append(f"the tap saw {len(tap.multifd)} multifd channels, not {result.case.channels}")
    if migration.zero_page_detection is not None:
        _check_counters(result, migration, tap)
    result.replay_sha256 = replay_capture(record, block=BLOCK)
    if result.replay_sha256 != migration.image_sha256:
        result.problems.append(f"the replay of what the source sent is {result.replay_sha256}, not the image")
    if result.case.transcode is not None:
        result.transcoded_replay_sha256 = replay_capture(record / "transcoded", block=BLOCK)
        if result.transcoded_replay_sha256 != migration.image_sha256:
            result.problems.append(
                f"the replay of what the destination got is {result.transcoded_replay_sha256}, not the image"
            )


def _check_counters(result: CaseResult, migration: MigrationResult, tap: TapSummary) -> None:
    """A 9.0+ source counts what its multifd channels carried exactly as the tap must have parsed it."""
    totals = tap.totals()
    in_multifd = migration.ram.get("duplicate", 0) if migration.zero_page_detection == "multifd" else 0
    for what, qemu, seen in (
        ("normal pages", migration.ram.get("normal"), totals["normal_pages"]),
        ("zero pages in multifd packets", in_multifd, totals["zero_pages"]),
        ("multifd bytes", migration.ram.get("multifd-bytes"), totals["multifd_bytes_in"]),
    ):
        if qemu != seen:
            result.problems.append(f"the source QEMU counts {qemu} {what}, the tap parsed {seen}")


CODECS = ("none", "zlib", "zstd")
ZERO_PAGE_MODES = ("multifd", "legacy")
TRANSCODINGS = (
    ("none", "zlib"),
    ("none", "zstd"),
    ("zstd", "zlib"),
    ("zlib", "zstd"),
    *((codec, codec) for codec in CODECS),
)


# Codecs only QEMU built with them has (ci/system/qemu-hw.sh, build "10.0hw"): qatzip at both ends of its levels.
HW = "10.0hw"
HW_CODECS: tuple[tuple[str, int | None], ...] = (("qpl", None), ("uadk", None), ("qatzip", 1), ("qatzip", 9))
HW_TRANSCODINGS = (
    ("none", "qpl"),
    ("none", "qatzip"),
    ("none", "uadk"),
    ("qpl", "zstd"),
    ("qatzip", "qpl"),
    ("uadk", "none"),
)


def hw_matrix() -> list[Case]:
    """The build with qpl, uadk and qatzip: each of them × zero-page mode × 2 and 4 channels, the tap
    transcoding into and out of them, and that build against the system's 10.0 both ways."""
    cases = [
        Case(codec=codec, level=level, channels=channels, zero_page_detection=zero, source=HW, destination=HW)
        for codec, level in HW_CODECS
        for zero in ZERO_PAGE_MODES
        for channels in (2, 4)
    ]
    cases += [
        Case(codec=a, transcode=b, zero_page_detection="multifd", source=HW, destination=HW) for a, b in HW_TRANSCODINGS
    ]
    cases += [Case(codec=codec, source=a, destination=b) for codec in CODECS for a, b in ((HW, "10.0"), ("10.0", HW))]
    return cases


def full_matrix() -> list[Case]:
    """Every codec × zero-page mode × 2 and 4 channels; every transcoding; 7.2 ↔ 10.0 both ways, also
    transcoded; and :func:`hw_matrix`."""
    cases = [
        Case(codec=codec, channels=channels, zero_page_detection=zero)
        for codec in CODECS
        for zero in ZERO_PAGE_MODES
        for channels in (2, 4)
    ]
    cases += [Case(codec=a, transcode=b, zero_page_detection="multifd") for a, b in TRANSCODINGS]
    cases += [
        Case(codec=codec, source=a, destination=b) for codec in CODECS for a, b in (("7.2", "10.0"), ("10.0", "7.2"))
    ]
    # 7.2's stale header fields and data-carrying SYNC packets through the transcoder, both ways.
    cases += [
        Case(codec="none", transcode="zstd", source="7.2", destination="10.0"),
        Case(codec="zstd", transcode="zlib", source="10.0", destination="7.2"),
    ]
    return cases + tls_matrix() + hw_matrix()


def quick_matrix() -> list[Case]:
    """A subset with each codec, each zero-page mode, 2 and 4 channels, transcoding and 7.2 both ways."""
    return [
        Case(codec="none", channels=4, zero_page_detection="multifd"),
        Case(codec="zlib", channels=2, zero_page_detection="legacy"),
        Case(codec="zstd", channels=4, zero_page_detection="multifd"),
        Case(codec="none", transcode="zstd", zero_page_detection="multifd"),
        Case(codec="zstd", transcode="zlib", zero_page_detection="legacy"),
        Case(codec="zlib", source="7.2", destination="10.0"),
        Case(codec="zstd", source="10.0", destination="7.2"),
        Case(codec="qpl", channels=4, zero_page_detection="multifd", source=HW, destination=HW),
        Case(codec="qatzip", level=9, zero_page_detection="legacy", source=HW, destination=HW),
        Case(codec="uadk", transcode="none", source=HW, destination=HW),
        Case(codec="none", transcode="qpl", source=HW, destination=HW),
        Case(codec="zstd", source=HW, destination="10.0"),
        *tls_matrix(),
    ]


def tls_matrix() -> list[Case]:
    """TLS migrations (both QEMUs with tls-creds-x509): decoded through the tap, and transcoded."""
    return [
        Case(codec="none", channels=2, zero_page_detection="multifd", tls=True),
        Case(codec="zstd", transcode="zlib", channels=4, tls=True),
    ]

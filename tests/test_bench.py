"""`mfdcomp bench`: a tiny matrix end to end; targets, the line fit and the link payoff as pure functions."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mfdcomp.bench.fit import fit_line
from mfdcomp.bench.images import Image, ensure_image
from mfdcomp.bench.library import measure, measure_apart, reference_for
from mfdcomp.bench.netns import LinkCell, LinkedNamespaces, LinkSweepResult, compression_pays, run_link_sweep
from mfdcomp.bench.procs import Child, ChildFailed
from mfdcomp.bench.results import Cell, LibraryBaseline, MatrixResult, PumpBaseline, QemuBaseline
from mfdcomp.bench.scaling import GiB, ScalingResult
from mfdcomp.bench.targets import FAIL, NOT_EVALUATED, PASS, Verdict, evaluate_targets
from mfdcomp.bench.transfer import CodecChoice, TransferRun
from mfdcomp.cli import main
from mfdcomp.registry import default_registry

MiB = 1 << 20
NONE = CodecChoice("none")
ZSTD = CodecChoice("zstd", 1)
ZLIB = CodecChoice("zlib", 1)

CELL_FIELDS = {
    "kind", "codec", "level", "label", "channels", "error", "runs", "gb_per_s_best", "gb_per_s_median",
    "transfer_seconds_best", "session_seconds_best", "guest_bytes", "wire_bytes", "ratio", "send_cpu_seconds",
    "recv_cpu_seconds", "send_peak_rss", "recv_peak_rss",
}  # fmt: skip
RUN_FIELDS = set(TransferRun.__dataclass_fields__) | {"gb_per_s"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One image cache for the module: the 8 MiB mixed image is made once."""
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def mixed(cache: Path) -> Path:
    return Path(ensure_image(cache, "mixed", 8 * MiB).path)


def test_tiny_matrix_end_to_end(tmp_path: Path, cache: Path, mixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "matrix.png"
    with_plot = ["--plot", str(plot)] if _has_matplotlib() else []
    args = ["bench", "--size", "8M", "--codecs", "none,zstd", "--channels", "1", "--kinds", "mixed", "--repeats", "1"]
    # This process's peak RSS passes to every child it forks: the ends must report their own.
    ballast = bytearray(300 * MiB)
    ballast[::4096] = b"x" * len(range(0, len(ballast), 4096))
    del ballast
    code = main([*args, "--no-qemu", "--check-targets", "--json", "--cache-dir", str(cache), *with_plot])
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert "NOT RUN: QEMU baselines: --no-qemu was given" in err
    assert data["mode"] == "matrix" and data["size"] == 8 * MiB and data["cores"] >= 1
    assert set(data["images"]) == {"mixed"}
    assert [(c["label"], c["channels"]) for c in data["cells"]] == [("none", 1), ("zstd-1", 1)]
    for cell in data["cells"]:
        assert cell["error"] is None and set(cell) == CELL_FIELDS
        assert cell["guest_bytes"] == 8 * MiB and cell["gb_per_s_best"] > 0 and len(cell["runs"]) == 1
        assert set(cell["runs"][0]) == RUN_FIELDS
        # Each end's own peak: the image and the interpreter, not the bench's memory warm-up (272 MiB here).
        assert 0 < cell["send_peak_rss"] < 200 * MiB and 0 < cell["recv_peak_rss"] < 200 * MiB
    none, zstd = data["cells"]
    assert zstd["wire_bytes"] < none["wire_bytes"] < 8 * MiB  # zero pages and text shrink
    baselines = data["baselines"]
    (pump,) = baselines["loopback_pump"]
    assert pump["not_run"] is None and pump["gb_per_s_best"] > 0
    library = {b["label"]: b for b in baselines["library"]}
    assert library["zstd-1"]["compress_gb_per_s"] > 0 and library["none"]["decompress_gb_per_s"] > 0
    assert library["zstd-1"]["output_bytes"] < library["zstd-1"]["normal_bytes"]
    assert {q["not_run"] for q in baselines["qemu"]} == {"--no-qemu was given"}
    statuses = {verdict["status"] for verdict in data["targets"]}
    assert statuses <= {PASS, FAIL, NOT_EVALUATED}
    assert code == (1 if FAIL in statuses else 0)
    if with_plot:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["images"]["mixed"]["path"] == str(mixed)  # the cached image, reused


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# --- targets -------------------------------------------------------------------------------------------------


def _run(gb_per_s: float, guest: int = 1 << 30, rss: int = 100 * MiB, session: float | None = None) -> TransferRun:
    seconds = guest / gb_per_s / 1e9
    return TransferRun(
        seconds=seconds, session_seconds=seconds + 0.1 if session is None else session, guest_bytes=guest,
        wire_bytes=guest, payload_bytes=guest, normal_pages=1, zero_pages=0, packets=1, send_cpu_seconds=1.0,
        recv_cpu_seconds=1.0, send_process_cpu_seconds=1.0, recv_process_cpu_seconds=1.0, send_peak_rss=rss,
        recv_peak_rss=rss,
    )  # fmt: skip


def _library(kind: str, codec: CodecChoice, gb_per_s: float) -> LibraryBaseline:
    from mfdcomp.bench.library import LibraryResult

    seconds = (1 << 30) / gb_per_s / 1e9
    result = LibraryResult(codec.name, codec.level, "", 1 << 30, 1 << 30, 1 << 29, [seconds], [seconds])
    return LibraryBaseline(kind, codec, result)


def _matrix(
    cells: list[Cell],
    pump: float | None = None,
    library: dict[CodecChoice, float] | None = None,
    qemu: dict[CodecChoice, float] | None = None,
    cores: int = 2,
) -> MatrixResult:
    result = MatrixResult(size=1 << 30, transport="unix", repeats=1, cores=cores, cells=cells)
    for kind, channels in {(c.kind, c.channels) for c in cells}:
        baseline = PumpBaseline(kind, channels, [pump] if pump else [], None if pump else "pump missing")
        result.pump.append(baseline)
        for codec in {c.codec for c in cells}:
            seconds = (qemu or {}).get(codec)
            result.qemu.append(
                QemuBaseline(kind, codec, channels, [seconds] if seconds else [], 1 << 30, "10.0", None)
                if seconds
                else QemuBaseline(kind, codec, channels, not_run="no QEMU here")
            )
    result.library = [_library("mixed", codec, rate) for codec, rate in (library or {}).items()]
    return result


def _verdicts(result: MatrixResult, target: str) -> list[Verdict]:
    return [v for v in evaluate_targets(result) if v.target.startswith(target)]


@pytest.mark.parametrize(
    ("engine", "pump", "status"),
    [(2.0, 2.2, PASS), (1.99, 2.2, PASS), (1.97, 2.2, FAIL), (3.0, 2.0, PASS), (1.0, None, NOT_EVALUATED)],
)
def test_nocomp_against_the_loopback_pump(engine: float, pump: float | None, status: str) -> None:
    result = _matrix([Cell("mixed", NONE, 2, [_run(engine)])], pump=pump)
    (verdict,) = _verdicts(result, "nocomp ≥ 90%")
    assert verdict.status == status and verdict.subject == "none, mixed, 2 ch"


@pytest.mark.parametrize(("transport", "pump_name"), [("tcp", "loopback pump"), ("tcp+TLS", "TLS loopback pump")])
def test_a_tls_run_names_its_tls_pump(transport: str, pump_name: str) -> None:
    result = dataclasses.replace(_matrix([Cell("mixed", NONE, 2, [_run(2.0)])], pump=2.0), transport=transport)
    (verdict,) = _verdicts(result, "nocomp ≥ 90%")
    assert verdict.target == f"nocomp ≥ 90% of the {pump_name}" and verdict.status == PASS


# 1 GiB at 2 GB/s: 0.537 s of transfer.
@pytest.mark.parametrize(
    ("codec", "kind", "qemu", "status", "shown"),
    [
        (NONE, "mixed", 0.54, PASS, "0.99"),
        (NONE, "mixed", 0.5368, FAIL, "1.0001"),  # shown to the place that tells it from 1.00
        (ZSTD, "mixed", 0.537, PASS, "0.9998"),  # within 1.0
        (ZLIB, "mixed", 1.08, PASS, "0.497"),
        (ZLIB, "mixed", 1.07, FAIL, "0.502"),  # > 0.5
        (NONE, "zero90", 0.6, PASS, "0.89"),
        (NONE, "zero90", 0.5, FAIL, "1.07"),
    ],
)
def test_transfer_against_qemu(codec: CodecChoice, kind: str, qemu: float, status: str, shown: str) -> None:
    result = _matrix([Cell(kind, codec, 2, [_run(2.0)])], qemu={codec: qemu})
    verdicts = _verdicts(result, f"transfer ≤ {0.5 if codec == ZLIB else 1:g} × QEMU's total-time")
    (verdict,) = [v for v in verdicts if v.subject == f"{codec.label}, {kind}, 2 ch"]
    assert verdict.status == status and verdict.detail.endswith(f": ratio {shown}")


@pytest.mark.parametrize(("session", "status"), [(0.99, PASS), (1.0, PASS), (1.01, FAIL)])
def test_whole_session_against_qemu(session: float, status: str) -> None:
    # The session is judged on its own time, not the transfer's, and zlib's limit is 1.0 there too.
    cells = [Cell("mixed", NONE, 2, [_run(2.0, session=session)]), Cell("mixed", ZLIB, 2, [_run(2.0, session=session)])]
    result = _matrix(cells, qemu={NONE: 1.0, ZLIB: 1.0})
    verdicts = _verdicts(result, "whole session")
    assert [(v.subject.split(",")[0], v.status) for v in verdicts if v.status != NOT_EVALUATED] == [
        ("none", status),
        ("zlib-1", status),
    ]
    # zlib-1: 0.537 s is over half of QEMU's 1.0 s.
    assert [v.status for v in _verdicts(result, "transfer")] == [PASS, NOT_EVALUATED, FAIL, NOT_EVALUATED]


def test_without_qemu_the_ratios_are_not_evaluated() -> None:
    result = _matrix([Cell("mixed", NONE, 2, [_run(2.0)])])
    verdicts = [v for v in _verdicts(result, "transfer ≤ 1 × QEMU's total-time") if v.subject == "none, mixed, 2 ch"]
    assert [(v.status, v.detail) for v in verdicts] == [(NOT_EVALUATED, "QEMU not run: no QEMU here")]


def test_peak_rss() -> None:
    cells = [
        Cell("zero90", NONE, 2, [_run(3.5, rss=(1 << 30) + 64 * MiB)]),
        Cell("zero90", ZSTD, 2, [_run(2.9)]),
        Cell("mixed", NONE, 2, [_run(1.0, rss=(1 << 30) + 65 * MiB)]),
        Cell("mixed", ZLIB, 2, error="mfdcomp send exited with 1"),
    ]
    result = _matrix(cells, pump=2.0)
    assert [(v.subject, v.status) for v in _verdicts(result, "nocomp peak RSS")] == [
        ("none, zero90, 2 ch", PASS),
        ("none, mixed, 2 ch", FAIL),
    ]


def test_targets_without_data_are_not_evaluated() -> None:
    verdicts = evaluate_targets(_matrix([Cell("text", ZSTD, 1, [_run(1.0)])]))
    assert len(verdicts) == 10 and {v.status for v in verdicts} == {NOT_EVALUATED}
    assert all("no " in v.detail and "in this run" in v.detail for v in verdicts)


# --- least squares -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xs", "ys", "slope", "intercept", "r_squared"),
    [
        ([0.25, 0.5, 1, 2, 4], [0.15, 0.25, 0.45, 0.85, 1.65], 0.4, 0.05, 1.0),
        ([1, 2, 3], [2, 2, 2], 0.0, 2.0, 1.0),  # flat: explained exactly
        ([1, 2, 3, 4], [1, 3, 2, 4], 0.8, 0.5, 0.64),
        ([1, 1, 2, 2], [1, 3, 5, 7], 4.0, -2.0, 0.8),  # repeats at each size
    ],
)
def test_fit_line(xs: list[float], ys: list[float], slope: float, intercept: float, r_squared: float) -> None:
    fit = fit_line(xs, ys)
    assert fit.slope == pytest.approx(slope) and fit.intercept == pytest.approx(intercept, abs=1e-12)
    assert fit.r_squared == pytest.approx(r_squared) and fit.points == len(xs)
    assert fit.at(10) == pytest.approx(slope * 10 + intercept)


@pytest.mark.parametrize(("xs", "ys"), [([1], [1]), ([2, 2], [1, 3]), ([1, 2], [1])])
def test_fit_line_refuses(xs: list[float], ys: list[float]) -> None:
    with pytest.raises(ValueError):
        fit_line(xs, ys)


# --- link sweep ----------------------------------------------------------------------------------------------

RATES: list[float | None] = [1.0, 10.0, 25.0, None]


@pytest.mark.parametrize(
    ("zstd", "summary"),
    [
        ([0.25, 1.5, 2.0, 2.5], "pays below a link speed between 10 Gbit/s and 25 Gbit/s"),
        ([0.25, 2.0, 4.0, 5.0], "beats none on every link measured, up to unlimited"),
        ([0.1, 0.5, 0.6, 0.7], "never beats none here, not even at 1 Gbit/s"),
        ([0.25, 0.5, 4.0, 0.1], "no single crossover: beats none at 1 Gbit/s, 25 Gbit/s"),
    ],
)
def test_compression_pays(zstd: list[float], summary: str) -> None:
    none = dict(zip(RATES, [0.12, 1.2, 2.5, 3.0], strict=True))
    (payoff,) = compression_pays(RATES, {"none": none, "zstd-1": dict(zip(RATES, zstd, strict=True))})
    assert payoff.codec == "zstd-1" and payoff.summary.startswith(summary)
    assert sorted(map(str, payoff.wins + payoff.losses)) == sorted(map(str, RATES))


def test_break_even_estimate() -> None:
    # zstd at best 0.3 GB/s; none carries 1.2 guest bytes per wire byte: a 2 Gbit/s link moves 0.3 GB/s of it.
    measured = {"none": {1.0: 0.15, None: 0.7}, "zstd-1": {1.0: 0.25, None: 0.3}}
    (payoff,) = compression_pays([1.0, None], measured, none_ratio=1.2)
    assert payoff.break_even_gbit == pytest.approx(2.0) and payoff.summary.endswith("break-even ≈ 2 Gbit/s")
    (payoff,) = compression_pays([1.0, None], measured)
    assert payoff.break_even_gbit is None


def test_compression_pays_needs_common_links() -> None:
    (payoff,) = compression_pays(RATES, {"none": {1.0: 0.1}, "zlib-1": {10.0: 0.3}})
    assert payoff.summary.startswith("not compared") and payoff.wins == payoff.losses == []


def _netns_works() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs root, ip and tc"
    probe = subprocess.run(["ip", "netns", "add", "mfdbprobe"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"ip netns add: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "mfdbprobe"], check=False)
    return None


NETNS = _netns_works()


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


@pytest.mark.skipif(NETNS is not None, reason=f"network namespaces: {NETNS}")
def test_namespaces_are_removed_on_errors() -> None:
    with pytest.raises(RuntimeError, match="boom"), LinkedNamespaces("t1") as namespaces:
        assert {namespaces.source, namespaces.destination} <= _namespaces()
        namespaces.limit(1.0)
        raise RuntimeError("boom")
    assert not {"mfdbt1s", "mfdbt1d"} & _namespaces()


@pytest.mark.skipif(NETNS is not None, reason=f"network namespaces: {NETNS}")
def test_tiny_link_sweep(tmp_path: Path, mixed: Path) -> None:
    result = run_link_sweep(mixed, "mixed", [NONE], 1, [1.0], 1, tmp_path, lambda _: None)
    assert result.not_run is None and [(c.rate, c.codec.label) for c in result.cells] == [(1.0, "none"), (None, "none")]
    assert all(cell.runs and cell.error is None for cell in result.cells)
    # 8 MiB (7.2 MiB on the wire) through a 1 Gbit/s bucket of 128 KiB cannot go much faster than 0.125 GB/s.
    assert result.cells[0].gb_per_s < 0.2
    assert result.payoffs == []  # nothing to set against none
    assert not {n for n in _namespaces() if n.startswith(f"mfdb{os.getpid()}")}


# --- pieces --------------------------------------------------------------------------------------------------


def test_child_reports_cpu_time_and_failures() -> None:
    spin = "sum(range(3_000_000))"
    with Child([sys.executable, "-c", spin], "spinner") as child:
        done = child.finish(60)
    assert done.returncode == 0 and done.cpu_seconds > 0
    with (
        Child([sys.executable, "-c", "import sys; sys.exit('no luck')"], "failing") as child,
        pytest.raises(ChildFailed, match="failing exited with 1: no luck"),
    ):
        child.finish(60)
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    with Child(sleeper, "sleeper") as child, pytest.raises(ChildFailed, match="did not say"):
        child.stderr_line("listening on ", timeout=0.2)


@pytest.mark.parametrize("codec", ["none", "zlib", "zstd", "lz4", "qpl", "qatzip", "uadk"])
def test_library_references_decode_what_they_encode(mixed: Path, codec: str) -> None:
    try:
        reference = reference_for(codec, 1 if codec in ("zlib", "zstd", "lz4", "qatzip") else None)
    except RuntimeError as exc:
        pytest.skip(f"{codec} reference cannot run here: {exc}")
    result = measure(reference, codec, mixed, repeats=1)  # raises if a decoded size is off
    assert result.guest_bytes == 8 * MiB and 0 < result.normal_bytes < 8 * MiB
    assert result.compress_gb_per_s > 0 and result.decompress_gb_per_s > 0 and result.measures
    if codec not in ("none", "uadk"):
        assert 0 < result.output_bytes < result.normal_bytes


def test_matrix_takes_each_qemu_run_beside_its_cell(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mfdcomp.bench.qemu import qemu_unavailable

    why = qemu_unavailable()
    if why is not None:
        pytest.skip(f"QEMU: {why}")
    args = ["bench", "--size", "8M", "--codecs", "none,lz4", "--channels", "1", "--kinds", "mixed", "--repeats", "2"]
    main([*args, "--json", "--cache-dir", str(cache)])
    out, err = capsys.readouterr()
    order = re.findall(r" run \d/2 (loopback pump|QEMU \S+|\S+):", err)
    # Each repeat: the pump, then every codec's transfer, each followed by QEMU's migration (none for lz4).
    assert order == ["loopback pump", "none", "QEMU none", "lz4-1"] * 2
    assert "NOT RUN: mixed ×1 QEMU lz4-1: lz4 is an mfdcomp extension: QEMU has no such codec" in err
    (none, lz4) = json.loads(out)["baselines"]["qemu"]
    assert none["not_run"] is None and len(none["seconds_runs"]) == 2 and len(none["cpu_seconds_runs"]) == 2
    assert lz4["not_run"] is not None and not lz4["seconds_runs"]


def test_qemu_baseline(cache: Path, mixed: Path) -> None:
    from mfdcomp.bench.qemu import add_qemu_run, qemu_baseline, qemu_unavailable

    image = ensure_image(cache, "mixed", 8 * MiB)
    extension = qemu_baseline(image, CodecChoice("lz4", 1), 1)
    add_qemu_run(extension, image, "unix")
    assert extension.not_run == "lz4 is an mfdcomp extension: QEMU has no such codec"
    assert not extension.seconds_runs
    assert qemu_baseline(image, ZSTD, 1, "--no-qemu was given").not_run == "--no-qemu was given"
    why = qemu_unavailable()
    if why is not None:
        pytest.skip(f"QEMU: {why}")
    # /proc counts CPU in 10 ms ticks: 8 MiB took one side 0-2 ticks (a destination read 0.0 once); 64 MiB is
    # about 10 of them on each side.
    image = ensure_image(cache, "mixed", 64 * MiB)
    baseline = qemu_baseline(image, ZSTD, 1)
    for transport in ("unix", "tcp"):
        add_qemu_run(baseline, image, transport)  # the harness's guest RAM is checked to be this image
    assert baseline.not_run is None and baseline.version.startswith("10.")
    assert len(baseline.seconds_runs) == 2 and baseline.seconds > 0
    # Both QEMUs work during a migration: each side's CPU is there and above zero.
    assert len(baseline.cpu_runs) == 2 and all(send > 0 and recv > 0 for send, recv in baseline.cpu_runs)


def test_library_reference_of_an_all_zero_image_is_not_run(tmp_path: Path) -> None:
    image = tmp_path / "zero.img"
    image.write_bytes(bytes(MiB))
    with pytest.raises(RuntimeError, match="only zero pages"):
        measure(reference_for("zstd", 1), "zstd", image, repeats=1)


def test_unknown_reference_says_so(mixed: Path) -> None:
    with pytest.raises(RuntimeError, match="no raw-library reference for codec 'brotli'"):
        reference_for("brotli", None)
    with pytest.raises(RuntimeError, match="no raw-library reference for codec 'brotli'"):
        measure_apart("brotli", None, mixed, 1)  # the reason comes back from the child process


def test_plots_of_scaling_and_link_sweep(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from mfdcomp.bench.plot import plot_link_sweep, plot_scaling

    scaling = ScalingResult("mixed", 2, "unix", [GiB // 4, GiB], {"none": [(GiB // 4, _run(2.0)), (GiB, _run(2.0))]})
    scaling.fits["none"] = fit_line([0.25, 1.0], [0.134, 0.537])
    sweep = LinkSweepResult("mixed", 256 * MiB, 2, [1.0, None])
    sweep.cells = [LinkCell(1.0, NONE, [_run(0.12)]), LinkCell(None, NONE, [_run(2.0)]), LinkCell(1.0, ZSTD)]
    plot_scaling(scaling, tmp_path / "s.png")
    plot_link_sweep(sweep, tmp_path / "l.png")
    for name in ("s.png", "l.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--kinds", "mixed,nothing"]) == 1
    assert "unknown data kind(s) nothing" in capsys.readouterr().err
    assert main(["bench", "--scaling", "--channels", "1,2"]) == 1
    assert "--scaling takes one value of --channels" in capsys.readouterr().err
    assert main(["bench", "--link-sweep", "--check-targets"]) == 1
    assert main(["bench", "--codecs", "nosuch"]) == 1
    assert "no codec named 'nosuch'" in capsys.readouterr().err


def test_image_record_must_match(cache: Path, mixed: Path) -> None:
    image = ensure_image(cache, "mixed", 8 * MiB)
    assert image.path == str(mixed) and image == Image(**json.loads(mixed.with_suffix(".json").read_text()))
    before = mixed.stat().st_mtime_ns
    assert ensure_image(cache, "mixed", 8 * MiB) == image and mixed.stat().st_mtime_ns == before  # reused
    mixed.with_suffix(".json").write_text("{}")  # a broken record: the image is made again
    assert ensure_image(cache, "mixed", 8 * MiB) == image and mixed.stat().st_mtime_ns != before


def test_warm_up_is_sized_by_the_image_and_capped_by_free_memory() -> None:
    from mfdcomp.bench.memory import available_memory, warm_memory, warm_size

    available = available_memory()
    assert available is not None and available > 0
    small = warm_size(8 * MiB)
    assert small == min(2 * 8 * MiB + 256 * MiB, available - 512 * MiB)
    huge = warm_size(1 << 50)  # a petabyte image: only what is free now, never more
    assert 0 <= huge <= available - 512 * MiB and huge % os.sysconf("SC_PAGE_SIZE") == 0
    warm_memory(small)  # allocates, touches and frees: returns, and takes nothing with it
    warm_memory(0)


def test_cpu_seconds_of_another_process_whatever_its_name() -> None:
    from mfdcomp.procinfo import cpu_seconds

    # A child renames itself with the characters that break a naive parse of
    # /proc/PID/stat, burns CPU, says how much, then waits to be read.
    script = (
        "import sys, time\n"
        "open('/proc/self/comm', 'w').write('a) b (c) d')\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "print(time.process_time(), flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    spent = float(child.stdout.readline())
    seen = cpu_seconds(child.pid)
    child.stdin.close()
    child.wait()
    assert seen is not None and spent - 0.02 <= seen <= spent + 0.1
    assert cpu_seconds(child.pid) is None  # reaped: no /proc entry


def test_kib_field_reads_proc_lines_and_says_none_otherwise(tmp_path: Path) -> None:
    from mfdcomp.procinfo import kib_field

    status = tmp_path / "status"
    status.write_text("Name:\tpython3\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    assert kib_field(str(status), "VmHWM") == 2 * MiB
    assert kib_field(str(status), "VmSwap") is None
    assert kib_field(str(tmp_path / "absent"), "VmHWM") is None


def test_library_only_lists_every_installed_deflate_implementation(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mfdcomp bench --library-only`: per wire format, each installed implementation with its MB/s and ratio."""
    from mfdcomp.methods import deflate as libs

    assert main(["bench", "--library-only", "--size", "8M", "--repeats", "1", "--cache-dir", str(cache), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    measured = {(row["wire_format"], row["implementation"].split()[0]) for row in rows if row["not_run"] is None}
    installed = ["zlib"] + (["isal"] if isinstance(libs.isal(), libs.Deflate) else [])
    for wire_format in ("zlib-stream", "qpl-page-deflate", "uadk-page-zlib"):
        for name in installed:
            assert (wire_format, name) in measured, (wire_format, name, rows)
    qpl = default_registry().get("qpl")
    if "libqpl" in {getattr(qpl, "implementation", None), *getattr(qpl, "implementations", dict)()}:
        assert ("qpl-page-deflate", "libqpl") in measured
    for row in rows:
        if row["not_run"] is None:
            assert row["compress_mb_per_s"] > 0 and row["decompress_mb_per_s"] > 0 and 0 < row["ratio"] < 1.2
    assert main(["bench", "--library-only", "--size", "8M", "--repeats", "1", "--cache-dir", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "wire format" in text and "decompress" in text and "zlib-stream" in text


def test_matrix_says_which_implementation_encoded_the_packets(
    cache: Path, mixed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mfdcomp.methods import deflate as libs

    args = ["bench", "--size", "8M", "--codecs", "zlib", "--channels", "1", "--kinds", "mixed", "--repeats", "1"]
    assert main([*args, "--no-qemu", "--json", "--cache-dir", str(cache)]) == 0
    (cell,) = json.loads(capsys.readouterr().out)["cells"]
    (run,) = cell["runs"]
    assert run["implementations"] == {libs.fastest().name: run["paths"]["software"]}
    assert main([*args, "--no-qemu", "--cache-dir", str(cache)]) == 0
    assert f"implementations that encoded the packets: zlib-1: {libs.fastest().name}" in capsys.readouterr().out

"""``mfdcomp bench``: throughput of the codecs beside their baselines, from one run."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfdcomp.bench.images import KIND_MIXES
from mfdcomp.errors import MfdcompError
from mfdcomp.registry import default_registry
from mfdcomp.units import parse_size

if TYPE_CHECKING:
    from mfdcomp.bench.transfer import CodecChoice

# The bench's modules are imported when the command runs, not by every `mfdcomp` start.

DEFAULT_KINDS = "zero,text,random,half,mixed"
DEFAULT_SIZES = "256M,512M,1G,2G,4G"
DEFAULT_RATES = "1,10,25"
SHM = "/dev/shm"
SWEEP_CODECS = ("none", "zstd", "zlib", "qatzip")

DESCRIPTION = f"""\
Measure `mfdcomp send` → `mfdcomp recv` (two processes over loopback, TCP by
default as between hosts, --transport unix for a unix socket) for every codec × channel count × data kind, and in the
same run the baselines each cell is judged against:

  raw library  the codec's library alone, one thread, compressing and decoding
               the same packets of pages (see mfdcomp/bench/library.py)
  pump         benchmarks/loopback_pump.py --image: plain Python sockets moving
               the same bytes over as many connections
  QEMU         QEMU 10's own multifd migration of the same image, codec and
               channels over the same transport (through mfdcomp.qemu.harness),
               where both are here

Each repeat runs the pump, then every codec's transfer, each followed by
QEMU's migration with that codec. Right before each transfer and each QEMU
migration, twice the image's size of memory is allocated and freed, so both
start with memory the host backs (see mfdcomp/bench/memory.py).

A baseline that cannot run says "NOT RUN: <reason>". GB/s are of guest RAM
(10^9 bytes over the sender's transfer time). Data kinds are whole images of
one page kind ({", ".join(k for k in KIND_MIXES if k not in ("mixed", "zero90"))}), mixed ({KIND_MIXES["mixed"]})
and zero90 ({KIND_MIXES["zero90"]}), made once per kind and size with
`mfdcomp gen-image`. CODEC:LEVEL picks a level (default: the codec's).

Each cell keeps two times: the transfer (connect to the last packet) and the
whole session as the user waits (`send --json` "seconds": connect to the
verified end); QEMU's is its total-time.

--check-targets judges issue 18's targets, each time over QEMU's in the same
run: transfer ≤ 1.0 for mixed none, mixed zstd-1 and zero90 none, ≤ 0.5 for
mixed zlib-1; whole session ≤ 1.0 for the same cells; nocomp ≥ 90% of the
loopback pump; peak RSS of nocomp ≤ image + 64 MiB. E.g.
  mfdcomp bench --size 512M --codecs none,zstd,zlib --channels 2 --kinds mixed,zero90 --check-targets
--library-only: no transfer, no QEMU: the deflate wire formats' implementations
side by side on the --kinds image (mixed by default), one thread: libqpl's
software path, ISA-L and zlib for qpl's per-page raw deflate; ISA-L and zlib
for the zlib codec's stream and for uadk's per-page zlib. Compress and
decompress MB/s of the normal pages' bytes and the output ratio of each;
an implementation not installed is listed as NOT RUN with the reason, e.g.
  mfdcomp bench --library-only --size 64M --repeats 3
--scaling: nocomp and zstd over 2 channels at --sizes, a least-squares line of
seconds over GiB. --link-sweep: the codecs over a veth pair between two network
namespaces, tc-limited to --link-rates Gbit/s (root).
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "bench",
        help="benchmark codecs × channels × data kinds against their baselines",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--codecs", metavar="LIST", help="CODEC[:LEVEL],... (default: every registered codec)")
    parser.add_argument("--channels", metavar="LIST", help="channel counts (default: 1,2,4; 2 for the sub-modes)")
    parser.add_argument("--kinds", metavar="LIST", help=f"data kinds (default: {DEFAULT_KINDS}; mixed for sub-modes)")
    parser.add_argument("--size", type=parse_size, default=256 << 20, help="image size (256M)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N", help="runs per cell: median and best (3)")
    parser.add_argument("--transport", choices=("tcp", "unix"), default="tcp", help="loopback transport (tcp)")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="keep the images here (default: a temp dir)")
    parser.add_argument("--no-qemu", action="store_true", help="skip the QEMU baseline (reported as not run)")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every channel, mfdcomp's and QEMU's baseline alike (generated x509 credentials; matrix only)",
    )
    parser.add_argument("--check-targets", action="store_true", help="PASS/FAIL of the issue's targets")
    parser.add_argument("--json", action="store_true", help="print every number as JSON")
    parser.add_argument("--json-file", type=Path, metavar="PATH", help="also write every number as JSON to PATH")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="draw the results (needs the bench extra)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--scaling", action="store_true", help="time over image size instead of the matrix")
    mode.add_argument("--link-sweep", action="store_true", help="rate-limited links instead of the matrix")
    mode.add_argument(
        "--library-only",
        action="store_true",
        help="only the deflate implementations side by side (libqpl, ISA-L, zlib)",
    )
    parser.add_argument("--sizes", default=DEFAULT_SIZES, metavar="LIST", help=f"--scaling sizes ({DEFAULT_SIZES})")
    parser.add_argument(
        "--link-rates", default=DEFAULT_RATES, metavar="LIST", help=f"--link-sweep rates, Gbit/s ({DEFAULT_RATES})"
    )
    parser.set_defaults(run=run)


def _say(message: str) -> None:
    print(f"mfdcomp bench: {message}", file=sys.stderr, flush=True)


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _numbers(text: str, what: str, kind: type[int] | type[float]) -> list[Any]:
    try:
        values = [kind(item) for item in _items(text)]
    except ValueError:
        raise MfdcompError(f"{what} must be numbers separated by commas, got {text!r}") from None
    if not values or any(value <= 0 for value in values):
        raise MfdcompError(f"{what} must be positive numbers, got {text!r}")
    return values


def _kinds(text: str) -> list[str]:
    kinds = _items(text)
    unknown = [kind for kind in kinds if kind not in KIND_MIXES]
    if unknown or not kinds:
        raise MfdcompError(f"unknown data kind(s) {', '.join(unknown) or '(none)'}; kinds: {', '.join(KIND_MIXES)}")
    return kinds


def _sizes(text: str) -> list[int]:
    try:
        return [parse_size(item) for item in _items(text)]
    except ValueError as exc:
        raise MfdcompError(str(exc)) from None


def _one(values: list[Any], option: str, mode: str) -> Any:
    if len(values) != 1:
        raise MfdcompError(f"{mode} takes one value of {option}, got {len(values)}")
    return values[0]


def _default_codecs(names: tuple[str, ...] | None = None) -> list[CodecChoice]:
    from mfdcomp.bench.transfer import parse_codecs

    registered = default_registry().codecs
    chosen = [name for name in (names or sorted(registered, key=lambda n: (n != "none", n))) if name in registered]
    return parse_codecs(",".join(chosen))


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise MfdcompError("--repeats must be at least 1")
    if args.check_targets and (args.scaling or args.link_sweep or args.library_only):
        raise MfdcompError("--check-targets judges the matrix: leave out --scaling, --link-sweep and --library-only")
    largest = max(_sizes(args.sizes)) if args.scaling else args.size
    with (
        tempfile.TemporaryDirectory(prefix="mfdcomp-bench-images-") as images,
        tempfile.TemporaryDirectory(prefix="mfdcomp-bench-", dir=_scratch_root(largest)) as scratch,
    ):
        cache = args.cache_dir or Path(images)
        cache.mkdir(parents=True, exist_ok=True)
        workdir = Path(scratch)
        _say(f"received images and sockets in {workdir}")
        if args.scaling:
            return _scaling(args, cache, workdir)
        if args.link_sweep:
            return _link_sweep(args, cache, workdir)
        if args.library_only:
            return _library_only(args, cache)
        return _matrix(args, cache, workdir)


def _scratch_root(largest: int) -> str | None:
    """/dev/shm where it has room for a received image, else the default temporary folder.

    In memory, as QEMU's guest RAM is in the harness: a target file on disk
    would time the kernel's writeback of the last run's dirty pages too.
    """
    try:
        free = shutil.disk_usage(SHM).free
    except OSError:
        return None
    return SHM if free > largest * 1.25 + (256 << 20) else None


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """The results, before any plot: a plot that fails loses nothing."""
    if args.json_file:
        args.json_file.write_text(json.dumps(data, indent=2) + "\n")
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        print(text)


def _matrix(args: argparse.Namespace, cache: Path, workdir: Path) -> int:
    from mfdcomp.bench.matrix import MatrixConfig, run_matrix
    from mfdcomp.bench.report import matrix_text, targets_text
    from mfdcomp.bench.targets import FAIL, evaluate_targets
    from mfdcomp.bench.transfer import parse_codecs

    config = MatrixConfig(
        codecs=parse_codecs(args.codecs) if args.codecs else _default_codecs(),
        channels=_numbers(args.channels or "1,2,4", "--channels", int),
        kinds=_kinds(args.kinds or DEFAULT_KINDS),
        size=args.size,
        repeats=args.repeats,
        transport=args.transport,
        qemu=not args.no_qemu,
        tls=args.tls,
    )
    result = run_matrix(config, cache, workdir, _say)
    data: dict[str, Any] = {"mode": "matrix"} | result.as_dict()
    text = matrix_text(result)
    verdicts = evaluate_targets(result) if args.check_targets else []
    if args.check_targets:
        data["targets"] = [verdict.as_dict() for verdict in verdicts]
        text += "\n\n" + targets_text(verdicts)
    _emit(args, data, text)
    if args.plot:
        from mfdcomp.bench.plot import plot_matrix  # needs matplotlib

        plot_matrix(result, args.plot)
        _say(f"plot written to {args.plot}")
    failed = any(not cell.ok for cell in result.cells) or any(v.status == FAIL for v in verdicts)
    return 1 if failed else 0


def _library_only(args: argparse.Namespace, cache: Path) -> int:
    from mfdcomp.bench.images import ensure_image
    from mfdcomp.bench.library import implementations_text, measure_implementations

    kind = _one(_kinds(args.kinds or "mixed"), "--kinds", "--library-only")
    image = ensure_image(cache, kind, args.size)
    _say(f"deflate implementations on the {kind} image of {args.size >> 20} MiB, {args.repeats} repeats")
    rows = measure_implementations(Path(image.path), args.repeats)
    data = {"mode": "library-only", "kind": kind, "size": args.size, "rows": [row.as_dict() for row in rows]}
    _emit(args, data, implementations_text(rows))
    return 0


def _scaling(args: argparse.Namespace, cache: Path, workdir: Path) -> int:
    from mfdcomp.bench.report import scaling_text
    from mfdcomp.bench.scaling import run_scaling
    from mfdcomp.bench.transfer import parse_codecs

    result = run_scaling(
        codecs=parse_codecs(args.codecs or "none,zstd"),
        sizes=_sizes(args.sizes),
        channels=_one(_numbers(args.channels or "2", "--channels", int), "--channels", "--scaling"),
        kind=_one(_kinds(args.kinds or "mixed"), "--kinds", "--scaling"),
        repeats=args.repeats,
        transport=args.transport,
        cache=cache,
        workdir=workdir,
        say=_say,
    )
    _emit(args, {"mode": "scaling"} | result.as_dict(), scaling_text(result))
    if args.plot:
        from mfdcomp.bench.plot import plot_scaling

        plot_scaling(result, args.plot)
        _say(f"plot written to {args.plot}")
    return 1 if result.errors else 0


def _link_sweep(args: argparse.Namespace, cache: Path, workdir: Path) -> int:
    from mfdcomp.bench.images import ensure_image
    from mfdcomp.bench.netns import run_link_sweep
    from mfdcomp.bench.report import link_sweep_text
    from mfdcomp.bench.transfer import parse_codecs

    kind = _one(_kinds(args.kinds or "mixed"), "--kinds", "--link-sweep")
    _say(f"image {kind}: {args.size >> 20} MiB (cached in {cache})")
    image = ensure_image(cache, kind, args.size)
    result = run_link_sweep(
        image=Path(image.path),
        kind=kind,
        codecs=parse_codecs(args.codecs) if args.codecs else _default_codecs(SWEEP_CODECS),
        channels=_one(_numbers(args.channels or "2", "--channels", int), "--channels", "--link-sweep"),
        rates=_numbers(args.link_rates, "--link-rates", float),
        repeats=args.repeats,
        workdir=workdir,
        say=_say,
    )
    _emit(args, {"mode": "link-sweep"} | result.as_dict(), link_sweep_text(result))
    if args.plot and result.not_run is None:
        from mfdcomp.bench.plot import plot_link_sweep

        plot_link_sweep(result, args.plot)
        _say(f"plot written to {args.plot}")
    return 1 if result.not_run is not None or any(cell.error for cell in result.cells) else 0

"""``mfdcomp conformance``: the public check suite over installed codecs, with a verdict per codec."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from mfdcomp.cli.common import print_json
from mfdcomp.errors import MfdcompError
from mfdcomp.registry import default_registry
from mfdcomp.testing.checks import CHECKS, DATA_KINDS, PACKAGED_VECTORS, SuiteConfig
from mfdcomp.testing.suite import CheckResult, CodecVerdict, Status, run_suite, select_codecs
from mfdcomp.units import format_bytes, parse_size

DESCRIPTION = """\
Run mfdcomp's conformance checks against codecs: every installed one by
default, or those named with --codec. With no arguments this is the
project's main job: loopback sockets, 2 channels for the throughput run, a
generated 64 MiB mixed image (10% zero, 40% text-like, 30% random, 20%
half-zero pages).

Checks, per codec:
  engine_roundtrip  1/2/4 channels x zero-page detection none/legacy/multifd,
                    3 dirty rounds with SYNC/FLUSH, over real sockets
  data_kinds        zero, text, random, half and mixed pages, at 4 KiB and
                    every other page size the codec declares
  cross_decode      every path of every codec of the same wire format
                    encodes; every one of them decodes
  golden_vectors    QEMU's own captured channels replay to QEMU's RAM, and
                    payloads of real vendor libraries decode, through every
                    implementation of the codec (from --vectors DIR, else
                    $MFDCOMP_VECTORS, else the vectors shipped with mfdcomp)
  negative          truncated, padded, emptied and scrambled payloads, a
                    foreign codec flag and an oversize length are refused
                    with a typed error; nothing is written outside the pages
  stream_state      thousands of packets per channel, two channels
  context_misuse    a context set up twice, used before set-up or from
                    another thread is refused
  hardware_path     the paths this host offers (with --require-hw, the
                    hardware path must be there and produce every packet)
  throughput        the default image through the engine: ratio, GB/s,
                    packets per path (hardware / software / raw)

A check that does not concern a codec is "not applicable", with the reason;
that is never counted as passed. The exit code is 1 when any check failed.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "conformance",
        help="run the codec conformance suite (the main job)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--codec", action="append", default=[], metavar="NAME", help="codec to check (repeatable)")
    parser.add_argument("--check", action="append", default=[], choices=sorted(CHECKS), help="run only these checks")
    parser.add_argument("--require-hw", action="store_true", help="fail a codec whose hardware path did not run")
    parser.add_argument("--channels", default="1,2,4", metavar="N,N", help="channel counts of the round trips")
    parser.add_argument("--kinds", default=",".join(DATA_KINDS), metavar="K,K", help="data kinds to check")
    parser.add_argument(
        "--size", type=parse_size, default=64 << 20, metavar="SIZE", help="image of the throughput run (64M)"
    )
    parser.add_argument("--transport", choices=("unix", "tcp", "tcp6", "fd"), default="unix")
    parser.add_argument(
        "--vectors",
        type=Path,
        metavar="DIR",
        help="golden vectors, a directory with qemu/ and <codec>/ (default: $MFDCOMP_VECTORS, else the shipped ones)",
    )
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    parser.set_defaults(run=run)


def _csv(text: str, what: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise MfdcompError(f"--{what} needs at least one value")
    if allowed is not None and (bad := [i for i in items if i not in allowed]):
        raise MfdcompError(f"--{what}: unknown {', '.join(bad)} (known: {', '.join(allowed)})")
    return items


def run(args: argparse.Namespace) -> int:
    try:
        channels = tuple(int(c) for c in _csv(args.channels, "channels"))
    except ValueError as exc:
        raise MfdcompError(f"--channels must be numbers separated by commas, got {args.channels!r}") from exc
    kinds = _csv(args.kinds, "kinds", DATA_KINDS)
    args.vectors = _vectors(args.vectors)
    registry = default_registry()
    codecs, broken = select_codecs(registry, args.codec)
    checks = args.check or list(CHECKS)
    with tempfile.TemporaryDirectory(prefix="mfdcomp-conformance-") as tmp:
        config = SuiteConfig(
            workdir=Path(tmp),
            channels=channels,
            kinds=kinds,
            image_size=args.size,
            transport=args.transport,
            require_hw=args.require_hw,
            vectors=args.vectors,
            others=lambda: list(registry.codecs.values()),
        )
        verdicts = broken + run_suite(codecs, config, checks=checks, on_result=_progress)
    failed = not verdicts or any(v.failed for v in verdicts)
    if args.json:
        print_json({"ok": not failed, "verdicts": [v.as_dict() for v in verdicts]})
    else:
        _print_table(verdicts, args)
    # Not run (no device) is not a failure; under --require-hw the hardware check fails instead.
    return 1 if failed else 0


def _vectors(given: Path | None) -> Path | None:
    """The golden vectors to use: as given, from the environment, or a checkout's bundled ones."""
    if given is None and os.environ.get("MFDCOMP_VECTORS"):
        given = Path(os.environ["MFDCOMP_VECTORS"])
    if given is not None:
        if not given.is_dir():
            raise MfdcompError(f"golden vectors {given}: no such directory")
        return given
    # Shipped with the package: the check does not depend on the current folder.
    return PACKAGED_VECTORS if (PACKAGED_VECTORS / "qemu").is_dir() else None


def _progress(codec: str, result: CheckResult) -> None:
    mark = {Status.PASSED: "ok", Status.FAILED: "FAILED", Status.NOT_APPLICABLE: "n/a", Status.NOT_RUN: "NOT RUN"}[
        result.status
    ]
    print(f"  {codec:<10} {result.check:<17} {mark:<7} {result.seconds:6.2f} s", file=sys.stderr, flush=True)


def _paths(verdict: CodecVerdict) -> str:
    notes = verdict.notes("throughput")
    paths = notes.get("paths", {})
    text = " ".join(f"{k}:{v}" for k, v in sorted(paths.items())) or "-"
    impls = notes.get("implementations", {})  # which library produced them
    return text + (" by " + " ".join(f"{k}:{v}" for k, v in sorted(impls.items())) if impls else "")


def _print_table(verdicts: list[CodecVerdict], args: argparse.Namespace) -> None:
    print(f"\nconformance over {args.transport} loopback, {format_bytes(args.size)} mixed image")
    print(f"golden vectors: {args.vectors or 'none (golden_vectors not run)'}")
    print(
        f"{'codec':<16} {'verdict':<8} {'pass':>4} {'fail':>4} {'n/a':>4} {'not run':>7}  {'ratio':>6} {'GB/s':>6}  "
        "packets by path"
    )
    for v in verdicts:
        t = v.notes("throughput")
        ratio = f"{t['ratio']:.3f}" if "ratio" in t else "-"
        rate = f"{t['gb_per_s']:.2f}" if "gb_per_s" in t else "-"
        counts = (
            f"{v.count(Status.PASSED):>4} {v.count(Status.FAILED):>4} {v.count(Status.NOT_APPLICABLE):>4} "
            f"{v.count(Status.NOT_RUN):>7}"
        )
        verdict = v.verdict
        print(f"{v.codec:<16} {verdict:<8} {counts}  {ratio:>6} {rate:>6}  {_paths(v)}")
    for v in verdicts:
        if v.load_error:
            print(f"\n{v.codec}: FAILED TO LOAD: {v.load_error}")
        for r in v.results:
            if r.status is Status.FAILED:
                print(f"\n{v.codec} {r.check}: FAILED: {r.detail}")
    not_applicable = [(v.codec, r) for v in verdicts for r in v.results if r.status is Status.NOT_APPLICABLE]
    if not_applicable:
        print("\nnot applicable (the check does not concern the codec; not counted as passed):")
        for codec, r in not_applicable:
            print(f"  {codec} {r.check}: {r.detail}")
    not_run = [(v.codec, r) for v in verdicts for r in v.results if r.status is Status.NOT_RUN]
    if not_run:
        print("\nNOT RUN (could not run on this host, not counted as passed):")
        for codec, r in not_run:
            print(f"  {codec} {r.check}: {r.detail}")
    hw = [(v.codec, v.notes("hardware_path")) for v in verdicts if v.notes("hardware_path")]
    if hw:
        print("\nhardware paths:")
        for codec, notes in hw:
            print(f"  {codec}: hardware present, sends through {notes['sends_through']}")
    passed = sum(1 for v in verdicts if v.verdict == "PASS")
    failed = sum(1 for v in verdicts if v.failed)
    others = len(verdicts) - passed - failed
    print(
        f"\n{passed} of {len(verdicts)} codecs passed"
        + (f", {failed} FAILED" if failed else "")
        + (f", {others} with no check run (NOT RUN)" if others else "")
    )

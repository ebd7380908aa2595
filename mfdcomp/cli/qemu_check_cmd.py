"""``mfdcomp qemu-check``: real QEMU migrations through the tap, the whole matrix, on demand."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

from mfdcomp.cli.common import print_json
from mfdcomp.errors import MfdcompError
from mfdcomp.qemu.harness import DEFAULT_RAM_SIZE, CaseResult, full_matrix, quick_matrix, run_case
from mfdcomp.qemu.locate import HW_INSTALL_SCRIPT, INSTALL_SCRIPT
from mfdcomp.units import format_bytes, parse_size

DESCRIPTION = f"""\
Migrate a generated guest (a paused source, TCG, RAM in /dev/shm) between
two real QEMU processes with mfdcomp's tap in between, for every row of the
matrix: none, zlib and zstd with multifd and legacy zero-page detection on 2
and 4 channels; the tap transcoding none>zlib, none>zstd, zstd>zlib,
zlib>zstd and each codec to itself; QEMU 7.2 <-> 10.0 (machine pc-q35-7.2)
for none, zlib and zstd, and transcoding 7.2>10.0 none>zstd and 10.0>7.2
zstd>zlib. With QEMU 10.0 built with qpl, uadk and qatzip (build 10.0hw):
qpl, uadk, qatzip level 1 and 9 with each zero-page mode on 2 and 4
channels; the tap transcoding none>qpl, none>qatzip, none>uadk, qpl>zstd,
qatzip>qpl and uadk>none; and that build against Debian's 10.0 both ways
for none, zlib and zstd. Without IAA, QAT or a HiSilicon device that QEMU
uses libqpl's software path, QATzip's software backup, and sends uadk pages
raw. --quick runs a subset with each codec, each zero-page mode,
transcoding, 7.2 and the 10.0hw build; --match TEXT picks rows by name.

A row passes when both QEMUs completed, the destination's RAM equals the
source's (sha256 of the RAM files), the tap parsed and decoded every packet,
and its recording replays to the guest's RAM (for a transcoding row, the
recording of what the destination received too). The table sets QEMU's own
timing (query-migrate total-time and downtime on the source) beside the
tap's figures. Exits 1 when a row fails. A row whose QEMU build the install
script found unable to run on this host (QEMU 7.2 on Debian 13, say) is
shown as N/A with the reason, and does not fail the check.

QEMU 10.0 and the private QEMU 7.2 come from {INSTALL_SCRIPT}, the 10.0hw build
from {HW_INSTALL_SCRIPT} (run them as root, or `bash ci/setup.sh --test`).
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "qemu-check",
        help="migrate between real QEMUs through the tap, over the codec matrix",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="run the representative subset only")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--match",
        metavar="TEXT",
        action="append",
        help="run only the rows whose name contains TEXT (repeatable: any of them), e.g. --match 10.0hw or "
        "--match qatzip",
    )
    parser.add_argument(
        "--ram-size",
        type=parse_size,
        default=DEFAULT_RAM_SIZE,
        metavar="SIZE",
        help=f"guest RAM of every row (default {format_bytes(DEFAULT_RAM_SIZE)})",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="seconds one migration may take (120)"
    )
    parser.set_defaults(run=run)


_HEAD = (
    f"{'case':<40} {'verdict':<7} {'QEMU ms':>7} {'down ms':>7} {'tap in':>10} {'tap out':>10} "
    f"{'packets':>7} {'SYNC':>5} {'ratio in':>8} {'ratio out':>9} {'tap MiB/s':>9} {'wall s':>6}"
)


def _row(result: CaseResult) -> str:
    migration, tap = result.migration, result.tap

    def number(value: object) -> str:
        return "-" if value is None else str(value)

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    line = f"{result.case.name:<40} {result.verdict:<7} "
    line += f"{number(migration.total_time_ms if migration else None):>7} "
    line += f"{number(migration.downtime_ms if migration else None):>7} "
    if tap is not None:
        totals = tap.totals()
        line += (
            f"{format_bytes(totals['multifd_bytes_in']):>10} {format_bytes(totals['multifd_bytes_out']):>10} "
            f"{totals['packets']:>7} {totals['sync_packets']:>5} {ratio(totals['ratio_in']):>8} "
            f"{ratio(totals['ratio_out']):>9} {totals['throughput_bytes_per_s'] / (1 << 20):>9.1f} "
        )
    else:
        line += f"{'-':>10} {'-':>10} {'-':>7} {'-':>5} {'-':>8} {'-':>9} {'-':>9} "
    return line + f"{result.seconds:>6.1f}"


def run(args: argparse.Namespace) -> int:
    cases = quick_matrix() if args.quick else full_matrix()
    cases = [dataclasses.replace(case, ram_size=args.ram_size) for case in cases]
    if args.match:
        cases = [case for case in cases if any(text in case.name for text in args.match)]
        if not cases:
            raise MfdcompError(f"no row of the matrix matches {' or '.join(map(repr, args.match))}")
    started = time.monotonic()
    results: list[CaseResult] = []
    if not args.json:
        print(_HEAD, flush=True)
    for case in cases:
        result = run_case(case, timeout=args.timeout)
        results.append(result)
        if not args.json:
            print(_row(result), flush=True)
            for problem in [*result.problems, *filter(None, [result.unavailable])]:
                print(f"    {problem}", flush=True)
    failed = sum(not r.ok for r in results)
    not_run = sum(r.unavailable is not None for r in results)
    seconds = time.monotonic() - started
    if args.json:
        print_json(
            {
                "matrix": "quick" if args.quick else "full",
                "ram_size": args.ram_size,
                "seconds": round(seconds, 3),
                "passed": len(results) - failed - not_run,
                "failed": failed,
                "not_run": not_run,
                "rows": [r.as_dict() for r in results],
            }
        )
    else:
        versions = sorted(
            {v for r in results if r.migration for v in (r.migration.source_version, r.migration.destination_version)}
        )
        for version in versions:
            print(f"  {version}")
        not_run_text = f", {not_run} not run (a QEMU build cannot run here)" if not_run else ""
        print(
            f"qemu-check: {len(results) - failed - not_run} passed, {failed} failed{not_run_text} in {seconds:.0f} s",
            file=sys.stderr,
        )
    return 1 if failed else 0

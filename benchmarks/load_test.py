"""Load test: 8 channels moving a 4 GiB image with random dirty rounds for N minutes.

Usage: python benchmarks/load_test.py [--minutes 10] [--size 4G] [--channels 8] [--codec none]
                                      [--dirty-min 0.005] [--dirty-max 0.05] [--json FILE]

Two processes, as in production:

* the destination is ``mfdcomp recv --listen unix:... --out TARGET --json`` (the
  target a sparse file in --workdir, mapped shared: its pages show as RssFile);
* the source is this script again (``--role source``): an anonymous 4 GiB block
  filled with a mixed image (zero=10,text=40,random=30,half=20), a first round
  of every page, then rounds that each dirty a random fraction between
  --dirty-min and --dirty-max of the pages, until --minutes have passed; then
  EOS, both sides' sha256, and the destination's verdict.

The parent samples VmRSS, RssAnon, RssFile and RssShmem of both processes every
--sample seconds. Memory is flat when, after the first round has touched every
page, the samples stop growing: the summary gives the first-round and last
values and the largest growth after the first round. It prints a summary and
writes everything (samples, rounds, GB/s, digests) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MFDCOMP = [sys.executable, "-m", "mfdcomp"]
MIX = "zero=10,text=40,random=30,half=20"
RSS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def rss_of(pid: int) -> dict[str, int]:
    """The process's resident memory, in bytes, by kind (from /proc/PID/status)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in RSS_FIELDS:
                    values[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


# --- the source (a child process) ----------------------------------------------------------------


def run_source(args: argparse.Namespace) -> int:
    """A time-bound migration: mfdcomp's migrate() with rounds planned until the deadline."""
    sys.path.insert(0, str(REPO))
    from mfdcomp.clients.ram import RamClient
    from mfdcomp.engine.migrate import MigrateOptions, RoundReport, migrate
    from mfdcomp.imagegen import fill_memory, parse_mix
    from mfdcomp.registry import get_codec
    from mfdcomp.transport.address import parse_address
    from mfdcomp.transport.sockets import connect

    address = parse_address(args.address)
    rng = np.random.default_rng(args.seed)
    report: dict[str, Any] = {"rounds": []}
    with RamClient.anonymous([("ram0", args.size)]) as ram:
        began = time.monotonic()
        fill_memory(ram.blocks["ram0"].memory, parse_mix(MIX), args.seed)
        report["fill_seconds"] = time.monotonic() - began
        print(json.dumps({"event": "filled", "seconds": report["fill_seconds"]}), flush=True)
        started = time.monotonic()
        deadline = started + args.seconds

        def plan(number: int) -> float | None:
            return float(rng.uniform(args.dirty_min, args.dirty_max)) if time.monotonic() < deadline else None

        def on_round(done: RoundReport) -> None:
            report["rounds"].append({
                "round": done.number, "at": time.monotonic() - started - done.perturb_seconds - done.send_seconds,
                "dirty_fraction": done.dirty_fraction, "pages": done.pages,
                "perturb_seconds": done.perturb_seconds, "send_seconds": done.send_seconds,
                "gb_per_s": done.pages * 4096 / done.send_seconds / 1e9 if done.send_seconds else 0.0,
            })  # fmt: skip
            if done.number == 0:
                print(json.dumps({"event": "first-round", "seconds": done.send_seconds}), flush=True)

        options = MigrateOptions(channels=args.channels, seed=args.seed, result_timeout=600.0)
        result = migrate(ram, lambda: connect(address), get_codec(args.codec), options, plan=plan, on_round=on_round)
        report.update(
            transfer_seconds=result.transfer_seconds,
            guest_bytes=sum(r["pages"] for r in report["rounds"]) * 4096,
            wire_bytes=sum(s.wire_bytes for s in result.channels),
            packets=sum(s.packets for s in result.channels),
            digests=result.digests,
            destination=result.destination,
        )
    print(json.dumps({"event": "done", **report}), flush=True)
    return 0


# --- the parent: both processes, samples, summary ------------------------------------------------


def _sampler(pids: dict[str, int], interval: float, samples: list[dict[str, Any]], stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        row: dict[str, Any] = {"t": round(time.monotonic() - started, 2)}
        for role, pid in pids.items():
            row[role] = rss_of(pid)
        samples.append(row)
        stop.wait(interval)


def _growth(samples: list[dict[str, Any]], role: str, field: str, after: float) -> dict[str, float]:
    values = [(s["t"], s[role].get(field, 0)) for s in samples if s[role]]
    later = [v for t, v in values if t >= after]
    if not later:
        return {}
    tenth = max(1, len(later) // 10)
    return {
        "at_first_round_end_mib": later[0] / 2**20,
        "last_mib": later[-1] / 2**20,
        "max_mib": max(later) / 2**20,
        "growth_after_first_round_mib": (max(later) - later[0]) / 2**20,
        # Drift, not a transient peak: the median of the last tenth of the run against the first tenth
        # after round 1 (the last sample or two may already be the process ending).
        "drift_mib": (statistics.median(later[-tenth - 2 : -2] or later[-tenth:]) - statistics.median(later[:tenth]))
        / 2**20,
    }


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mfdcomp-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "load.sock"
    target = workdir / "target.img"
    recv = subprocess.Popen(
        [*MFDCOMP, "recv", "--listen", f"unix:{sock}", "--out", str(target), "--json", "--connect-timeout", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert recv.stderr is not None
    ready = recv.stderr.readline()
    if "listening on" not in ready:
        raise SystemExit(f"mfdcomp recv did not start: {ready}{recv.communicate()[1]}")
    source = subprocess.Popen(
        [sys.executable, __file__, "--role", "source", "--address", f"unix:{sock}", "--size", str(args.size),
         "--channels", str(args.channels), "--codec", args.codec, "--seconds", str(args.minutes * 60),
         "--dirty-min", str(args.dirty_min), "--dirty-max", str(args.dirty_max), "--seed", str(args.seed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    sampler = threading.Thread(
        target=_sampler, args=({"source": source.pid, "destination": recv.pid}, args.sample, samples, stop)
    )
    sampler.start()
    began = time.monotonic()
    events: list[dict[str, Any]] = []
    assert source.stdout is not None
    first_round_end: float | None = None
    for line in source.stdout:
        event = json.loads(line)
        events.append(event)
        if event.get("event") == "first-round":
            first_round_end = time.monotonic() - began
        if not args.quiet and event.get("event") != "done":
            print(f"[{time.monotonic() - began:7.1f} s] source: {event}", file=sys.stderr, flush=True)
    source_err = source.communicate()[1]
    recv_out, recv_err = recv.communicate(timeout=600)
    stop.set()
    sampler.join()
    done = next((e for e in events if e.get("event") == "done"), None)
    if source.returncode or done is None:
        print(source_err, file=sys.stderr)
        print(recv_err, file=sys.stderr)
        raise SystemExit(f"the source failed (exit {source.returncode})")
    destination = json.loads(recv_out) if recv.returncode == 0 or recv_out.strip().startswith("{") else {}
    rounds = done["rounds"]
    dirty = [r for r in rounds[1:]]
    after = (first_round_end or 0.0) + args.sample
    summary = {
        "size_bytes": args.size,
        "channels": args.channels,
        "codec": args.codec,
        "minutes_asked": args.minutes,
        "wall_seconds": time.monotonic() - began,
        "fill_seconds": done["fill_seconds"],
        "rounds": len(rounds),
        "guest_bytes": done["guest_bytes"],
        "wire_bytes": done["wire_bytes"],
        "packets": done["packets"],
        "transfer_seconds": done["transfer_seconds"],
        "gb_per_s_overall": done["guest_bytes"] / done["transfer_seconds"] / 1e9,
        "gb_per_s_first_round": rounds[0]["gb_per_s"],
        "gb_per_s_dirty_rounds_median": statistics.median(r["gb_per_s"] for r in dirty) if dirty else None,
        "sha256_source": done["digests"],
        "sha256_destination": destination.get("digests"),
        "sha256_equal": done["digests"] == destination.get("digests") and bool(done["destination"].get("ok")),
        "destination_exit": recv.returncode,
        "rss": {
            role: {field: _growth(samples, role, field, after) for field in ("VmRSS", "RssAnon")}
            for role in ("source", "destination")
        },
    }
    report = {"summary": summary, "rounds": rounds, "samples": samples}
    out = Path(args.json) if args.json else workdir / "load_test.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    _print_summary(summary, samples, out)
    if not args.keep:
        target.unlink(missing_ok=True)
    return 0 if summary["sha256_equal"] and recv.returncode == 0 else 1


def _print_summary(summary: dict[str, Any], samples: list[dict[str, Any]], out: Path) -> None:
    gib = summary["size_bytes"] / 2**30
    print(
        f"load test: {gib:g} GiB over {summary['channels']} channels ({summary['codec']}), "
        f"{summary['rounds']} rounds in {summary['transfer_seconds']:.0f} s"
    )
    print(
        f"  moved {summary['guest_bytes'] / 1e9:.1f} GB of pages: {summary['gb_per_s_overall']:.2f} GB/s overall, "
        f"{summary['gb_per_s_first_round']:.2f} GB/s first round, "
        f"{summary['gb_per_s_dirty_rounds_median'] or 0:.2f} GB/s median dirty round"
    )
    for role, fields in summary["rss"].items():
        for field, numbers in fields.items():
            if numbers:
                print(
                    f"  {role:11s} {field:8s} {numbers['at_first_round_end_mib']:8.0f} MiB after round 1, "
                    f"last {numbers['last_mib']:8.0f} MiB, max {numbers['max_mib']:8.0f} MiB "
                    f"(peak growth after round 1: {numbers['growth_after_first_round_mib']:+.0f} MiB, "
                    f"drift {numbers['drift_mib']:+.0f} MiB)"
                )
    step = max(1, len(samples) // 12)
    print("  RSS over time (MiB, VmRSS source / destination):")
    for row in samples[::step]:
        src, dst = row["source"].get("VmRSS", 0) / 2**20, row["destination"].get("VmRSS", 0) / 2**20
        print(f"    t={row['t']:7.1f} s  {src:8.0f} / {dst:8.0f}")
    print(f"  sha256 equal: {summary['sha256_equal']}  ({summary['sha256_source'].get('ram0', '')[:16]}...)")
    print(f"  JSON: {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the dirty rounds go on (10)")
    parser.add_argument("--size", default="4G", help="image size (4G)")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--codec", default="none")
    parser.add_argument("--dirty-min", type=float, default=0.005, help="least fraction of pages dirtied per round")
    parser.add_argument("--dirty-max", type=float, default=0.05, help="most fraction of pages dirtied per round")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between RSS samples (1)")
    parser.add_argument("--workdir", help="where the target file goes (a new temporary directory)")
    parser.add_argument("--json", help="where the JSON report goes (WORKDIR/load_test.json)")
    parser.add_argument("--keep", action="store_true", help="keep the target file")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--role", choices=("parent", "source"), default="parent", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from mfdcomp.units import parse_size

    args.size = parse_size(str(args.size))
    if args.role == "source":
        return run_source(args)
    return run(args)


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())

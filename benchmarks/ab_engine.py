"""Two versions of mfdcomp moving the same image, alternating: before/after figures on a noisy machine.

Usage: python benchmarks/ab_engine.py IMAGE --baseline CHECKOUT [--repeats 5] [--channels 2]
                                        [--codec none] [--transport unix] [--target-dir DIR] [--json]

CHECKOUT is another checkout of mfdcomp (``git worktree add /tmp/base <commit>``).
Each repeat runs `mfdcomp recv` + `mfdcomp send` once with the baseline's
package and once with this checkout's, back to back, so that both see the
same moment of a shared machine, each right after the bench's memory warm-up;
the best and the median transfer time of each and the CPU seconds of each side
are reported. Plugins come from the installed environment for both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mfdcomp.bench.memory import warm_memory, warm_size

HERE = Path(__file__).resolve().parent.parent


def run_pair(tree: Path, image: Path, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """One transfer with the mfdcomp package of ``tree``; seconds and CPU seconds of each side."""
    python = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tree)!r}); from mfdcomp.cli import main; "
              "sys.exit(main())"]  # fmt: skip
    listen = f"unix:{workdir / 'ab.sock'}" if args.transport == "unix" else "tcp:127.0.0.1:0"
    target = workdir / "target.img"
    target.unlink(missing_ok=True)
    recv = subprocess.Popen(
        [*python, "recv", "--listen", listen, "--out", str(target), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert recv.stderr is not None
    ready = recv.stderr.readline()
    if "listening on " not in ready:
        raise RuntimeError(f"mfdcomp recv ({tree}) did not start: {ready}{recv.communicate()[1]}")
    address = ready.rsplit("listening on ", 1)[1].strip()
    warm_memory(warm_size(image.stat().st_size))  # as the bench does: see mfdcomp/bench/memory.py
    sent = subprocess.run(
        [*python, "send", str(image), "--to", address, "--multifd-channels", str(args.channels),
         "--multifd-compression", args.codec, "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    out, err = recv.communicate(timeout=300)
    if sent.returncode or recv.returncode:
        raise RuntimeError(f"transfer failed ({tree}): send: {sent.stderr.strip()} recv: {err.strip()}")
    send_summary, recv_summary = json.loads(sent.stdout), json.loads(out)
    return {
        "seconds": send_summary["transfer_seconds"],
        "send_cpu_seconds": send_summary["transfer_cpu_seconds"],
        "recv_cpu_seconds": recv_summary["transfer_cpu_seconds"],
    }


def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    return {
        "seconds": seconds,
        "best_seconds": min(seconds),
        "median_seconds": statistics.median(seconds),
        "send_cpu_seconds": statistics.median(r["send_cpu_seconds"] for r in runs),
        "recv_cpu_seconds": statistics.median(r["recv_cpu_seconds"] for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of mfdcomp")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--codec", default="none")
    parser.add_argument("--transport", choices=("unix", "tcp"), default="unix")
    parser.add_argument(
        "--target-dir", type=Path, default=None, help="where the received image goes (default: the temp folder)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.baseline / "mfdcomp" / "__init__.py").is_file():
        parser.error(f"{args.baseline} is not an mfdcomp checkout (no mfdcomp/__init__.py)")
    trees = {"baseline": args.baseline.resolve(), "this": HERE}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(dir=args.target_dir) as tmp:
        for number in range(args.repeats):
            for name, tree in trees.items():
                runs[name].append(run_pair(tree, args.image, args, Path(tmp)))
                print(f"ab_engine: run {number + 1}/{args.repeats} {name}: {runs[name][-1]['seconds']:.3f} s",
                      file=sys.stderr)  # fmt: skip
    results = {name: summary(r) for name, r in runs.items()}
    if args.json:
        print(json.dumps({"image": str(args.image), "codec": args.codec, "channels": args.channels} | results))
        return 0
    print(f"{args.image.name}, {args.codec}, {args.channels} channels, {args.transport}, {args.repeats} runs each")
    print(f"{'version':<10} {'best s':>8} {'median s':>9} {'CPU s send/recv':>16}")
    for name, r in results.items():
        print(
            f"{name:<10} {r['best_seconds']:>8.3f} {r['median_seconds']:>9.3f} "
            f"{r['send_cpu_seconds']:>7.2f}/{r['recv_cpu_seconds']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

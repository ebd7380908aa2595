"""The engine against the loopback limit: `mfdcomp send` / `mfdcomp recv` as two processes.

Usage: python benchmarks/engine_bench.py [--image PATH | --size 1G] [--channels 2]
                                          [--transports unix,tcp] [--repeats 3] [--json]

For each transport it alternates, ``--repeats`` times:

* the engine: `mfdcomp recv --listen ADDR --out TARGET` and `mfdcomp send IMAGE
  --to ADDR --multifd-channels N --json` (nocomp, zero-page-detection multifd);
  its GB/s is guest bytes over the sender's transfer time (connect to the last
  packet written, before the two sha256 verifications);
* the limit: benchmarks/loopback_pump.py --image IMAGE, plain Python sendmsg /
  recv_into of the same pages over the same number of connections into a
  fresh target file created the same way.

Runs alternate so that both see the same machine; the median and the best of
each are reported with their ratio. Without --image, a mixed image
(zero=10,text=40,random=30,half=20, seed 1) of --size is generated once under
the temporary directory and reused.
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

from mfdcomp.units import parse_size

HERE = Path(__file__).resolve().parent
MFDCOMP = [sys.executable, "-m", "mfdcomp"]


def ensure_image(path: Path, size: int) -> Path:
    if path.exists() and path.stat().st_size == size:
        return path
    subprocess.run(
        [*MFDCOMP, "gen-image", str(path), "--size", str(size), "--mix", "zero=10,text=40,random=30,half=20",
         "--seed", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def engine_run(image: Path, transport: str, channels: int, workdir: Path) -> dict[str, Any]:
    listen = f"unix:{workdir / 'bench.sock'}" if transport == "unix" else "tcp:127.0.0.1:0"
    recv = subprocess.Popen(
        [*MFDCOMP, "recv", "--listen", listen, "--out", str(workdir / "target.img"), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert recv.stderr is not None
    ready = recv.stderr.readline()  # "mfdcomp recv: listening on ADDRESS"
    if "listening on " not in ready:
        raise RuntimeError(f"mfdcomp recv did not start: {ready}{recv.communicate()[1]}")
    address = ready.rsplit("listening on ", 1)[1].strip()
    sent = subprocess.run(
        [*MFDCOMP, "send", str(image), "--to", address, "--multifd-channels", str(channels), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    recv_out, recv_err = recv.communicate(timeout=120)
    if sent.returncode or recv.returncode:
        raise RuntimeError(f"engine run failed: send: {sent.stderr.strip()} recv: {recv_err.strip()}")
    summary = json.loads(sent.stdout)
    received = json.loads(recv_out)
    return {
        "seconds": summary["transfer_seconds"],
        "gb_per_s": summary["gb_per_s"],
        "send_cpu_seconds": summary["transfer_cpu_seconds"],
        "recv_cpu_seconds": received["transfer_cpu_seconds"],
    }


def pump_run(image: Path, transport: str, channels: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HERE / "loopback_pump.py"), "--image", str(image), "--transport", transport,
         "--connections", str(channels), "--repeats", "1", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rate = json.loads(done.stdout)["gb_per_s"]
    return {"seconds": image.stat().st_size / rate / 1e9, "gb_per_s": rate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, help="image to send (default: a generated mixed image)")
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="size of the generated image (1G)")
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--transports", default="unix,tcp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"channels": args.channels, "transports": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        image = args.image or ensure_image(Path(tempfile.gettempdir()) / f"mfdcomp-bench-{args.size}.img", args.size)
        results["image"] = str(image)
        results["image_bytes"] = image.stat().st_size
        for transport in args.transports.split(","):
            engine: list[dict[str, Any]] = []
            pump: list[dict[str, Any]] = []
            for _ in range(args.repeats):
                pump.append(pump_run(image, transport, args.channels))
                engine.append(engine_run(image, transport, args.channels, workdir))
                (workdir / "target.img").unlink(missing_ok=True)
            e = statistics.median(r["gb_per_s"] for r in engine)
            p = statistics.median(r["gb_per_s"] for r in pump)
            results["transports"][transport] = {
                "engine_gb_per_s": [r["gb_per_s"] for r in engine],
                "limit_gb_per_s": [r["gb_per_s"] for r in pump],
                "engine_median": e,
                "limit_median": p,
                "engine_best_seconds": min(r["seconds"] for r in engine),
                "send_cpu_seconds": statistics.median(r["send_cpu_seconds"] for r in engine),
                "recv_cpu_seconds": statistics.median(r["recv_cpu_seconds"] for r in engine),
                "ratio_of_medians": e / p,
            }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{results['image_bytes'] / 2**30:.2f} GiB image, {args.channels} channels, nocomp, median of {args.repeats}")
    print(
        f"{'transport':<10} {'engine GB/s':>12} {'limit GB/s':>11} {'ratio':>6} {'best s':>7} {'CPU s send/recv':>16}"
    )
    for transport, r in results["transports"].items():
        print(
            f"{transport:<10} {r['engine_median']:>12.2f} {r['limit_median']:>11.2f} "
            f"{r['ratio_of_medians'] * 100:>5.0f}% {r['engine_best_seconds']:>7.2f} "
            f"{r['send_cpu_seconds']:>7.2f}/{r['recv_cpu_seconds']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

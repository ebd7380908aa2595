"""Throughput of mfdcomp.zeropage against the memory bandwidth of this machine.

Usage: python benchmarks/zeropage_bench.py [--size-mib N] [--page-size B]
                                           [--repeats R] [--json]

For two buffers of ``--size-mib`` MiB (10 % zero pages with random data in the
rest, and 100 % zero pages, where every byte must be read) it times, on one
thread and taking the best of ``--repeats`` runs:

* ``zero_page_mask`` over the whole buffer;
* two baselines over the same buffer: a read-only pass (``np.add.reduce`` over
  uint64 words, the read bandwidth limit) and ``np.copyto`` into another buffer;
* ``zero_flags`` on batches of 128 page offsets (a full multifd packet of 4 KiB
  pages) drawn at random from the buffer, and on 128 consecutive pages.

All rates are GB/s (10**9 bytes) of pages examined or moved, per core.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from mfdcomp.zeropage import zero_flags, zero_page_mask

GOAL_GBPS = 5.0
BATCH = 128  # pages per multifd packet of 4 KiB pages (512 KiB)
N_BATCHES = 200


def best_seconds(func: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls: the least disturbed by other load."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def build(size: int, page_size: int, zero_fraction: float, seed: int) -> tuple[bytearray, int]:
    """A buffer of random pages of which ``zero_fraction`` are all zero."""
    rng = np.random.default_rng(seed)
    n_pages = size // page_size
    buf = bytearray(rng.bytes(n_pages * page_size))
    zero = rng.random(n_pages) < zero_fraction
    np.frombuffer(buf, dtype=np.uint8).reshape(n_pages, page_size)[zero] = 0
    return buf, int(zero.sum())


def measure(buf: bytearray, n_zero: int, page_size: int, repeats: int, seed: int) -> dict[str, float]:
    size = len(buf)
    words: npt.NDArray[np.uint64] = np.frombuffer(buf, dtype=np.uint64)
    target = np.empty_like(words)

    found = int(zero_page_mask(buf, page_size).sum())
    if found != n_zero:
        raise SystemExit(f"zero_page_mask found {found} zero pages, expected {n_zero}")

    mask_s = best_seconds(lambda: zero_page_mask(buf, page_size), repeats)
    read_s = best_seconds(lambda: np.add.reduce(words), repeats)
    copy_s = best_seconds(lambda: np.copyto(target, words), repeats)

    rng = np.random.default_rng(seed)
    n_pages = size // page_size
    random_batches = [(rng.choice(n_pages, BATCH, replace=False) * page_size).tolist() for _ in range(N_BATCHES)]
    starts = rng.integers(0, n_pages - BATCH + 1, N_BATCHES)
    consecutive_batches = [[(int(s) + k) * page_size for k in range(BATCH)] for s in starts]

    def run(batches: list[list[int]]) -> None:
        for offsets in batches:
            zero_flags(buf, offsets, page_size)

    random_s = best_seconds(lambda: run(random_batches), repeats) / N_BATCHES
    consecutive_s = best_seconds(lambda: run(consecutive_batches), repeats) / N_BATCHES
    batch_bytes = BATCH * page_size
    return {
        "zero_page_mask_gbps": size / mask_s / 1e9,
        "read_baseline_gbps": size / read_s / 1e9,
        "copy_baseline_gbps": size / copy_s / 1e9,
        "mask_vs_read": read_s / mask_s,
        "zero_flags_random_us": random_s * 1e6,
        "zero_flags_random_gbps": batch_bytes / random_s / 1e9,
        "zero_flags_consecutive_us": consecutive_s * 1e6,
        "zero_flags_consecutive_gbps": batch_bytes / consecutive_s / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Zero-page detection throughput.")
    parser.add_argument("--size-mib", type=int, default=256, help="buffer size in MiB (default 256)")
    parser.add_argument("--page-size", type=int, default=4096, help="page size in bytes (default 4096)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per timing, best kept (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    size = args.size_mib << 20
    if size < BATCH * args.page_size or size % args.page_size:
        parser.error(f"--size-mib must hold a whole number of at least {BATCH} pages")

    results: dict[str, dict[str, float]] = {}
    for seed, (name, fraction) in enumerate((("mixed_10pct_zero", 0.1), ("all_zero", 1.0))):
        buf, n_zero = build(size, args.page_size, fraction, seed)
        results[name] = measure(buf, n_zero, args.page_size, args.repeats, seed)
        del buf

    worst = min(r["zero_page_mask_gbps"] for r in results.values())
    report: dict[str, Any] = {
        "size_mib": args.size_mib,
        "page_size": args.page_size,
        "repeats": args.repeats,
        "batch_pages": BATCH,
        "numpy": np.__version__,
        "goal_gbps": GOAL_GBPS,
        "goal_met": worst >= GOAL_GBPS,
        "datasets": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0

    print(f"{args.size_mib} MiB of {args.page_size}-byte pages, best of {args.repeats}, one thread, GB/s of pages")
    rows = [
        ("zero_page_mask", "zero_page_mask_gbps", "{:.2f}"),
        ("read baseline (np.add.reduce)", "read_baseline_gbps", "{:.2f}"),
        ("copy baseline (np.copyto)", "copy_baseline_gbps", "{:.2f}"),
        ("mask speed / read speed", "mask_vs_read", "{:.2f}"),
        (f"zero_flags, {BATCH} random pages: us", "zero_flags_random_us", "{:.1f}"),
        (f"zero_flags, {BATCH} random pages", "zero_flags_random_gbps", "{:.2f}"),
        (f"zero_flags, {BATCH} consecutive: us", "zero_flags_consecutive_us", "{:.1f}"),
        (f"zero_flags, {BATCH} consecutive", "zero_flags_consecutive_gbps", "{:.2f}"),
    ]
    names = list(results)
    print(f"{'':38}" + "".join(f"{n:>18}" for n in names))
    for label, key, fmt in rows:
        print(f"{label:38}" + "".join(f"{fmt.format(results[n][key]):>18}" for n in names))
    print(
        f"goal >= {GOAL_GBPS} GB/s for zero_page_mask: {'met' if report['goal_met'] else 'NOT met'} (worst {worst:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

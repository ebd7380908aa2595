#!/usr/bin/env python3
"""A longer fuzz campaign than CI's: the wire reader, a real channel thread and every codec's decoder.

Uses the harness of ``tests/test_fuzz_wire.py`` and ``tests/test_fuzz_codecs.py``
(same seeds, same mutations, same bounds on time, heap, RSS and guard bytes)
with its own random inputs, and counts them. Any failing input is written to
``--crash-dir`` (seed, ops and a reproduction line) and counted; the campaign
goes on.

    python3 scripts/fuzz_campaign.py --seconds 120 --json reports/fuzz.json
    python3 scripts/fuzz_campaign.py --engine atheris --seconds 60   # coverage-guided (libFuzzer)

With ``--engine atheris`` each target runs under atheris (libFuzzer) in a child
process, coverage-guided over mfdcomp's code, seeded with the golden captures'
records; libFuzzer's own count of executions is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGETS = ("reader", "engine", "codecs", "loader")
ATHERIS_TARGETS = ("reader", "engine", "codecs")  # the loader's inputs are structured mutations: random only


@dataclass
class TargetStats:
    inputs: int = 0
    typed_errors: int = 0
    valid: int = 0
    failures: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    error_kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class Campaign:
    engine: str
    seed: int
    seconds: float
    targets: dict[str, TargetStats] = field(default_factory=dict)
    crashes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def inputs(self) -> int:
        return sum(t.inputs for t in self.targets.values())

    @property
    def failures(self) -> int:
        return sum(t.failures for t in self.targets.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "seed": self.seed,
            "seconds": self.seconds,
            "inputs": self.inputs,
            "failures": self.failures,
            "targets": {name: asdict(stats) for name, stats in self.targets.items()},
            "crashes": self.crashes,
        }


def _one_input(target: str, rng: random.Random) -> tuple[Callable[[], Any], dict[str, Any]]:
    """A random input for ``target``: the call that checks it, and how to reproduce it."""
    from tests import test_fuzz_codecs as fc
    from tests import test_fuzz_wire as fw

    if target == "loader":  # a crafted mapped-ram file (mfdcomp recv --listen file:)
        from tests import test_fuzz_mappedram as fm

        folder = Path(tempfile.gettempdir()) / f"mfdcomp-fuzz-loader-{os.getpid()}"
        folder.mkdir(exist_ok=True)
        file_ops = fm.random_ops(rng)
        return lambda: fm.check_loader_input(file_ops, folder), {"ops": file_ops}
    if target in ("reader", "engine"):
        seeds = fw.all_seeds()
        index = rng.randrange(len(seeds))
        ops = fw.random_ops(rng)
        if target == "reader":
            splits = [rng.randint(1, 70_000) for _ in range(rng.randint(0, 6))]
            strict = rng.random() < 0.7
            return (
                lambda: fw.check_reader_input(seeds[index], ops, splits, strict),
                {"seed": seeds[index].name, "ops": ops, "splits": splits, "strict": strict},
            )
        return lambda: fw.check_engine_input(seeds[index], ops), {"seed": seeds[index].name, "ops": ops}
    label = rng.choice(fc.VARIANTS)
    channels = fc.channels_for(label)
    channel = channels[rng.randrange(len(channels))]
    index = rng.randrange(len(channel.packets))
    ops = fc.random_payload_ops(rng)
    scattered = rng.random() < 0.5
    return (
        lambda: fc.check_codec_input(label, channel, index, ops, scattered),
        {"codec": label, "channel": channel.name, "packet": index, "ops": ops, "scattered": scattered},
    )


def _error_of(result: Any) -> BaseException | None:
    error = getattr(result, "error", result)
    return error if isinstance(error, BaseException) else None


def run_random(seconds: float, seed: int, targets: list[str], crash_dir: Path | None, quiet: bool) -> Campaign:
    campaign = Campaign("random", seed, seconds, {t: TargetStats() for t in targets})
    rng = random.Random(seed)
    tracemalloc.start()
    started = time.monotonic()
    share = seconds / len(targets)
    for number, target in enumerate(targets):
        stats = campaign.targets[target]
        deadline = started + share * (number + 1)
        while time.monotonic() < deadline:
            check, repro = _one_input(target, rng)
            began = time.perf_counter()
            try:
                result = check()
            except BaseException as exc:  # the harness's assertions: a bound broken, an untyped error, a guard hit
                if isinstance(exc, KeyboardInterrupt):
                    raise
                stats.failures += 1
                crash = {"target": target, **repro, "failure": f"{type(exc).__name__}: {exc}"[:2000]}
                crash["traceback"] = traceback.format_exc()[-4000:]
                campaign.crashes.append(crash)
                if crash_dir is not None:
                    crash_dir.mkdir(parents=True, exist_ok=True)
                    (crash_dir / f"{target}-{stats.inputs}.json").write_text(json.dumps(crash, indent=1, default=str))
                if not quiet:
                    print(f"FAILURE in {target}: {crash['failure'][:300]}", file=sys.stderr)
            else:
                error = _error_of(result)
                if error is None:
                    stats.valid += 1
                else:
                    stats.typed_errors += 1
                    name = type(error).__name__
                    stats.error_kinds[name] = stats.error_kinds.get(name, 0) + 1
            took = time.perf_counter() - began
            stats.inputs += 1
            stats.seconds += took
            stats.slowest = max(stats.slowest, took)
    tracemalloc.stop()
    campaign.seconds = time.monotonic() - started
    return campaign


# --- atheris (libFuzzer) -------------------------------------------------------------------------

_ATHERIS_CHILD = r"""
import sys, atheris
sys.path.insert(0, {repo!r})
with atheris.instrument_imports(include=["mfdcomp", "mfdcomp_zlib", "mfdcomp_zstd", "mfdcomp_qpl",
                                         "mfdcomp_uadk", "mfdcomp_qatzip", "mfdcomp_lz4"]):
    import mfdcomp.wire, mfdcomp.engine.destination, mfdcomp.methods.pagetable
    from mfdcomp.errors import MfdcompError
    from tests import test_fuzz_wire as fw
    from tests import test_fuzz_codecs as fc

TARGET = {target!r}
seeds = fw.all_seeds()

# Inputs start with a few bytes that choose the seed (and options), then the channel's bytes.
def reader(data):
    if len(data) < 2:
        return
    seed = seeds[data[0] % len(seeds)]
    limits = seed.limits if data[1] & 1 else fw.loose(seed.limits)
    fw.read_mutated(data[2:], limits, [4096])

def engine(data):
    if len(data) < 1:
        return
    seed = seeds[data[0] % len(seeds)]
    blocks = fw.targets_for(seed.limits)
    error, guards = fw.receive_mutated(data[1:], seed.limits, fw.engine_codec(seed), blocks)
    assert guards, "write outside the target"
    assert error is None or isinstance(error, MfdcompError), repr(error)

labels = fc.VARIANTS
methods = {{}}

def codecs(data):
    if len(data) < 3:
        return
    label = labels[data[0] % len(labels)]
    pages = 1 + data[1] % 128
    scattered = bool(data[2] & 1)
    body = data[3:]
    codec = fc.decoder_variants()[label]
    method = codec.methods(fc.PAGE_SIZE, None, fc.send_path(codec))
    method.recv_setup(0)
    try:
        flag = 0x3E if codec.info.qemu_flag is None else codec.info.qemu_flag
        packet = fc.RamPacket.data(flags=flag, ramblock="ram0", normal=[0], next_packet_size=len(body),
                                   packet_num=0, extension_id=codec.info.extension_id or 0)
        outcome = fc.decode(method, packet, body, pages, scattered)
        assert outcome.guards, "write outside the pages"
    finally:
        method.recv_cleanup()

import tracemalloc
tracemalloc.start()
atheris.Setup(sys.argv, {{"reader": reader, "engine": engine, "codecs": codecs}}[TARGET])
atheris.Fuzz()
"""


def _write_corpus(target: str, directory: Path) -> None:
    """libFuzzer's starting corpus: the harness's seeds, with the leading bytes each target reads."""
    from mfdcomp.wire import INIT_SIZE
    from tests import test_fuzz_codecs as fc
    from tests import test_fuzz_wire as fw

    directory.mkdir(parents=True, exist_ok=True)
    if target in ("reader", "engine"):
        for number, seed in enumerate(fw.all_seeds()):
            body = seed.data[: seed.bounds[min(3, len(seed.bounds) - 1)]]
            head = bytes([number, 1]) if target == "reader" else bytes([number])
            if target == "engine":
                body = body[INIT_SIZE:]
            (directory / f"{number:03d}").write_bytes(head + body)
        return
    for number, label in enumerate(fc.VARIANTS):
        for channel in fc.channels_for(label):
            for index, packet in enumerate(channel.packets):
                if channel.packets[0].packet.flags & 0x06 and index:
                    break  # a zlib/zstd packet decodes only after the ones before it: the first alone
                name = f"{label}-{channel.name.replace('/', '_')}-{index}"
                (directory / name).write_bytes(bytes([number, packet.pages - 1, index % 2]) + packet.payload)


def run_atheris(seconds: float, targets: list[str], crash_dir: Path | None, quiet: bool) -> Campaign:
    try:
        import atheris  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"atheris is not installed ({exc}): pip install atheris") from exc
    campaign = Campaign("atheris", 0, seconds, {t: TargetStats() for t in targets})
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mfdcomp-atheris-") as work:
        for target in targets:
            stats = campaign.targets[target]
            script = Path(work) / f"{target}.py"
            script.write_text(_ATHERIS_CHILD.format(repo=str(REPO), target=target))
            corpus = Path(work) / f"corpus-{target}"
            _write_corpus(target, corpus)
            artifacts = Path(work) / f"atheris-{target}"
            artifacts.mkdir()
            command = [
                sys.executable, str(script), str(corpus),
                f"-max_total_time={max(1, int(seconds / len(targets)))}",
                f"-artifact_prefix={artifacts}/", "-rss_limit_mb=4096", "-timeout=10",
                "-max_len=1100000", "-print_final_stats=1",
            ]  # fmt: skip
            began = time.monotonic()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            stats.seconds = time.monotonic() - began
            log = done.stdout + done.stderr
            runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
            if not runs:
                runs = re.findall(r"#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)", log)
            stats.inputs = int(runs[-1]) if runs else 0
            crashed = done.returncode != 0 and "DONE" not in log
            found = sorted(artifacts.iterdir())
            if found and crash_dir is not None:  # libFuzzer's crash-*, timeout-*, oom-* inputs
                keep = crash_dir / f"atheris-{target}"
                keep.mkdir(parents=True, exist_ok=True)
                for item in found:
                    shutil.copy(item, keep / item.name)
            if crashed or found or "== ERROR" in log or "Uncaught Python exception" in log:
                stats.failures += 1
                campaign.crashes.append({"target": target, "engine": "atheris", "log": log[-6000:]})
                if not quiet:
                    print(f"atheris {target}: failure\n{log[-3000:]}", file=sys.stderr)
            if not quiet:
                print(f"atheris {target}: {stats.inputs} inputs in {stats.seconds:.0f} s", file=sys.stderr)
    campaign.seconds = time.monotonic() - started
    return campaign


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="total time, shared by the targets (300)")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("MFDCOMP_FUZZ_SEED", "1")))
    parser.add_argument("--engine", choices=("random", "atheris"), default="random")
    parser.add_argument(
        "--targets",
        help=f"comma-separated, of {', '.join(TARGETS)} (atheris: {', '.join(ATHERIS_TARGETS)}); default all",
    )
    parser.add_argument("--crash-dir", type=Path, help="write each failing input here")
    parser.add_argument("--json", type=Path, help="write the campaign's counts here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    default = ATHERIS_TARGETS if args.engine == "atheris" else TARGETS
    targets = [t for t in (args.targets or ",".join(default)).split(",") if t]
    unknown = set(targets) - set(default)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.engine == "atheris":
        campaign = run_atheris(args.seconds, targets, args.crash_dir, args.quiet)
    else:
        campaign = run_random(args.seconds, args.seed, targets, args.crash_dir, args.quiet)
    summary = campaign.as_dict()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    for name, stats in campaign.targets.items():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.error_kinds.items())) or "-"
        print(
            f"{name:8s} {stats.inputs:8d} inputs  {stats.valid:7d} valid  {stats.typed_errors:7d} typed errors  "
            f"{stats.failures:4d} failures  slowest {stats.slowest * 1000:.0f} ms  ({kinds})"
        )
    print(f"total    {campaign.inputs:8d} inputs, {campaign.failures} failures in {campaign.seconds:.0f} s")
    return 1 if campaign.failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Reliability report: fuzz campaign, hostile peers, injected faults, bugs found and fixed.

    python3 scripts/reliability_report.py                     # about 5 minutes
    python3 scripts/reliability_report.py --fuzz-seconds 30 --atheris-seconds 0   # quicker

Runs, each bounded:

1. the fuzz campaign (scripts/fuzz_campaign.py): random mutations of the golden
   captures and of every codec's packets, through the wire reader, a real
   channel thread and every codec's decoder, and of mapped-ram files through
   the loader; then the same targets but the loader under atheris (libFuzzer)
   when it is installed;
2. the CI fuzz tests (hypothesis: wire, codecs, mapped-ram loader), counting
   their examples;
3. the hostile-peer cases (tests/test_hostile_peer.py, strangers' connections
   of tests/test_accept_loop.py, zstd windows beyond the session's level, the
   hostile cases of tests/test_engine_faults.py, crafted mapped-ram manifests,
   the TLS peers of tests/test_tls.py, and those of the compiled loops' own TLS
   reads and writes: tests/test_fastrecv.py, tests/test_tlsdirect.py)
   and the fault cases (tests/test_faults_*.py, the receiver's targets of
   tests/test_recv_targets.py, Ctrl-C and SIGTERM of tests/test_interrupts.py,
   the ended-channel flushes and packet numbering of
   tests/test_engine_numbering.py, the broken-channel, early-failure and
   fail-ordering cases of test_engine_faults.py, the killed peers of
   test_cli_processes.py), through pytest with JUnit XML output.

Writes reports/RELIABILITY.md and reports/reliability.json: inputs fuzzed,
hostile cases tried, faults injected, failures found, and the table of bugs
found and fixed (scripts/reliability_bugs.json, with their commits). The load
test's numbers are included when reports/load_test.json exists
(benchmarks/load_test.py --json reports/load_test.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "reports"
BUGS = Path(__file__).resolve().parent / "reliability_bugs.json"

# Each group is one or more pytest runs (a -k expression applies to every file of its run).
HOSTILE = [
    [
        "tests/test_hostile_peer.py",
        "tests/test_accept_loop.py",  # strangers' idle, silent and garbage connections
        "tests/codecs/test_zstd_window.py",  # a source's zstd window beyond the session's level
    ],
    # Hostile cases that other test files hold: refused connections, crafted mapped-ram manifests.
    ["tests/test_engine_faults.py", "-k", "refused or never_sends or dropped"],
    ["tests/test_mappedram.py", "-k", "crafted"],
    # TLS (issue 19): refused certificates and plain peers, garbage before and inside the handshake, a handshake
    # that never ends, a peer gone after authenticating, fuzzed ClientHellos, --max-size.
    ["tests/test_tls.py", "-k", "not transfer_over_tcp and not plain_send and not lets_a_session and not bench"],
    # TLS channels the compiled loops read and write themselves: garbage under the session (inside a packet,
    # at each place), a peer that stalls, one that goes, a shutdown in the middle of a read.
    ["tests/test_fastrecv.py", "-k", "tls_broken"],
    ["tests/test_tlsdirect.py", "-k", "garbage or stall or both_paths or shutdown"],
]
FAULTS = [
    [
        "tests/test_faults_channels.py",
        "tests/test_faults_stall.py",
        "tests/test_faults_processes.py",
        "tests/test_faults_disk.py",
        "tests/test_faults_target_disk.py",
        "tests/test_faults_leaks.py",
        "tests/test_faults_regressions.py",
        "tests/test_recv_targets.py",  # targets beside --out, block file names, space in total, no SIGBUS
        "tests/test_interrupts.py",  # Ctrl-C and SIGTERM on either side
        "tests/test_engine_numbering.py",  # channels ending before their SYNC, the shared packet counter
    ],
    # Fault cases that other test files hold: a broken channel, a source failing early, fail() while the
    # peer stopped reading, a killed peer.
    ["tests/test_engine_faults.py", "tests/test_cli_processes.py", "-k", "broken or failing or killed or fail_wakes"],
]
FUZZ_TESTS = [["tests/test_fuzz_wire.py", "tests/test_fuzz_codecs.py", "tests/test_fuzz_mappedram.py"]]
NOT_DONE = [
    "QAT, IAA and UADK hardware: no device on this host, so the hardware decode paths were not fuzzed "
    "(libqatzip's software path and the software twins were); the loader target runs in the random "
    "campaign only (its inputs are structured mutations of a file).",
    "send --idle-timeout and recv --idle-timeout are off by default, as in QEMU: without them a destination "
    "that stops reading (SIGSTOP) blocks the source in sendmsg until TCP gives up, and a source that stops "
    "sending mid-packet holds the destination.",
    "The idle timeouts are per socket call (SO_RCVTIMEO, SO_SNDTIMEO): a peer trickling a byte just under "
    "every S seconds keeps a channel alive, and a stall right after a partial read takes up to 2 x S to "
    "be noticed.",
    "By design, a connection that presents a complete handshake of the protocol speaks for the source: a "
    "wrong one (a bad init packet, a second main channel) fails the session, as in QEMU; only strangers' "
    "connections (silent, ended early, unknown magic) are dropped at their handshake deadline.",
    "The destination takes any block size up to 4 PiB that a SESSION announces: into files the total is "
    "checked against the free space, then allocated; in anonymous memory (RamClient.anonymous, library "
    "use) a size that cannot be mapped is a typed error naming the block, a large possible one is simply "
    "allocated (no cap).",
    "recv always writes its targets to new temporary files renamed over --out; RamClient.create_targets "
    "without staged=True (library use) still opens the final files with O_TRUNC, so two such writers must "
    "not share a file.",
]
LEAK_SESSIONS = int(os.environ.get("MFDCOMP_LEAK_SESSIONS", "200"))


@dataclass
class Case:
    name: str
    file: str
    seconds: float
    outcome: str  # passed, failed, error, skipped
    message: str = ""


@dataclass
class Group:
    name: str
    command: list[str]
    seconds: float = 0.0
    cases: list[Case] = field(default_factory=list)
    output: str = ""

    def count(self, outcome: str) -> int:
        return sum(case.outcome == outcome for case in self.cases)


def run_group(name: str, runs: list[list[str]], extra: list[str] | None = None) -> Group:
    """One group of cases from one or more pytest runs."""
    group = Group(name, [])
    for args in runs:
        part = run_pytest(name, args, extra)
        group.command += [*part.command, ";"] if len(runs) > 1 else part.command
        group.seconds += part.seconds
        group.cases += part.cases
        group.output += part.output
    return group


def run_pytest(name: str, args: list[str], extra: list[str] | None = None) -> Group:
    with tempfile.TemporaryDirectory() as work:
        junit = Path(work) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *args]
        command += extra or []
        group = Group(name, command)
        began = time.monotonic()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        group.seconds = time.monotonic() - began
        group.output = done.stdout + done.stderr
        if junit.exists():
            for testcase in ET.parse(junit).getroot().iter("testcase"):
                outcome, message = "passed", ""
                for child in testcase:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome = {"failure": "failed"}.get(child.tag, child.tag)
                        message = (child.get("message") or "")[:300]
                group.cases.append(
                    Case(
                        testcase.get("name", "?"),
                        str(testcase.get("file") or testcase.get("classname", "?")),
                        float(testcase.get("time", 0.0)),
                        outcome,
                        message,
                    )
                )
    return group


def hypothesis_examples(output: str) -> int:
    """Examples hypothesis ran, from --hypothesis-show-statistics (passing and failing ones)."""
    return sum(int(n) for n in re.findall(r"(\d+) passing examples?", output)) + sum(
        int(n) for n in re.findall(r"(\d+) failing examples?", output)
    )


def run_campaign(engine: str, seconds: float, out: Path) -> dict[str, Any]:
    command = [sys.executable, str(REPO / "scripts" / "fuzz_campaign.py"), "--engine", engine,
               "--seconds", str(seconds), "--json", str(out), "--quiet",
               "--crash-dir", str(REPORTS / f"crashes-{engine}")]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if not out.exists():
        return {"engine": engine, "inputs": 0, "failures": 0, "error": (done.stdout + done.stderr)[-2000:]}
    data: dict[str, Any] = json.loads(out.read_text())
    data["output"] = done.stdout[-3000:]
    return data


def faults_injected(group: Group) -> int:
    """One fault per case, except the leak run: one per failing session."""
    total = 0
    for case in group.cases:
        if case.outcome != "passed":
            continue
        total += LEAK_SESSIONS + 4 if "200_failing_sessions" in case.name else 1
    return total


# --- the report ----------------------------------------------------------------------------------


def _table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows
    ]
    return "\n".join(lines)


def _cases_table(group: Group) -> str:
    rows = [[case.name, Path(case.file).name if "/" in case.file else case.file, case.outcome, f"{case.seconds:.2f}"]
            for case in group.cases]  # fmt: skip
    return _table(rows, ["case", "file", "outcome", "seconds"])


def _rss_cell(values: dict[str, float]) -> str:
    first, last, growth = values["at_first_round_end_mib"], values["last_mib"], values["growth_after_first_round_mib"]
    return f"{first:.0f} / {last:.0f} / {growth:+.0f} / {values.get('drift_mib', 0.0):+.0f}"


def render(data: dict[str, Any]) -> str:
    totals = data["totals"]
    out = [
        "# Reliability report",
        "",
        f"Generated by `scripts/reliability_report.py` on {data['generated']} (commit {data['commit']}), "
        f"in {data['seconds']:.0f} s on {data['host']}.",
        "",
        "## Counts",
        "",
        _table(
            [
                ["inputs fuzzed (all)", totals["inputs_fuzzed"]],
                [
                    "- random campaign (wire reader, channel thread, codec decoders, mapped-ram loader)",
                    totals["campaign_inputs"],
                ],
                ["- atheris / libFuzzer campaign", totals["atheris_inputs"]],
                ["- CI fuzz tests (hypothesis examples and exhaustive edge values)", totals["ci_fuzz_inputs"]],
                ["hostile-peer cases tried", totals["hostile_cases"]],
                ["fault cases", totals["fault_cases"]],
                ["faults injected (each of the leak run's sessions counted)", totals["faults_injected"]],
                ["failures found in this run", totals["failures_now"]],
                ["bugs found and fixed (table below)", totals["bugs_fixed"]],
            ],
            ["what", "count"],
        ),
        "",
    ]
    out += ["## Fuzz campaigns", ""]
    for campaign in data["campaigns"]:
        out.append(f"### {campaign.get('engine')} ({campaign.get('seconds', 0):.0f} s)")
        out.append("")
        if "error" in campaign:
            out += ["Not run: " + campaign["error"].strip().splitlines()[-1], ""]
            continue
        rows = []
        guided = campaign.get("engine") == "atheris"  # libFuzzer counts executions only
        for target, stats in campaign.get("targets", {}).items():
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.get("error_kinds", {}).items())) or "-"
            if guided:
                rows.append([target, stats["inputs"], "-", "-", stats["failures"], "-", "-"])
                continue
            rows.append([target, stats["inputs"], stats["valid"], stats["typed_errors"], stats["failures"],
                         f"{stats['slowest'] * 1000:.0f}", kinds])  # fmt: skip
        out += [
            _table(rows, ["target", "inputs", "valid", "typed errors", "failures", "slowest ms", "errors by type"]),
            "",
        ]
        if campaign.get("engine") == "atheris":
            out += ["(atheris counts libFuzzer's executions; it does not split them into valid and refused.)", ""]
    out += [
        "Every input must end in a typed `MfdcompError` or a valid result within "
        "3 s, under a heap bound (tracemalloc) and an RSS bound, and a decoder may write nothing "
        "outside its pages (guard bytes). Bombs: each codec's decoder refuses a payload that would "
        "inflate to 32 MiB for one page, before its memory grows (tests/test_fuzz_codecs.py).",
        "",
    ]
    for title, key in (("Hostile peer", "hostile"), ("Faults", "faults"), ("CI fuzz tests", "fuzz")):
        group = data["groups"][key]
        out += [
            f"## {title}: {len(group['cases'])} cases, {group['failed']} failed, {group['skipped']} skipped "
            f"({group['seconds']:.0f} s)",
            "",
            group["table"],
            "",
        ]
    out += ["## Bugs found and fixed", ""]
    review = [bug["id"] for bug in data["bugs"] if bug.get("found_by", "").startswith("independent review")]
    if review:
        out += [
            f"Bugs {review[0]}-{review[-1]} are the findings of an independent review (issue 20, points 1-7, "
            "each finding on its own row; 'tests' in the where column marks a test that could not catch a "
            "regression); the others were found by the project's own fault and hostile tests.",
            "",
        ]
    rows = [[bug["id"], bug["title"], bug["component"], bug["commit"], bug["regression_test"]] for bug in data["bugs"]]
    out += [_table(rows, ["#", "bug", "where", "commit", "regression test"]), ""]
    for bug in data["bugs"]:
        out += [
            f"{bug['id']}. **{bug['title']}**. Commit {bug['commit']}. Found by {bug['found_by']}. "
            f"{bug['what_was_wrong']} Fix: {bug['fix']}",
            "",
        ]
    load = data.get("load_test")
    out += ["## Load test", ""]
    if load:
        rss = load["rss"]
        out += [
            f"`benchmarks/load_test.py`: {load['size_bytes'] / 2**30:g} GiB image, {load['channels']} channels, "
            f"codec {load['codec']}, {load['rounds']} rounds in {load['transfer_seconds']:.0f} s "
            f"({load['minutes_asked']:g} minutes asked).",
            "",
            _table(
                [
                    ["guest bytes moved", f"{load['guest_bytes'] / 1e9:.1f} GB"],
                    ["GB/s overall", f"{load['gb_per_s_overall']:.2f}"],
                    ["GB/s first round (every page)", f"{load['gb_per_s_first_round']:.2f}"],
                    ["GB/s median dirty round", f"{load['gb_per_s_dirty_rounds_median'] or 0:.2f}"],
                    ["sha256 equal at the end", load["sha256_equal"]],
                ]
                + [
                    [f"{role} {kind}: after round 1 / last / peak growth / drift (MiB)", _rss_cell(v)]
                    for role, kinds in rss.items()
                    for kind, v in kinds.items()
                    if v
                ],
                ["", ""],
            ),
            "",
        ]
        out += [
            "Drift is the median of the last tenth of the samples against the first tenth after round 1; "
            "'last' is the final sample, taken while the source may already be unmapping its image. "
            "GB/s are those of a shared 2-CPU machine under other load; dirty rounds send scattered pages.",
            "",
        ]
    else:
        out += ["No reports/load_test.json: run `python3 benchmarks/load_test.py --json reports/load_test.json`.", ""]
    out += ["## Not done here", ""] + [f"- {line}" for line in data["not_done"]] + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fuzz-seconds", type=float, default=120.0, help="random fuzz campaign (120)")
    parser.add_argument("--atheris-seconds", type=float, default=60.0, help="atheris campaign, 0 to skip (60)")
    parser.add_argument("--out", type=Path, default=REPORTS / "RELIABILITY.md")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: render reports/reliability.json again with the current bug table and load test",
    )
    args = parser.parse_args(argv)
    REPORTS.mkdir(exist_ok=True)
    if args.render_only:
        return render_again(args.out)
    began = time.monotonic()
    campaigns = [run_campaign("random", args.fuzz_seconds, REPORTS / "fuzz_random.json")]
    not_done: list[str] = []
    if args.atheris_seconds <= 0:
        not_done.append("atheris campaign not run here (--atheris-seconds 0): the random campaign only")
    else:
        if importlib.util.find_spec("atheris") is None:
            not_done.append("atheris is not installed here (pip install atheris): no coverage-guided campaign")
        else:
            campaigns.append(run_campaign("atheris", args.atheris_seconds, REPORTS / "fuzz_atheris.json"))
    fuzz = run_group("fuzz", FUZZ_TESTS, ["--hypothesis-show-statistics"])
    hostile = run_group("hostile", HOSTILE)
    faults = run_group("faults", FAULTS)
    exhaustive = 0
    if any(c.name == "test_every_field_of_every_record_at_every_edge_value" and c.outcome == "passed"
           for c in fuzz.cases):  # fmt: skip
        exhaustive = _exhaustive_count()
    bugs = json.loads(BUGS.read_text())
    load_path = REPORTS / "load_test.json"
    load = json.loads(load_path.read_text())["summary"] if load_path.exists() else None
    campaign_inputs = sum(c.get("inputs", 0) for c in campaigns if c.get("engine") == "random")
    atheris_inputs = sum(c.get("inputs", 0) for c in campaigns if c.get("engine") == "atheris")
    ci_inputs = hypothesis_examples(fuzz.output) + exhaustive
    groups = {g.name: g for g in (fuzz, hostile, faults)}
    failures_now = sum(c.get("failures", 0) for c in campaigns) + sum(
        g.count("failed") + g.count("error") for g in groups.values()
    )
    not_done += NOT_DONE
    data: dict[str, Any] = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "host": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "seconds": time.monotonic() - began,
        "totals": {
            "inputs_fuzzed": campaign_inputs + atheris_inputs + ci_inputs,
            "campaign_inputs": campaign_inputs,
            "atheris_inputs": atheris_inputs,
            "ci_fuzz_inputs": ci_inputs,
            "hostile_cases": len(hostile.cases),
            "fault_cases": len(faults.cases),
            "faults_injected": faults_injected(faults),
            "failures_now": failures_now,
            "bugs_fixed": len(bugs),
        },
        "campaigns": [
            {k: v for k, v in c.items() if k != "crashes"} | {"crashes": len(c.get("crashes", []))} for c in campaigns
        ],
        "groups": {
            name: {
                "seconds": g.seconds,
                "failed": g.count("failed") + g.count("error"),
                "skipped": g.count("skipped"),
                "cases": [asdict(c) for c in g.cases],
                "table": _cases_table(g),
            }
            for name, g in groups.items()
        },
        "bugs": bugs,
        "load_test": load,
        "not_done": not_done,
    }
    args.out.write_text(render(data))
    (REPORTS / "reliability.json").write_text(json.dumps({k: v for k, v in data.items()}, indent=1, default=str))
    t = data["totals"]
    print(
        f"inputs fuzzed {t['inputs_fuzzed']}, hostile cases {t['hostile_cases']}, fault cases {t['fault_cases']} "
        f"({t['faults_injected']} faults injected), failures now {t['failures_now']}, bugs fixed {t['bugs_fixed']}"
    )
    print(f"wrote {args.out}")
    return 1 if failures_now else 0


def render_again(out: Path) -> int:
    data = json.loads((REPORTS / "reliability.json").read_text())
    data["not_done"] = [line for line in data["not_done"] if line.startswith("atheris")] + NOT_DONE
    data["bugs"] = json.loads(BUGS.read_text())
    data["totals"]["bugs_fixed"] = len(data["bugs"])
    load_path = REPORTS / "load_test.json"
    data["load_test"] = json.loads(load_path.read_text())["summary"] if load_path.exists() else None
    (REPORTS / "reliability.json").write_text(json.dumps(data, indent=1, default=str))
    out.write_text(render(data))
    print(f"wrote {out}")
    return 0


def _exhaustive_count() -> int:
    """Inputs of the exhaustive field × edge-value test (the same loops, counted, without running them)."""
    sys.path.insert(0, str(REPO))
    from tests import test_fuzz_wire as fw

    count = 0
    for whole in fw.all_seeds():
        if whole.name.endswith("ch1.bin"):
            continue
        for record in range(min(4, len(whole.bounds) - 2)):
            fields = fw.INIT_FIELDS if record == 0 else fw.RAM_FIELDS
            count += len(fields) * len(fw.INTERESTING)
    return count


if __name__ == "__main__":
    sys.exit(main())

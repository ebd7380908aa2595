"""`mfdcomp qemu-check --quick` end to end, on small guests (the matrix itself runs in test_qemu_matrix.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import qemu_total_time_problem

from mfdcomp.qemu.harness import quick_matrix


def test_quick_check_reports_every_row_with_qemu_timing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mfdcomp", "qemu-check", "--quick", "--json", "--ram-size", "16M"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(done.stdout)
    assert report["matrix"] == "quick" and report["failed"] == 0
    assert report["passed"] + report["not_run"] == len(quick_matrix())
    assert [row["case"]["name"] for row in report["rows"]] == [case.name for case in quick_matrix()]
    for row in report["rows"]:
        if row["unavailable"] is not None:
            continue  # a build the install script recorded as unable to run here (7.2 on Debian 13)
        assert row["verdict"] == "PASS", row["problems"]
        assert row["case"]["ram_size"] == 16 << 20
        # 16 MiB guests: under a millisecond is possible, and QEMU then reports total-time 0.
        assert qemu_total_time_problem(row["qemu"]["total_time_ms"], row["qemu"]["wall_seconds"]) is None
        assert row["qemu"]["ram_equal"]
        assert row["tap"]["totals"]["packets"] > 0

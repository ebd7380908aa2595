"""mfdcomp's own codecs through the public conformance suite (the same tests a plugin author runs)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mfdcomp.testing.pytest_plugin import conformance_tests

test_conformance = conformance_tests()


# --- the suite's own verdicts: run as a user would, from a folder that is not the checkout ---------

QEMU_CODECS = ("none", "zlib", "zstd", "qpl", "uadk", "qatzip")


def conformance(cwd: Path, *args: str) -> tuple[int, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "MFDCOMP_VECTORS"}
    done = subprocess.run(
        [sys.executable, "-m", "mfdcomp", "conformance", "--json", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, json.loads(done.stdout)


@pytest.mark.parametrize("codec", QEMU_CODECS)
def test_golden_vectors_run_from_any_folder(tmp_path: Path, codec: str) -> None:
    """The vectors ship with the package: from an empty folder the check passes (it was n/a there)."""
    code, report = conformance(tmp_path, "--codec", codec, "--check", "golden_vectors")
    (check,) = report["verdicts"][0]["checks"]
    assert check["status"] == "passed", check
    assert code == 0
    vectors = check["notes"]["vectors"]
    assert any(v.startswith("qemu/") for v in vectors), vectors
    if codec == "qatzip":  # both implementations: libqatzip and the pure-Python reader
        assert any("pure-Python" in v for v in vectors) and any(v.startswith("qatzip/") for v in vectors), vectors


@pytest.mark.parametrize("codec", ["qpl", "uadk"])
def test_a_hardware_path_that_did_not_run_is_not_a_pass(tmp_path: Path, codec: str) -> None:
    """No IAA / HiSilicon device here: 'not run' with the probe's reason, verdict NOT RUN, exit 0."""
    code, report = conformance(tmp_path, "--codec", codec, "--check", "hardware_path")
    verdict = report["verdicts"][0]
    (check,) = verdict["checks"]
    assert check["status"] == "not run" and "did not run" in check["detail"], check
    assert verdict["verdict"] == "NOT RUN" and not verdict["ok"] and verdict["not_run"] == 1
    assert code == 0
    code, report = conformance(tmp_path, "--codec", codec, "--check", "hardware_path", "--require-hw")
    assert report["verdicts"][0]["checks"][0]["status"] == "failed" and code == 1


def test_the_table_shows_not_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mfdcomp", "conformance", "--codec", "qpl", "--check", "hardware_path"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("qpl "))
    assert "NOT RUN" in row and "PASS" not in row, done.stdout
    assert "qpl hardware_path: qpl's hardware path did not run" in done.stdout

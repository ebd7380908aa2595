"""The test suite's own hygiene, each in a real child pytest: a failing test fails (never hangs), passing tests'
files are removed, and a hang becomes a failure with tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

# Bound on each child pytest: far above what these tiny runs take, far below a hang's 10 minutes.
CHILD_TIMEOUT = 90


def child_pytest(
    directory: Path, *args: str, config: Path | None = None, timeout: float = CHILD_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``python -m pytest ARGS`` in ``directory`` (its own rootdir and --basetemp unless ARGS say otherwise)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    command += ["-c", str(config)] if config is not None else ["-c", os.devnull, "--rootdir", str(directory)]
    try:
        return subprocess.run(
            [*command, *args], cwd=directory, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"the child pytest hung for {timeout} s:\n{out[-3000:]}")


# --- a failing hostile-peer test fails, and pytest exits ------------------------------------------------------


def test_failing_hostile_peer_test_does_not_hang_the_run(tmp_path: Path) -> None:
    """tests/test_engine_faults.py's destination thread once kept pytest in threading._shutdown for 10 minutes.

    The test here fails with the destination waiting on its main channel (no
    timeout there: a real source may think for long); pytest must still exit.
    """
    (tmp_path / "test_tiny_hostile.py").write_text(
        "from pathlib import Path\n"
        "from tests.test_engine_faults import HostileSource\n\n\n"
        "def test_fails_before_finish(tmp_path: Path) -> None:\n"
        "    src = HostileSource(tmp_path, channels=1)\n"
        "    src.channel(0)\n"
        "    raise AssertionError('a hostile-peer test failing before finish()')\n"
    )
    started = time.monotonic()
    done = child_pytest(tmp_path, "--basetemp", str(tmp_path / "base"), "test_tiny_hostile.py", timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed" in done.stdout
    assert time.monotonic() - started < 30

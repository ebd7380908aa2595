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


# --- a thread left running makes the run fail, and exit -------------------------------------------------------


def test_a_thread_left_running_fails_the_run_with_its_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/conftest.py's safety net, loaded into a child pytest whose only test passes but leaves a thread."""
    (tmp_path / "test_tiny_thread.py").write_text(
        "import threading\n\n\n"
        "def waits_for_ever_on_a_peer() -> None:\n"
        "    threading.Event().wait()\n\n\n"
        "def test_passes_but_leaves_a_thread() -> None:\n"
        "    threading.Thread(target=waits_for_ever_on_a_peer, name='left-behind').start()\n"
    )
    monkeypatch.setenv("MFDCOMP_TEST_EXIT_GRACE", "2")
    started = time.monotonic()
    done = child_pytest(tmp_path, "-p", "conftest", "test_tiny_thread.py", timeout=60)
    assert time.monotonic() - started < 30
    assert "1 passed" in done.stdout
    assert done.returncode != 0
    assert "still running after the last test: 'left-behind'" in done.stderr
    assert "waits_for_ever_on_a_peer" in done.stderr  # its stack


# --- a hanging test fails with every thread's stack ------------------------------------------------------------


def test_a_hanging_test_times_out_with_tracebacks(tmp_path: Path) -> None:
    """The repo's pytest configuration (pytest-timeout, thread method), with its 600 s cut to 2 s."""
    (tmp_path / "test_tiny_hang.py").write_text(
        "import threading\n\n\n"
        "def test_hangs_on_a_lock_nobody_releases() -> None:\n"
        "    lock = threading.Lock()\n"
        "    lock.acquire()\n"
        "    lock.acquire()\n"
    )
    started = time.monotonic()
    config = REPO_ROOT / "pyproject.toml"
    done = child_pytest(tmp_path, "--rootdir", str(tmp_path), "-o", "timeout=2", "test_tiny_hang.py", config=config)
    assert time.monotonic() - started < 30
    assert done.returncode != 0
    # The thread method's report (the signal one would print "Failed: Timeout"): every thread's stack.
    assert "Stack of MainThread" in done.stdout + done.stderr
    assert "test_hangs_on_a_lock_nobody_releases" in done.stdout + done.stderr  # the hung test's stack


# --- passing tests' files are removed --------------------------------------------------------------------------


def test_tmp_path_of_passing_tests_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the repo's configuration, two sessions in a temp root of their own (PYTEST_DEBUG_TEMPROOT)."""
    (tmp_path / "test_tiny_files.py").write_text(
        "from pathlib import Path\n\n\n"
        "def test_passes(tmp_path: Path) -> None:\n"
        "    (tmp_path / 'passed.bin').write_bytes(bytes(1 << 20))\n\n\n"
        "def test_fails(tmp_path: Path) -> None:\n"
        "    (tmp_path / 'failed.bin').write_bytes(bytes(1 << 20))\n"
        "    raise AssertionError('keep my files')\n"
    )
    root = tmp_path / "temproot"
    root.mkdir()
    monkeypatch.setenv("PYTEST_DEBUG_TEMPROOT", str(root))
    for _session in range(2):
        done = child_pytest(
            tmp_path, "--rootdir", str(tmp_path), "test_tiny_files.py", config=REPO_ROOT / "pyproject.toml"
        )
        assert done.returncode == 1 and "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    left = sorted(p.relative_to(root).parts for p in root.rglob("*.bin"))
    # The failing test's file, of the latest session only; nothing of the passing test.
    assert [parts[-1] for parts in left] == ["failed.bin"], left
    sessions = {parts[1] for parts in left}
    assert len(sessions) == 1


def test_tmp_path_all_removed_after_a_green_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "test_tiny_green.py").write_text(
        "from pathlib import Path\n\n\n"
        "def test_passes(tmp_path: Path) -> None:\n"
        "    (tmp_path / 'passed.bin').write_bytes(bytes(1 << 20))\n"
    )
    root = tmp_path / "temproot"
    root.mkdir()
    monkeypatch.setenv("PYTEST_DEBUG_TEMPROOT", str(root))
    done = child_pytest(tmp_path, "--rootdir", str(tmp_path), "test_tiny_green.py", config=REPO_ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not list(root.rglob("*.bin"))

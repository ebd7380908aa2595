"""Shared fixtures.

QEMU captures: every capture of ``../shared/vectors/qemu`` (relative to the repo
root) when that directory exists, else the ones bundled in ``tests/vectors/qemu``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import settings

# No per-example deadline: this machine is shared, and a slow example is not a wrong one. Tests that
# bound the time an input may take say so themselves.
settings.register_profile("mfdcomp", deadline=None)
settings.load_profile("mfdcomp")

REPO_ROOT = Path(__file__).resolve().parent.parent
MFDCOMP = [sys.executable, "-m", "mfdcomp"]
SHARED_QEMU_CAPTURES = REPO_ROOT.parent / "shared" / "vectors" / "qemu"
BUNDLED_QEMU_CAPTURES = Path(__file__).resolve().parent / "vectors" / "qemu"


def find_capture_dirs() -> list[Path]:
    """Capture directories (each with manifest.json) of the first root that exists."""
    for root in (SHARED_QEMU_CAPTURES, BUNDLED_QEMU_CAPTURES):
        if root.is_dir():
            return sorted(d for d in root.iterdir() if (d / "manifest.json").is_file())
    return []


CAPTURE_DIRS = find_capture_dirs()

# The conformance suite's golden vectors: the team's full set beside the repo, else the bundled ones.
os.environ.setdefault(
    "MFDCOMP_VECTORS",
    str(SHARED_QEMU_CAPTURES.parent if SHARED_QEMU_CAPTURES.is_dir() else BUNDLED_QEMU_CAPTURES.parent),
)


# --- a run that ends, whatever its tests left running --------------------------------------------------------------
#
# pytest-timeout (pyproject: timeout, timeout_method = "thread") bounds each test. Its clock stops with the test,
# though, and a non-daemon thread a failed test left behind keeps the interpreter in threading._shutdown after
# the last test, with no timeout (once for 10 minutes). So at the end: such threads get EXIT_GRACE seconds to
# end, then the run fails, names them with their stacks, and exits EXIT_GRACE later if they still hold it.
EXIT_GRACE = float(os.environ.get("MFDCOMP_TEST_EXIT_GRACE", "30"))


def _stray_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    deadline = time.monotonic() + EXIT_GRACE
    for thread in _stray_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    stray = _stray_threads()
    if not stray:
        return
    err = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
    names = ", ".join(repr(t.name) for t in stray)
    err.write(f"\nconftest: {len(stray)} non-daemon thread(s) still running after the last test: {names}\n")
    faulthandler.dump_traceback(file=err, all_threads=True)
    err.write(f"conftest: the run fails; the interpreter is ended in {EXIT_GRACE:.0f} s if they hold its exit\n")
    err.flush()
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    # exit=True: _exit(1) after printing every stack again, where threading._shutdown would wait for ever.
    faulthandler.dump_traceback_later(EXIT_GRACE, exit=True, file=err)


def _no_captures() -> None:
    pytest.fail(f"no QEMU capture found in {SHARED_QEMU_CAPTURES} nor in {BUNDLED_QEMU_CAPTURES}")


@pytest.fixture(scope="session")
def capture_dirs() -> list[Path]:
    """Every QEMU capture directory; fails (never skips) when there is none."""
    if not CAPTURE_DIRS:
        _no_captures()
    return CAPTURE_DIRS


_CAPTURE_PARAMS: list[Path | None] = [*CAPTURE_DIRS] or [None]


@pytest.fixture(params=_CAPTURE_PARAMS, ids=lambda d: d.name if d else "no-capture")
def capture_dir(request: pytest.FixtureRequest) -> Path:
    """One QEMU capture directory per test instance; fails (never skips) when there is none."""
    if request.param is None:
        _no_captures()
    directory: Path = request.param
    return directory


@pytest.fixture(scope="module")
def heap_tracing() -> Iterator[None]:
    """tracemalloc on for a module's tests: the fuzz tests bound each input's heap peak."""
    tracemalloc.start()
    yield
    tracemalloc.stop()


def qemu_total_time_problem(total_time_ms: object, wall_seconds: float) -> str | None:
    """What is wrong with the source QEMU's ``total-time`` of a completed migration, or None.

    QEMU promises whole milliseconds, measured inside our own migrate-to-completed
    interval (``wall_seconds``). It does not promise more than zero: a small
    paused guest can migrate in under a millisecond, and QEMU 7.2 then reports 0.
    """
    if not isinstance(total_time_ms, int) or isinstance(total_time_ms, bool):
        return f"total-time is not a number of milliseconds: {total_time_ms!r}"
    # +1: QEMU truncates both of its clock readings to the millisecond.
    if not 0 <= total_time_ms <= wall_seconds * 1000 + 1:
        return f"total-time {total_time_ms} ms outside 0..{wall_seconds * 1000:.0f} ms, the time the migration took"
    return None


def make_image(path: Path, size: str, seed: int) -> Path:
    """Write a test image at ``path`` with ``mfdcomp gen-image`` in a child process (the default mix)."""
    done = subprocess.run(
        [*MFDCOMP, "gen-image", str(path), "--size", size, "--seed", str(seed)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return path


try:
    COMPILED: ModuleType | None = importlib.import_module("mfdcomp._speedups")
except ImportError:  # no compiler at install: only the pure path runs here
    COMPILED = None
"""The compiled module, whatever MFDCOMP_PURE_PYTHON says: the differential tests run both paths."""


@contextlib.contextmanager
def speedups_as(module: ModuleType | None, *owners: ModuleType) -> Iterator[None]:
    """Each of ``owners`` (a module with a ``_speedups`` attribute) uses ``module``, None being its pure path."""
    saved = [vars(owner)["_speedups"] for owner in owners]
    for owner in owners:
        vars(owner)["_speedups"] = module
    try:
        yield
    finally:
        for owner, before in zip(owners, saved, strict=True):
            vars(owner)["_speedups"] = before


def outcome(call: Callable[[], object]) -> tuple[str, object]:
    """What a call did, to compare a compiled path with its pure twin: its result, or its error's type and text."""
    try:
        return "result", call()
    except Exception as exc:
        return type(exc).__name__, str(exc)

"""Every command's output into a closed pipe (``mfdcomp codecs | head -1``): a quiet exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CAPTURE_DIRS

from mfdcomp.cli.common import quiet_on_broken_pipe

MFDCOMP = [sys.executable, "-m", "mfdcomp"]
SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a C tool killed by the signal


def run_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``mfdcomp ARGS`` with stdout a real pipe whose read end is already closed.

    Closed before the child starts, so its first write fails every time (with
    ``| head -1`` whether it fails depends on who runs first).
    """
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*MFDCOMP, *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False
        )
    finally:
        os.close(write_end)


def inspect_args() -> list[str]:
    capture = CAPTURE_DIRS[0]
    return ["inspect", *sorted(str(p) for p in capture.glob("ch*.bin"))]


@pytest.mark.parametrize(
    "args",
    [["codecs"], ["codecs", "--json"], ["doctor"], ["doctor", "--json"], ["gen-image", "--help"], "inspect"],
    ids=lambda a: " ".join(a) if isinstance(a, list) else a,
)
def test_closed_pipe_exits_quietly(args: list[str] | str) -> None:
    argv = inspect_args() if args == "inspect" else list(args)
    done = run_into_closed_pipe(*argv)
    assert done.stderr == "", done.stderr
    assert done.returncode == SIGPIPE_EXIT


def test_head_in_a_real_shell_pipeline(tmp_path: Path) -> None:
    """The reported case itself: ``| head -1`` keeps the first line, and no traceback reaches stderr."""
    err = tmp_path / "stderr"
    command = " ".join(MFDCOMP) + f" codecs 2>{err} | head -1"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0
    assert done.stdout.split()[0] == "codec"
    assert "Traceback" not in err.read_text() and "BrokenPipe" not in err.read_text()


def test_a_broken_pipe_elsewhere_is_not_taken_for_a_closed_stdout() -> None:
    """A socket's EPIPE that escaped translation still shows: only a stdout without reader exits 141."""

    @quiet_on_broken_pipe
    def main() -> int:
        raise BrokenPipeError(32, "Broken pipe (a socket)")

    with pytest.raises(BrokenPipeError):
        main()

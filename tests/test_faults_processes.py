"""`mfdcomp send` and `mfdcomp recv` processes killed with SIGKILL at several points of a session.

The kill comes a chosen delay after the destination accepted its first
connection (so the session has really started): at once, early in the first
round, later, and at seeded random points. The survivor must exit within
10 s with a non-zero status and an ``error:`` line. A file transfer killed
half-way leaves a file that ``recv`` refuses as never completed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_image

MFDCOMP = [sys.executable, "-m", "mfdcomp"]
DEADLINE = 10.0
SEED = int(os.environ.get("MFDCOMP_FAULT_SEED", "8"))
_random = random.Random(SEED)
# Seconds after the first accepted connection: at once, early, later, and two seeded random points.
DELAYS = [0.0, 0.15, 0.6, round(_random.uniform(0.05, 1.2), 3), round(_random.uniform(0.05, 1.2), 3)]


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*MFDCOMP, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sockets_of(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image(tmp_path_factory.mktemp("img") / "src.img", "32M", seed=5)


def wait_until(what: str, predicate: object, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():  # type: ignore[operator]
        assert proc.poll() is None, f"{what}: the process ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{what} did not happen within {DEADLINE} s"
        time.sleep(0.005)


def end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


@pytest.mark.parametrize("delay", DELAYS)
@pytest.mark.parametrize("victim", ["send", "recv"])
def test_a_peer_killed_at_any_point_ends_the_survivor_within_10_s(
    tmp_path: Path, image: Path, victim: str, delay: float
) -> None:
    sock = tmp_path / "mfd.sock"
    recv = start("recv", "--listen", f"unix:{sock}", "--out", str(tmp_path / "dst.img"))
    send: subprocess.Popen[str] | None = None
    try:
        wait_until("listening", sock.exists, recv)
        idle = sockets_of(recv.pid)
        send = start("send", str(image), "--to", f"unix:{sock}", "--multifd-channels", "4",
                     "--rounds", "100000", "--dirty-fraction", "0.3")  # fmt: skip
        wait_until("the first connection", lambda: sockets_of(recv.pid) > idle, recv)
        time.sleep(delay)
        dead, survivor = (recv, send) if victim == "recv" else (send, recv)
        assert survivor.poll() is None, "the survivor ended before the kill"
        os.kill(dead.pid, signal.SIGKILL)
        killed = time.monotonic()
        try:
            _, stderr = survivor.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{victim} killed {delay} s into the session: the other side still ran {DEADLINE} s later")
        assert time.monotonic() - killed < DEADLINE
        assert survivor.returncode != 0
        assert "error:" in stderr, stderr
        assert "Traceback" not in stderr, stderr
    finally:
        end(recv)
        if send is not None:
            end(send)


@pytest.mark.parametrize("delay", [0.05, 0.4])
def test_a_file_transfer_killed_half_way_is_refused_as_incomplete(tmp_path: Path, image: Path, delay: float) -> None:
    saved = tmp_path / "mig.mr"
    send = start("send", str(image), "--to", f"file:{saved}", "--multifd-channels", "4",
                 "--rounds", "100000", "--dirty-fraction", "0.3")  # fmt: skip
    try:
        wait_until("the file", lambda: saved.exists() and saved.stat().st_size > 0, send)
        time.sleep(delay)
        assert send.poll() is None
        os.kill(send.pid, signal.SIGKILL)
    finally:
        end(send)
    loaded = subprocess.run(
        [*MFDCOMP, "recv", "--listen", f"file:{saved}", "--out", str(tmp_path / "dst.img")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert loaded.returncode != 0
    assert "never completed" in loaded.stderr, loaded.stderr

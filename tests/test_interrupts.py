"""Ctrl-C and SIGTERM on `mfdcomp send` and `mfdcomp recv`, real processes.

SIGINT ends a side with 130 and 'interrupted', SIGTERM with 143; the peer is told on the main
channel and ends with exit 1 and 'interrupted' in its error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_image

MFDCOMP = [sys.executable, "-m", "mfdcomp"]
DEADLINE = 15.0


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*MFDCOMP, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{proc.args!r} still running {DEADLINE} s after the signal")
    return proc.returncode, stderr


def wait_until(what: str, predicate: object, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():  # type: ignore[operator]
        assert proc.poll() is None, f"{what}: the process ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{what} did not happen within {DEADLINE} s"
        time.sleep(0.01)


def end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image(tmp_path_factory.mktemp("img") / "src.img", "64M", seed=3)


@pytest.mark.parametrize(("signum", "code", "text"), [
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "interrupted by SIGTERM"),
])  # fmt: skip
def test_an_idle_recv_is_interrupted(tmp_path: Path, signum: int, code: int, text: str) -> None:
    sock = tmp_path / "mfd.sock"
    recv = start("recv", "--listen", f"unix:{sock}", "--out", str(tmp_path / "dst.img"))
    try:
        wait_until("listening", sock.exists, recv)
        os.kill(recv.pid, signum)
        returncode, stderr = finish(recv)
    finally:
        end(recv)
    assert returncode == code, stderr
    assert f"mfdcomp recv: {text}" in stderr, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr, stderr


@pytest.mark.parametrize(("victim", "signum", "code"), [("send", signal.SIGINT, 130), ("recv", signal.SIGINT, 130),
                                                        ("send", signal.SIGTERM, 143)])  # fmt: skip
def test_a_side_interrupted_mid_transfer_tells_its_peer(
    tmp_path: Path, image: Path, victim: str, signum: int, code: int
) -> None:
    sock = tmp_path / "mfd.sock"
    progress = tmp_path / "dst.img"
    recv = start("recv", "--listen", f"unix:{sock}", "--out", str(progress))
    send: subprocess.Popen[str] | None = None
    try:
        wait_until("listening", sock.exists, recv)
        send = start("send", str(image), "--to", f"unix:{sock}", "--multifd-channels", "2",
                     "--rounds", "100000", "--dirty-fraction", "0.3")  # fmt: skip
        wait_until("the target", lambda: progress.exists() or any(tmp_path.glob("*dst*")), recv)
        time.sleep(0.5)  # well inside the transfer
        interrupted, peer = (send, recv) if victim == "send" else (recv, send)
        assert peer.poll() is None and interrupted.poll() is None
        os.kill(interrupted.pid, signum)
        own, own_err = finish(interrupted)
        other, other_err = finish(peer)
    finally:
        end(recv)
        if send is not None:
            end(send)
    assert own == code, own_err
    assert f"mfdcomp {victim}: interrupted" in own_err, own_err
    assert "Traceback" not in own_err + other_err, own_err + other_err
    assert other == 1, other_err
    who = "source" if victim == "send" else "destination"
    assert f"{who}: interrupted" in other_err, other_err

"""`mfdcomp send` and `mfdcomp recv` as separate processes: a good run, and a peer killed mid-stream."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_image

MFDCOMP = [sys.executable, "-m", "mfdcomp"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MFDCOMP, *args], capture_output=True, text=True, timeout=120, check=False)


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*MFDCOMP, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("img")
    yield make_image(folder / "src.img", "32M", seed=3)
    # A module's directory outlives its tests' tmp_path (removed as each passes): 32 MiB left per run otherwise.
    shutil.rmtree(folder, ignore_errors=True)


def wait_listening(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "recv did not start listening"
        time.sleep(0.02)


@pytest.mark.parametrize("zero_mode", ["multifd", "legacy"])
def test_send_and_recv_processes_agree(tmp_path: Path, image: Path, zero_mode: str) -> None:
    sock = tmp_path / "mfd.sock"
    out = tmp_path / "dst.img"
    recv = start("recv", "--listen", f"unix:{sock}", "--out", str(out))
    wait_listening(sock, recv)
    sent = run(
        "send", str(image), "--to", f"unix:{sock}", "--multifd-channels", "4",
        "--zero-page-detection", zero_mode, "--rounds", "3", "--dirty-fraction", "0.1", "--json",
    )  # fmt: skip
    stdout, stderr = recv.communicate(timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert recv.returncode == 0, stderr
    summary = json.loads(sent.stdout)
    assert summary["ok"] and summary["totals"]["sync_packets"] == 12
    assert summary["peak_rss_bytes"] > image.stat().st_size  # its own peak: the mapped image is resident
    last = stdout.strip().splitlines()[-1]
    # xxh3-128 by default (issue 18), named on the last line.
    assert summary["digest"] == "xxh3-128"
    assert last.startswith("xxh3-128 ") and last.split()[1] == summary["digests"]["ram0"]
    # Where the time went, step by step and in order, ending at the verdict.
    phases = summary["phases"]
    assert list(phases) == [
        "main channel connected", "session accepted", "channels connected",
        "last packet sent", "source hashed", "verdict received",
    ]  # fmt: skip
    assert list(phases.values()) == sorted(phases.values()) and phases["verdict received"] <= summary["seconds"]


@pytest.mark.parametrize("victim", ["recv", "send"])
def test_a_killed_peer_ends_the_other_side_within_5_s(tmp_path: Path, image: Path, victim: str) -> None:
    sock = tmp_path / "mfd.sock"
    recv = start("recv", "--listen", f"unix:{sock}", "--out", str(tmp_path / "dst.img"))
    wait_listening(sock, recv)
    # Enough dirty rounds to still be running when the peer dies.
    send = start("send", str(image), "--to", f"unix:{sock}", "--rounds", "100000", "--dirty-fraction", "0.5")
    time.sleep(1.5)
    assert send.poll() is None and recv.poll() is None, "the transfer ended before the kill"
    dead, survivor = (recv, send) if victim == "recv" else (send, recv)
    os.kill(dead.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        _, stderr = survivor.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        survivor.kill()
        pytest.fail(f"the other side of a killed {victim} was still running 5 s later")
    assert time.monotonic() - killed_at < 5
    dead.communicate()
    assert survivor.returncode != 0
    assert "error:" in stderr, stderr


def test_file_transport_through_the_command_line(tmp_path: Path, image: Path) -> None:
    saved = tmp_path / "mig.mr"
    sent = run("send", str(image), "--to", f"file:{saved}", "--multifd-channels", "4", "--rounds", "2",
               "--dirty-fraction", "0.2", "--json")  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    digest = json.loads(sent.stdout)["digests"]["ram0"]
    loaded = run("recv", "--listen", f"file:{saved}", "--out", str(tmp_path / "dst.img"))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().splitlines()[-1] == f"sha256 {digest}"

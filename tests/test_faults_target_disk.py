"""A receiver whose target does not fit, or a block size no machine has: a clean error before any page, never a SIGBUS.

Pages reach a target file through a shared mapping, where a full disk would
kill the receiver with SIGBUS in the middle of a copy. So the targets' total
is checked against the free space, then every target's space is allocated
(fallocate, on ext4 and on tmpfs alike) when it is created. The small
filesystems are mounted for the test: a tmpfs, and an ext4 image on a loop
device (root and mount rights; skipped with the reason where refused).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_image

from mfdcomp.clients.ram import RamClient
from mfdcomp.clients.reserve import reserve
from mfdcomp.errors import MfdcompError

MFDCOMP = [sys.executable, "-m", "mfdcomp"]
FS_SIZE = 16 << 20
TARGET = 32 << 20


def _mount(kind: str, where: Path, backing: Path) -> str | None:
    """Mount a FS_SIZE filesystem of ``kind`` at ``where``; the reason when it cannot be done."""
    if os.geteuid() != 0:
        return "not root"
    where.mkdir(parents=True)
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(where)]
    else:
        if shutil.which("mkfs.ext4") is None:
            return "mkfs.ext4 is not installed"
        with backing.open("wb") as file:
            file.truncate(FS_SIZE)
        made = subprocess.run(["mkfs.ext4", "-q", "-F", str(backing)], capture_output=True, text=True)
        if made.returncode:
            return f"mkfs.ext4 failed: {made.stderr.strip()}"
        command = ["mount", "-o", "loop", str(backing), str(where)]
    done = subprocess.run(command, capture_output=True, text=True)
    return None if done.returncode == 0 else f"mount refused: {done.stderr.strip()}"


@pytest.fixture(params=["tmpfs", "ext4"])
def small_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / f"{request.param}-{uuid.uuid4().hex[:6]}"
    reason = _mount(request.param, where, tmp_path / "fs.img")
    if reason is not None:
        pytest.skip(f"cannot mount a small {request.param} here ({reason})")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_target_larger_than_its_filesystem_is_refused_and_removed(small_fs: Path) -> None:
    target = small_fs / "ram0.img"
    with pytest.raises(MfdcompError, match=r"no room for target .*ram0\.img \(33554432 bytes\)"):
        RamClient.create_targets([("ram0", TARGET)], lambda _: target)
    assert not target.exists()


def test_a_target_that_fits_is_allocated_in_full_on_disk_and_in_memory(small_fs: Path) -> None:
    """Allocated, not just checked, even on tmpfs: another writer filling the filesystem later cannot take its pages."""
    path = small_fs / "fits.img"
    with path.open("wb") as file:
        file.truncate(FS_SIZE // 2)
        reserve(file.fileno(), FS_SIZE // 2)
    assert path.stat().st_blocks * 512 >= FS_SIZE // 2


def test_recv_onto_a_full_filesystem_ends_both_sides_with_the_reason(small_fs: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "32M", seed=3)
    recv = subprocess.Popen(
        [*MFDCOMP, "recv", "--listen", f"unix:{tmp_path / 'r.sock'}", "--out", str(small_fs / "dst.img")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert recv.stderr is not None
        ready = recv.stderr.readline()
        assert "listening on" in ready, ready
        sent = subprocess.run(
            [*MFDCOMP, "send", str(image), "--to", f"unix:{tmp_path / 'r.sock'}", "--multifd-channels", "2"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        _, recv_err = recv.communicate(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    assert recv.returncode > 0, f"receiver ended with {recv.returncode} (a negative code is a signal): {recv_err}"
    assert "no room for target" in recv_err and "Traceback" not in recv_err, recv_err
    # The destination answers the SESSION with its error before any channel connects.
    assert sent.returncode != 0 and "destination: no room for target" in sent.stderr, sent.stderr
    assert "Traceback" not in sent.stderr, sent.stderr
    assert not (small_fs / "dst.img").exists()


def test_an_impossible_block_size_is_a_clean_error_on_any_filesystem(tmp_path: Path) -> None:
    """A SESSION may announce any size: 1 EiB is refused (EFBIG, or no room) and leaves no file behind."""
    target = tmp_path / "huge.img"
    with pytest.raises(MfdcompError, match=r"no room for target .*huge\.img \(1152921504606846976 bytes\)"):
        RamClient.create_targets([("ram0", 1 << 60)], lambda _: target)
    assert not target.exists()


def test_an_impossible_block_size_in_memory_is_a_clean_error() -> None:
    # 1 EiB is past any x86-64 or arm64 address space, whatever the overcommit policy; refused against
    # MemAvailable before mmap is tried (issue 19.2).
    with pytest.raises(MfdcompError, match=r"no memory for anonymous targets: 1152921504606846976 bytes needed"):
        RamClient.anonymous([("ram0", 1 << 60)])

"""A full disk under the file transport: the writer fails cleanly and the file is never taken for whole.

Two ways to fill the disk:

* a small tmpfs mounted for the test (needs root and mount rights; skipped
  where ``mount`` is refused): ENOSPC while the channels write pages, or only
  when the manifest is written at the very end;
* RLIMIT_FSIZE on the ``mfdcomp send`` process (works anywhere): EFBIG when
  the file is sized at the start, or when the manifest goes past the limit.

Every case: ``send`` exits non-zero with an ``error:`` naming the errno, within
10 s; the file's state word is still "writing"; ``recv --listen file:`` refuses it.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_image

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine.mappedram import load_from_file, save_to_file
from mfdcomp.engine.migrate import MigrateOptions
from mfdcomp.errors import ChannelError, WireError
from mfdcomp.registry import get_codec
from mfdcomp.transport import mappedram as mr

MFDCOMP = [sys.executable, "-m", "mfdcomp"]
IMAGE_SIZE = 16 << 20
DEADLINE = 10.0


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image(tmp_path_factory.mktemp("img") / "src.img", "16M", seed=6)


def send(image: Path, target: Path, preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MFDCOMP, "send", str(image), "--to", f"file:{target}", "--multifd-channels", "4",
         "--rounds", "2", "--dirty-fraction", "0.1"],
        capture_output=True, text=True, timeout=60, check=False, preexec_fn=preexec,
    )  # fmt: skip


def mount_tmpfs(where: Path, size: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    mounted: list[Path] = []

    def make(size: int) -> Path:
        where = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
        if not mount_tmpfs(where, size):
            pytest.skip("cannot mount a tmpfs here (not root, or no mount rights): the RLIMIT_FSIZE cases cover it")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def never_complete(target: Path, tmp_path: Path, done: subprocess.CompletedProcess[str], errno_text: str) -> None:
    assert done.returncode != 0
    assert "error:" in done.stderr and errno_text in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    if target.exists() and target.stat().st_size >= mr.FILE_HEADER.size:
        state = mr.FILE_HEADER.unpack_from(target.read_bytes()[: mr.FILE_HEADER.size])[2]
        assert state == mr.STATE_WRITING, "a file whose writer failed says it is complete"
    loaded = subprocess.run(
        [*MFDCOMP, "recv", "--listen", f"file:{target}", "--out", str(tmp_path / "dst.img")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert loaded.returncode != 0
    assert "never completed" in loaded.stderr or "shorter than its header" in loaded.stderr, loaded.stderr


def test_full_tmpfs_while_the_channels_write_pages(
    image: Path, tmp_path: Path, small_fs: Callable[[int], Path]
) -> None:
    target = small_fs(4 << 20) / "mig.mr"
    done = send(image, target)
    never_complete(target, tmp_path, done, "No space left on device")


def test_full_tmpfs_only_when_the_manifest_is_written(
    image: Path, tmp_path: Path, small_fs: Callable[[int], Path]
) -> None:
    """Room for every page, the header and the bitmaps, but not the manifest's page at the end."""
    roomy = small_fs(64 << 20) / "whole.mr"
    done = send(image, roomy)
    assert done.returncode == 0, done.stderr
    usage = os.stat(roomy).st_blocks * 512  # sparse: zero pages take no room
    target = small_fs(usage - 4096) / "mig.mr"
    done = send(image, target)
    never_complete(target, tmp_path, done, "No space left on device")


def _file_end() -> int:
    return max(place.end for place in mr.layout([("ram0", IMAGE_SIZE)], 4096))


def _limit(size: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))  # Python ignores SIGXFSZ: writes get EFBIG

    return apply


@pytest.mark.parametrize(
    ("limit", "when"),
    [(8 << 20, "the file is sized at the start"), (_file_end(), "the manifest goes past the end")],
)
def test_file_size_limit(image: Path, tmp_path: Path, limit: int, when: str) -> None:
    target = tmp_path / "mig.mr"
    done = send(image, target, _limit(limit))
    never_complete(target, tmp_path, done, "File too large")


def test_full_tmpfs_inside_a_manifest_of_several_pages(tmp_path: Path, small_fs: Callable[[int], Path]) -> None:
    """40 blocks with long names make a manifest of several pages; the disk fills up inside it.

    The write of the manifest is then short (part of it fits): the file must not be marked complete.
    """
    blocks = [(f"block-{i:03d}-" + "x" * 200, 4096) for i in range(40)]

    def save(path: Path) -> Any:
        with RamClient.anonymous(blocks) as ram:
            for index, block in enumerate(ram.blocks.values()):
                block.memory[:] = bytes([index + 1]) * 4096
            return save_to_file(ram, path, get_codec("none"), MigrateOptions(channels=2))

    roomy = small_fs(256 << 20) / "whole.mr"
    save(roomy)
    usage = os.stat(roomy).st_blocks * 512
    manifest_pages = -(-mr.FILE_HEADER.unpack_from(roomy.read_bytes()[:64])[5] // 4096)
    assert manifest_pages >= 3
    target = small_fs(usage - (manifest_pages - 1) * 4096) / "cut.mr"  # one page of the manifest fits
    with pytest.raises(ChannelError, match="No space left on device"):
        save(target)
    assert mr.FILE_HEADER.unpack_from(target.read_bytes()[:64])[2] == mr.STATE_WRITING
    with pytest.raises(WireError, match="never completed"):
        load_from_file(target, lambda s: RamClient.anonymous(s.blocks).blocks, dict)

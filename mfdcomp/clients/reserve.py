"""Room for the destination's target files, checked and then really taken, before any page arrives.

A page written through a shared mapping that the filesystem cannot back ends
the process with SIGBUS in the middle of a copy: no error, no clean-up, a
full filesystem left behind. A receiver that writes its pages with pwrite
(the socket receiver, mfdcomp.pagestore) gets ENOSPC instead and needs only
the first step; one that writes through the mapping (a mapped-ram load)
takes both, which make the SIGBUS impossible:

* :func:`check_room` compares the total size of all targets on each
  filesystem with its free space before any file is made, so several blocks
  that fit one by one but not together are one clean error naming both numbers;
* :func:`reserve` allocates every block of each file with
  ``posix_fallocate``, on disk filesystems and on tmpfs alike (tmpfs has had
  fallocate since Linux 3.5 and really allocates the pages), so another writer
  filling the filesystem later cannot take a page a target still has to write.

On ext4 the blocks become unwritten extents, which also makes each page's
first write cheaper. On tmpfs every page of the target is allocated (and
zeroed) at once: a target then holds its whole size in memory from the start,
including pages that stay zero -- the price of never dying of SIGBUS.
Where a filesystem has no fallocate, glibc's posix_fallocate writes a zero
into every block instead (slow, but as safe).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mfdcomp.errors import NoSpaceError, TargetError
from mfdcomp.procinfo import kib_field

__all__ = ["check_memory", "check_room", "reserve"]


def check_room(targets: Iterable[tuple[str, Path, int]]) -> None:
    """Refuse, with the sizes, targets (label, directory, size) that do not fit together on their filesystems."""
    by_device: dict[int, tuple[Path, list[tuple[str, int]]]] = {}
    for label, directory, size in targets:
        try:
            device = os.stat(directory).st_dev
        except OSError as exc:
            raise TargetError(f"cannot use directory {directory}: {exc.strerror or exc}") from exc
        by_device.setdefault(device, (directory, []))[1].append((label, size))
    for directory, wanted in by_device.values():
        try:
            stats = os.statvfs(directory)
        except OSError as exc:
            raise TargetError(f"cannot use directory {directory}: {exc.strerror or exc}") from exc
        if stats.f_blocks == 0:
            continue  # ramfs and the like keep no count: nothing to compare with
        free = stats.f_bavail * stats.f_frsize
        needed = sum(size for _, size in wanted)
        if needed > free:
            if len(wanted) == 1:
                label, size = wanted[0]
                what = f"target {label} ({size} bytes)"
            else:
                what = "targets " + ", ".join(f"{label} ({size} bytes)" for label, size in wanted)
            raise NoSpaceError(
                f"no room for {what}: {needed} bytes needed, {free} bytes free in {directory}",
                needed=needed,
                available=free,
            )


def check_memory(needed: int, what: str = "anonymous targets") -> None:
    """Refuse, with both numbers, anonymous memory beyond the kernel's MemAvailable.

    A shared anonymous mapping is made lazily: one larger than the memory there is succeeds, and the
    pages the peer then sends end the process in the OOM killer (or SIGBUS) half-way.
    """
    available = kib_field("/proc/meminfo", "MemAvailable")
    if available is not None and needed > available:
        raise NoSpaceError(
            f"no memory for {what}: {needed} bytes needed, {available} bytes available (MemAvailable)",
            needed=needed,
            available=available,
        )


def reserve(fd: int, size: int) -> None:
    """Allocate all ``size`` bytes of ``fd``'s file, reading back as zeros.

    Raises OSError (ENOSPC, EDQUOT, EFBIG...) when the filesystem has no room.
    """
    # Python retries EINTR itself after running signal handlers (PEP 475), so Ctrl-C still stops it.
    os.posix_fallocate(fd, 0, size)

"""Bringing the machine's free memory to one state before each measured run.

On the VMs this bench runs on, memory the guest frees is handed back to the
host after a few seconds (virtio-balloon free page reporting), and the next
first touch of such a page waits for the host to back it again. A run that
starts right after a large free gets pages that are still backed; one that
starts later gets handed-back pages. QEMU's migration of a 1 GiB image took
0.56-0.61 s right after such a warm-up and 0.84-1.66 s without it, in the
same minutes, while mfdcomp's took 0.67-0.72 s either way. So every measured
run, mfdcomp's and QEMU's alike, starts right after :func:`warm_memory`.
"""

from __future__ import annotations

import mmap
import subprocess
import sys

from mfdcomp.procinfo import kib_field

__all__ = ["available_memory", "warm_memory", "warm_size"]

# Left to the rest of the machine when the warm-up is sized.
_RESERVE = 512 << 20


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes; None where there is no such file."""
    return kib_field("/proc/meminfo", "MemAvailable")


def warm_size(image_size: int) -> int:
    """What one run may take fresh: the source's and the destination's copy of the image, and a margin.

    Capped by the memory that is available now, less a reserve; 0 when nothing is.
    """
    wanted = 2 * image_size + (256 << 20)
    available = available_memory()
    if available is None:
        return 0
    return max(0, min(wanted, available - _RESERVE)) & ~(mmap.PAGESIZE - 1)


# MAP_POPULATE allocates and zeroes every page in one call; the process's end frees them.
_WARM = "import mmap, sys; mmap.mmap(-1, int(sys.argv[1]), flags=mmap.MAP_PRIVATE | mmap.MAP_POPULATE)"


def warm_memory(size: int) -> None:
    """Have ``size`` bytes of memory allocated, touched and freed again, so that they are backed.

    In a child process of its own: a process's peak RSS passes to the children
    it forks later, and the bench reads each end's peak RSS from its process.
    """
    if size > 0:
        subprocess.run([sys.executable, "-c", _WARM, str(size)], check=True, timeout=600)

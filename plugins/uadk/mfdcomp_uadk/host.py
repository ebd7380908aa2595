"""What this host offers the UADK codec: libwd_comp, and uacce accelerator devices.

Nothing here runs at import time: ``ctypes`` is imported and libwd_comp
loaded only inside :func:`probe_host`, which the codec calls once from its
probe().

This build has no binding to libwd_comp's session API (its request and
session layouts could not be checked against a real library here), so the
hardware path is reported unavailable even on a host with UADK; the probe
still says what it found, so the gap is plain on such a host.
"""

from __future__ import annotations

import os
from pathlib import Path

from mfdcomp.methods import CodecPath, PathProbe
from mfdcomp.methods.hostprobe import Finder, Finding, Loader, dlopen, find_library, ld_cache, read_text

LIBRARY_STEM = "wd_comp"
# Names tried when the loader cache does not know libwd_comp (an install in /usr/local).
LIBRARY_NAMES = ("libwd_comp.so.2", "libwd_comp.so")
# Functions libwd_comp exports; a library without them is not UADK's compression library.
LIBRARY_SYMBOLS = ("wd_comp_alloc_sess", "wd_do_comp_sync")

# uacce devices (hisi_zip-N on HiSilicon) list their algorithms and free queues here.
UACCE_CLASS = Path("sys/class/uacce")

NO_BINDING = (
    "this build of mfdcomp-uadk has no libwd_comp binding, so it cannot drive a device even where the "
    "library and a device exist"
)


def _free_queues(device: Path) -> int:
    text = read_text(device / "available_instances")
    return int(text) if text.isdigit() else 0


def find_uacce(root: Path) -> Finding:
    """A uacce device that offers zlib, has a free queue and that this process can open."""
    devices_dir = root / UACCE_CLASS
    if not devices_dir.is_dir():
        return Finding(False, f"no UADK device: /{UACCE_CLASS} is absent (no uacce driver loaded)")
    devices = sorted(devices_dir.iterdir())
    if not devices:
        return Finding(False, f"no UADK device: /{UACCE_CLASS} is empty")
    names = ", ".join(d.name for d in devices)
    zlib_devices = [d for d in devices if "zlib" in read_text(d / "algorithms").split()]
    if not zlib_devices:
        return Finding(False, f"uacce device(s) {names} offer no zlib algorithm")
    free = [d for d in zlib_devices if _free_queues(d) > 0]
    if not free:
        return Finding(False, f"uacce zlib device(s) {', '.join(d.name for d in zlib_devices)} have no free queue")
    usable = [d.name for d in free if os.access(root / "dev" / d.name, os.R_OK | os.W_OK)]
    if not usable:
        return Finding(False, f"uacce device(s) {', '.join(d.name for d in free)} are not accessible in /dev")
    return Finding(True, f"uacce device(s) {', '.join(usable)} offer zlib with free queues", usable[0])


def probe_host(root: Path = Path("/"), load: Loader = dlopen, find: Finder = ld_cache) -> list[PathProbe]:
    """One PathProbe per UADK path: hardware (libwd_comp on a uacce device), then raw pages."""
    library = find_library(LIBRARY_STEM, LIBRARY_NAMES, LIBRARY_SYMBOLS, load, find)
    device = find_uacce(root)
    hardware = PathProbe(
        CodecPath.HARDWARE,
        False,
        f"{library.detail}; {device.detail}; {NO_BINDING}",
        library=library.name or "libwd_comp",
    )
    raw = PathProbe(
        CodecPath.RAW,
        True,
        "every page sent raw (length = page size) under the uadk flag, as QEMU does without a UADK device",
    )
    return [hardware, raw]

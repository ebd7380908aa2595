"""What this host offers the QPL codec: libqpl, and Intel IAA work queues.

Nothing here runs at import time: ``ctypes`` is imported and libqpl loaded
only inside :func:`probe_host`, which the codec calls once from its probe().

This build has no binding to libqpl's job API (its ``qpl_job`` layout could
not be checked against a real library here), so the hardware path is
reported unavailable even on a host with libqpl and IAA; the probe still
says what it found, so the gap is plain on such a host.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from mfdcomp.methods import CodecPath, PathProbe
from mfdcomp.methods.hostprobe import Finder, Finding, Loader, dlopen, find_library, ld_cache, read_text

LIBRARY_STEM = "qpl"
# Names tried when the loader cache does not know libqpl (a CMake install in /usr/local).
LIBRARY_NAMES = ("libqpl.so.1", "libqpl.so")
# Functions every libqpl exports; a library without them is not QPL.
LIBRARY_SYMBOLS = ("qpl_get_job_size", "qpl_init_job", "qpl_execute_job")

# The idxd driver lists IAA devices (iaxN) and their work queues (wqN.M) here;
# accel-config configures them, and user-mode queues appear under /dev/iax.
IDXD_DEVICES = Path("sys/bus/dsa/devices")
IAX_NODES = Path("dev/iax")

NO_BINDING = (
    "this build of mfdcomp-qpl has no libqpl job binding, so it cannot drive IAA even where libqpl and a "
    "work queue exist"
)


def find_iaa(root: Path) -> Finding:
    """An enabled user-mode IAA work queue that this process can open."""
    devices = root / IDXD_DEVICES
    if not devices.is_dir():
        return Finding(False, f"no IAA device: /{IDXD_DEVICES} is absent (no idxd driver loaded)")
    iaa = sorted(d.name for d in devices.glob("iax*"))
    if not iaa:
        return Finding(False, f"no IAA device: no iax* in /{IDXD_DEVICES}")
    ids = {name.removeprefix("iax") for name in iaa}
    queues = sorted(
        wq.name
        for wq in devices.glob("wq*.*")
        if wq.name.removeprefix("wq").split(".")[0] in ids
        and read_text(wq / "state") == "enabled"
        and read_text(wq / "type") == "user"
    )
    if not queues:
        return Finding(False, f"IAA device(s) {', '.join(iaa)} have no enabled user work queue (see accel-config)")
    usable = [wq for wq in queues if os.access(root / IAX_NODES / wq, os.R_OK | os.W_OK)]
    if not usable:
        return Finding(False, f"IAA work queue(s) {', '.join(queues)} are enabled but not accessible in /{IAX_NODES}")
    return Finding(True, f"IAA work queue(s) {', '.join(usable)} enabled and accessible", usable[0])


def probe_host(root: Path = Path("/"), load: Loader = dlopen, find: Finder = ld_cache) -> list[PathProbe]:
    """One PathProbe per QPL path: hardware (libqpl on IAA), then software."""
    library = find_library(LIBRARY_STEM, LIBRARY_NAMES, LIBRARY_SYMBOLS, load, find)
    device = find_iaa(root)
    hardware = PathProbe(
        CodecPath.HARDWARE,
        False,
        f"{library.detail}; {device.detail}; {NO_BINDING}",
        library=library.name or "libqpl",
    )
    if library.found:
        why = f"{library.detail} but its software path is not driven by this build"
    else:
        why = "libqpl is not installed"
    software = PathProbe(
        CodecPath.SOFTWARE,
        True,
        f"raw deflate (4 KiB window, level 1) from zlib: {why}",
        library="zlib",
        version=zlib.ZLIB_RUNTIME_VERSION,
    )
    return [hardware, software]

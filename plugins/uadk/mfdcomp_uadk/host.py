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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mfdcomp.methods import CodecPath, PathProbe

Loader = Callable[[str], object]
Finder = Callable[[str], str | None]

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


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the probe looked for: whether it is there, and a sentence saying so."""

    found: bool
    detail: str
    name: str | None = None


def _dlopen(name: str) -> object:
    import ctypes  # here, not at import time: importing the plugin loads nothing

    return ctypes.CDLL(name)


def _ld_cache(stem: str) -> str | None:
    import ctypes.util

    return ctypes.util.find_library(stem)


def find_library(stem: str, names: Sequence[str], symbols: Sequence[str], load: Loader, find: Finder) -> Finding:
    """The first of the loader cache's answer and ``names`` that loads and exports ``symbols``."""
    candidates = list(dict.fromkeys([n for n in (find(stem),) if n] + list(names)))
    problems: list[str] = []
    for name in candidates:
        try:
            library = load(name)
        except OSError as exc:
            # A missing file is the common case and says nothing more than "not found".
            if "No such file" not in str(exc):
                problems.append(f"{name} does not load: {exc}")
            continue
        missing = [s for s in symbols if not hasattr(library, s)]
        if missing:
            problems.append(f"{name} lacks {', '.join(missing)}")
            continue
        return Finding(True, f"{name} loads", name)
    tried = ", ".join(candidates)
    return Finding(False, "; ".join(problems) if problems else f"lib{stem} not found (tried {tried})")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _free_queues(device: Path) -> int:
    text = _read(device / "available_instances")
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
    zlib_devices = [d for d in devices if "zlib" in _read(d / "algorithms").split()]
    if not zlib_devices:
        return Finding(False, f"uacce device(s) {names} offer no zlib algorithm")
    free = [d for d in zlib_devices if _free_queues(d) > 0]
    if not free:
        return Finding(False, f"uacce zlib device(s) {', '.join(d.name for d in zlib_devices)} have no free queue")
    usable = [d.name for d in free if os.access(root / "dev" / d.name, os.R_OK | os.W_OK)]
    if not usable:
        return Finding(False, f"uacce device(s) {', '.join(d.name for d in free)} are not accessible in /dev")
    return Finding(True, f"uacce device(s) {', '.join(usable)} offer zlib with free queues", usable[0])


def probe_host(root: Path = Path("/"), load: Loader = _dlopen, find: Finder = _ld_cache) -> list[PathProbe]:
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

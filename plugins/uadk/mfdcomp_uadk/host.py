"""What this host offers the UADK codec: libwd_comp's init, and uacce accelerator devices.

Nothing here runs at import time: libwd and libwd_comp are loaded, and
``wd_comp_init2("zlib", SCHED_POLICY_RR, TASK_HW)`` called, only inside
:func:`probe_host`, once per process whatever the number of codec objects
(an init that succeeded is undone at once; channels init again through the
:class:`~mfdcomp_uadk.binding.Runtime`). The hardware path is available when
init returns 0 or -EEXIST; without a device it returns -22 and the probe
says so, with what sysfs shows.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mfdcomp.methods import CodecPath, PathProbe
from mfdcomp.methods.hostprobe import Finding, load_first, read_text
from mfdcomp_uadk import locate

if TYPE_CHECKING:
    from mfdcomp_uadk.binding import Library, Runtime

# uacce devices (hisi_zip-N on HiSilicon) list their algorithms and free queues here.
UACCE_CLASS = Path("sys/class/uacce")


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


RAW_REASON = "every page sent raw (length = page size) under the uadk flag, as QEMU does without a UADK device"


@dataclass(frozen=True, slots=True)
class HostProbe:
    """The two PathProbes, and libwd_comp's runtime when the library loaded."""

    probes: tuple[PathProbe, ...]
    runtime: Runtime | None
    init_result: int | None


_PROCESS: list[HostProbe] = []  # at most one: the process's probe, under _PROCESS_LOCK
_PROCESS_LOCK = threading.Lock()


def probe_host(root: Path = Path("/")) -> HostProbe:
    """The process's probe (made on the first call): hardware (libwd_comp's init), then raw pages."""
    with _PROCESS_LOCK:
        if not _PROCESS:
            _PROCESS.append(_probe(root))
        return _PROCESS[0]


def load_library() -> tuple[Library | None, str]:
    """The first candidate of :mod:`mfdcomp_uadk.locate` that loads as libwd_comp, and its origin (or why none)."""
    from mfdcomp_uadk.binding import Library  # ctypes only now, at probe time

    none = f"libwd_comp not found (no ${locate.ENV_VAR}, none in the loader cache, no {locate.PRIVATE_PREFIX})"
    return load_first(locate.candidates(), Library, "libwd_comp", none)


def _probe(root: Path) -> HostProbe:
    from mfdcomp_uadk.binding import Runtime, errno_text

    device = find_uacce(root)
    raw = PathProbe(CodecPath.RAW, True, RAW_REASON)
    library, origin = load_library()
    if library is None:
        why = f"needs libwd_comp, which is not loaded ({origin}); {device.detail}"
        hardware = PathProbe(CodecPath.HARDWARE, False, why, "libwd_comp")
        return HostProbe((hardware, raw), None, None)
    runtime = Runtime(library)
    rc = runtime.acquire()
    runtime.release()  # uninit now if init succeeded: channels init again for their sessions
    name = f"libwd_comp {library.version or ''}".rstrip()
    if rc == 0 or rc == -errno.EEXIST:
        hardware = PathProbe(
            CodecPath.HARDWARE,
            True,
            f"{name} ({origin}): wd_comp_init2 returned {errno_text(rc)}; {device.detail}",
            library.path,
            library.version,
        )
    else:
        hardware = PathProbe(
            CodecPath.HARDWARE,
            False,
            f"wd_comp_init2 returned {errno_text(rc)}: no UADK compression device ({_device_why(device)})",
            library.path,
            library.version,
        )
    return HostProbe((hardware, raw), runtime, rc)


def _device_why(device: Finding) -> str:
    # The common case in the words a person searches for; anything else as find_uacce put it.
    if device.detail.startswith("no UADK device: /sys/class/uacce is absent"):
        return f"/{UACCE_CLASS} absent"
    return device.detail

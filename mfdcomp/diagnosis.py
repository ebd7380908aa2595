"""The records a plugin's doctor hook returns, and the host-reading helpers several plugins share.

``mfdcomp doctor`` asks every plugin, through the ``mfdcomp_doctor`` hook (see :mod:`mfdcomp.registry`),
what it sees of its own hardware: each answers a list of :class:`DoctorSection`, one block of the report
with its :class:`Finding` records, the :class:`Accelerator` devices it found and how they use the IOMMU
(:class:`IommuUse`). The core doctor adds the facts no vendor owns: the IOMMU (:func:`iommu_findings`),
the codecs' probes and the plugins that failed.

Everything here reads files only, under a ``root`` (``/`` on a real host; tests pass a fake tree built in a
temporary folder): sysfs, ``/dev``, ``/proc``; libraries are found by file name without being loaded.
Importing this module opens nothing and loads no library.
"""

from __future__ import annotations

import enum
import glob
import grp
import os
import pwd
import stat
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class Status(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    PROBLEM = "problem"
    INFO = "info"


IOMMU = "IOMMU"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the doctor looked at: where, what, how it stands, and what to do when it is not ok."""

    area: str
    item: str
    status: Status
    detail: str
    advice: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "area": self.area,
            "item": self.item,
            "status": str(self.status),
            "detail": self.detail,
            "advice": self.advice,
        }


@dataclass(frozen=True, slots=True)
class Accelerator:
    """A device this host shows (driver bound or not): its area, a phrase, and whether it needs an IOMMU."""

    area: str
    text: str
    needs_iommu: bool


@dataclass(frozen=True, slots=True)
class IommuUse:
    """How one area's devices use the IOMMU, so the shared IOMMU check can say who needs what and why.

    ``why`` is a clause naming the devices (``IAA shares the process's memory through the IOMMU (SVA)``);
    ``intel`` says the kernel's ``intel_iommu=`` option concerns them; ``scalable_mode``, when not empty,
    names what of theirs needs Intel's scalable mode (``sm_on``), and ``scalable_mode_check`` how to see
    whether a kernel turned it on by itself.
    """

    area: str
    why: str
    intel: bool = False
    scalable_mode: str = ""
    scalable_mode_check: str = ""


@dataclass(frozen=True, slots=True)
class DoctorSection:
    """One block of the doctor's report, as a plugin's ``mfdcomp_doctor`` hook returns it.

    ``title`` is the area its findings carry (``Intel QAT``); ``codecs`` the codecs whose hardware path
    this section explains (the codec table points to it when that path is missing); ``accelerators`` the
    devices found; ``iommu`` how they use the IOMMU (None: they do not).
    """

    title: str
    findings: tuple[Finding, ...]
    codecs: tuple[str, ...] = ()
    accelerators: tuple[Accelerator, ...] = ()
    iommu: IommuUse | None = None
    plugin: str = field(default="", compare=False)  # filled in by the doctor: who reported it

    def as_dict(self) -> dict[str, object]:
        return {
            "title": self.title,
            "plugin": self.plugin,
            "codecs": list(self.codecs),
            "accelerators": [a.text for a in self.accelerators],
        }


@dataclass(frozen=True, slots=True)
class Identity:
    """Who would open the device nodes (tests pass a user who owns nothing)."""

    uid: int
    gids: frozenset[int]

    @classmethod
    def current(cls) -> Identity:
        return cls(os.geteuid(), frozenset({os.getegid(), *os.getgroups()}))

    def can_open(self, info: os.stat_result) -> bool:
        """Read and write access by the mode bits (ACLs and security modules are not looked at)."""
        if self.uid == 0:
            return True
        if info.st_uid == self.uid:
            bits = info.st_mode >> 6
        elif info.st_gid in self.gids:
            bits = info.st_mode >> 3
        else:
            bits = info.st_mode
        return bits & 0o6 == 0o6

    def describe(self) -> str:
        return f"uid {self.uid} ({user_name(self.uid)})"


# ---------------------------------------------------------------------------------------------------
# Reading the tree


def read_attr(path: Path) -> str | None:
    """A sysfs or proc file's text, stripped; None when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def link_name(path: Path) -> str | None:
    """The last component of a sysfs symlink (``driver``, ``iommu_group``), or None when absent."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def shown(root: Path, path: Path) -> str:
    """``path`` as it would be on the host, whatever ``root`` is."""
    return "/" + str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def hex_value(text: str | None) -> int | None:
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


def int_value(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


@dataclass(frozen=True, slots=True)
class PciFunction:
    address: str
    vendor: int
    device: int
    driver: str | None
    path: Path

    @property
    def iommu_group(self) -> str | None:
        return link_name(self.path / "iommu_group")


def pci_functions(root: Path = Path("/")) -> list[PciFunction]:
    """Every PCI function in /sys/bus/pci/devices, with its ids and bound driver."""
    folder = root / "sys/bus/pci/devices"
    if not folder.is_dir():
        return []
    found: list[PciFunction] = []
    for entry in sorted(folder.iterdir()):
        vendor = hex_value(read_attr(entry / "vendor"))
        device = hex_value(read_attr(entry / "device"))
        if vendor is not None and device is not None:
            found.append(PciFunction(entry.name, vendor, device, link_name(entry / "driver"), entry))
    return found


def vendor_functions(root: Path, vendor: int, devices: Container[int]) -> list[PciFunction]:
    """The PCI functions with this vendor id and one of these device ids."""
    return [f for f in pci_functions(root) if f.vendor == vendor and f.device in devices]


def no_device_finding(
    area: str, item: str, functions: Sequence[PciFunction], unbound: tuple[str, str], missing: tuple[str, str]
) -> Finding:
    """A driver's folder lists no device: why, as a finding.

    With ``functions`` (the PCI functions it would drive) present, a problem named ``item`` with ``unbound``'s
    detail and advice; without, no such device is here: ``devices``, missing, with ``missing``'s.
    """
    if functions:
        return Finding(area, item, Status.PROBLEM, *unbound)
    return Finding(area, "devices", Status.MISSING, *missing)


def usable_finding(area: str, item: str, usable: Sequence[str], detail: str, advice: str) -> Finding:
    """The usable ones, named, or a problem (``detail``, ``advice``) when there is none."""
    if usable:
        return Finding(area, item, Status.OK, ", ".join(usable))
    return Finding(area, item, Status.PROBLEM, detail, advice)


def device_accelerators(
    area: str, devices: Sequence[str], functions: Sequence[PciFunction], described: Callable[[PciFunction], str]
) -> list[Accelerator]:
    """Devices a driver made (``<area> <name>``), else the PCI functions it has not taken yet; all need the IOMMU."""
    if devices:
        return [Accelerator(area, f"{area} {name}", True) for name in devices]
    return [Accelerator(area, described(f), True) for f in functions]


def node_finding(area: str, item: str, path: Path, root: Path, identity: Identity, advice: str) -> Finding:
    """Whether ``identity`` can open a device node for reading and writing, with its mode and owner."""
    where = shown(root, path)
    try:
        info = path.stat()
    except OSError:
        return Finding(area, item, Status.PROBLEM, f"{where} does not exist", advice)
    mode = f"{stat.filemode(info.st_mode)} {user_name(info.st_uid)}:{group_name(info.st_gid)}"
    if identity.can_open(info):
        return Finding(area, item, Status.OK, f"{where} ({mode}): {identity.describe()} can open it")
    return Finding(
        area, item, Status.PROBLEM, f"{where} ({mode}): {identity.describe()} cannot open it for read and write", advice
    )


def find_program(name: str, root: Path) -> str | None:
    for folder in ("usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin", "bin", "sbin"):
        if (root / folder / name).is_file():
            return f"/{folder}/{name}"
    return None


# ---------------------------------------------------------------------------------------------------
# Libraries, found by file name only

LIBRARY_DIRS = (
    "usr/lib/*-linux-gnu",
    "usr/lib64",
    "usr/lib",
    "usr/local/lib64",
    "usr/local/lib",
    "lib/*-linux-gnu",
    "lib64",
)


@dataclass(frozen=True, slots=True)
class LibraryFile:
    path: str
    version: str | None


def locate_library(stem: str, root: Path = Path("/"), near: Iterable[Path] = ()) -> LibraryFile | None:
    """``lib<stem>.so*`` beside ``near`` folders, in the usual folders under ``root``, or in the loader cache.

    The version is the one in the real file's name (``libqat.so.4.2.0`` gives 4.2.0).
    """
    folders = [*near, *(Path(p) for d in LIBRARY_DIRS for p in sorted(glob.glob(str(root / d))))]
    for folder in folders:
        matches = sorted(folder.glob(f"lib{stem}.so*"))
        if matches:
            real = os.path.basename(os.path.realpath(matches[0]))
            version = real.split(".so.", 1)[1] if ".so." in real else None
            return LibraryFile(shown(root, matches[0]), version)
    # The loader cache describes the real host only, so a fake tree never consults it.
    if root == Path("/"):
        import ctypes.util  # here: importing a plugin that uses this module must not import ctypes

        name = ctypes.util.find_library(stem)
        if name is not None:
            return LibraryFile(name, None)
    return None


def library_finding(area: str, item: str, found: LibraryFile | None, advice: str) -> Finding:
    if found is None:
        return Finding(area, item, Status.MISSING, f"no {item} library found", advice)
    version = f", file version {found.version}" if found.version else ""
    return Finding(area, item, Status.OK, f"{found.path}{version}")


# ---------------------------------------------------------------------------------------------------
# IOMMU


def iommu_findings(
    root: Path = Path("/"), needed_by: Sequence[str] = (), uses: Sequence[IommuUse] = ()
) -> list[Finding]:
    """IOMMU units and the kernel command line.

    ``needed_by`` names the areas whose devices here need an IOMMU; ``uses`` says, for every area a
    plugin reports on (devices present or not), how its devices use it.
    """
    folder = root / "sys/class/iommu"
    units = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    needing = [u for u in uses if u.area in needed_by]
    findings: list[Finding] = []
    if units:
        findings.append(Finding(IOMMU, "IOMMU units", Status.OK, f"{', '.join(units)} in /sys/class/iommu"))
    elif needed_by:
        whys = "; ".join(u.why for u in needing or uses)
        sm_on = ",sm_on" if any(u.scalable_mode for u in needing or uses) else ""
        findings.append(
            Finding(
                IOMMU,
                "IOMMU units",
                Status.PROBLEM,
                f"no IOMMU is active (/sys/class/iommu is empty or absent), and {', '.join(needed_by)} need one",
                (f"{whys}: " if whys else "")
                + "turn VT-d (Intel) or the SMMU (Arm) on in the firmware, and on Intel boot with "
                + f"intel_iommu=on{sm_on}",
            )
        )
    else:
        findings.append(
            Finding(
                IOMMU,
                "IOMMU units",
                Status.INFO,
                "no IOMMU is active (/sys/class/iommu is empty or absent); no device here needs one",
            )
        )
    cmdline = read_attr(root / "proc/cmdline") or ""
    options = [t.split("=", 1)[1] for t in cmdline.split() if t.startswith("intel_iommu=")]
    values = {v for option in options for v in option.split(",")}
    intel_needed = any(u.intel for u in needing)
    scalable = [u for u in uses if u.scalable_mode]
    if "off" in values:
        findings.append(
            Finding(
                IOMMU,
                "kernel command line",
                Status.PROBLEM if intel_needed else Status.INFO,
                f"intel_iommu={options[-1]} turns the Intel IOMMU off",
                f"boot with intel_iommu=on{',sm_on' if scalable else ''} instead",
            )
        )
    elif "on" in values and ("sm_on" in values or not scalable):
        findings.append(Finding(IOMMU, "kernel command line", Status.OK, f"intel_iommu={options[-1]}"))
    elif scalable and (options or intel_needed or any(u.startswith("dmar") for u in units)):
        said = f"intel_iommu={options[-1]}" if options else "no intel_iommu= option"
        checks = "; ".join(u.scalable_mode_check for u in scalable if u.scalable_mode_check)
        findings.append(
            Finding(
                IOMMU,
                "kernel command line",
                Status.INFO,
                f"{said}; scalable mode (sm_on), which {', '.join(u.scalable_mode for u in scalable)} need, is "
                f"not asked for (some kernels turn it on by default{': ' + checks if checks else ''})",
                "add intel_iommu=on,sm_on to the kernel command line if "
                f"{' or '.join(u.area for u in scalable)} is to be used",
            )
        )
    elif intel_needed and not options:
        findings.append(
            Finding(
                IOMMU,
                "kernel command line",
                Status.INFO,
                "no intel_iommu= option (some kernels turn the Intel IOMMU on by default)",
                "boot with intel_iommu=on if the IOMMU units above are missing",
            )
        )
    return findings

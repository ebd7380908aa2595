"""Where libqatzip is looked for, which package it came from, and whether a QAT device is there.

Search order (the first candidate that loads wins; nothing here loads anything):

1. ``$MFDCOMP_QATZIP_LIB``: the path of a ``libqatzip.so.3``. When set, it is the
   only candidate, so a wrong path is reported instead of silently replaced.
2. The private folder :data:`PRIVATE_DIR`: ``ci/system/qatzip.sh`` unpacks Debian
   trixie's packages there on Debian 12 (``root/usr/lib/<triplet>/``) and lists
   them in ``packages``; the script reads the path from this module.
3. The system's library, as ``ctypes.util.find_library("qatzip")`` finds it
   (Debian 13's ``libqatzip3``).

libqatzip 1.3.1 cannot tell its own version (``qzGetSoftwareComponentVersionList``
answers QZ_FAIL, "not supported yet"), so the version is the Debian package's:
from ``PRIVATE_DIR/packages`` or from dpkg's records.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

PRIVATE_DIR = "/opt/mfdcomp/qatzip"
ENV_VAR = "MFDCOMP_QATZIP_LIB"
SONAME = "libqatzip.so.3"
PACKAGE = "libqatzip3"
# libqatzip's own dependencies that Debian 12 lacks; loaded first from the library's folder.
DEPENDENCIES = ("libusdm.so.0", "libqat.so.4")

DPKG_STATUS = "/var/lib/dpkg/status"
DPKG_INFO = "/var/lib/dpkg/info"

# Linux's QAT PCI drivers (physical and virtual functions) by generation.
QAT_DRIVERS = (
    "dh895xcc",
    "dh895xccvf",
    "c3xxx",
    "c3xxxvf",
    "c6xx",
    "c6xxvf",
    "4xxx",
    "4xxxvf",
    "420xx",
    "420xxvf",
)
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One place to load libqatzip from.

    ``path`` is absolute, or a bare soname left to the dynamic linker;
    ``origin`` says which rule of the search order produced it.
    """

    path: str
    origin: str

    @property
    def folder(self) -> Path | None:
        return Path(self.path).parent if os.path.isabs(self.path) else None


def search_order() -> list[Candidate]:
    """The candidates, best first; empty when none exists on this host."""
    forced = os.environ.get(ENV_VAR)
    if forced:
        return [Candidate(forced, f"${ENV_VAR}")]
    found = [Candidate(p, "private folder") for p in sorted(glob.glob(f"{PRIVATE_DIR}/root/usr/lib/*/{SONAME}"))]
    system = ctypes.util.find_library("qatzip")
    if system is not None:
        found.append(Candidate(system, "system"))
    return found


def not_found_reason() -> str:
    return (
        f"libqatzip not found (${ENV_VAR} unset, no {SONAME} under {PRIVATE_DIR}/root, none on the system); "
        "run ci/system/qatzip.sh as root"
    )


def loaded_path(soname_prefix: str = "libqatzip.so") -> str | None:
    """The file the dynamic linker mapped for a library of this process, from /proc/self/maps."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if os.path.basename(path).startswith(soname_prefix):
                    return path
    except OSError:
        return None
    return None


def package_version(library: str) -> str | None:
    """``1.3.1-2 (libqatzip3)`` for a library that a Debian package provided, else None."""
    real = os.path.realpath(library)
    if real.startswith(os.path.realpath(PRIVATE_DIR) + os.sep):
        return _record_version(Path(PRIVATE_DIR, "packages"), PACKAGE)
    owners = glob.glob(f"{DPKG_INFO}/{PACKAGE}.list") + glob.glob(f"{DPKG_INFO}/{PACKAGE}:*.list")
    for owner in owners:
        listed = Path(owner).read_text(encoding="utf-8", errors="replace").splitlines()
        if library in listed or real in listed:
            return _record_version(Path(DPKG_STATUS), PACKAGE)
    return None


def _record_version(records: Path, package: str) -> str | None:
    """The Version field of ``package`` in a file of deb822 paragraphs (dpkg's status format)."""
    try:
        text = records.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for paragraph in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in paragraph.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Package") == package and "Version" in fields:
            return f"{fields['Version']} ({package})"
    return None


def describe_devices(sys_root: str = "/sys", dev_root: str = "/dev") -> str:
    """What the kernel shows of QAT: bound PCI functions and device nodes, in one line."""
    bound: list[str] = []
    for driver in QAT_DRIVERS:
        folder = Path(sys_root, "bus/pci/drivers", driver)
        if folder.is_dir():
            bound += [f"{entry.name} ({driver})" for entry in folder.iterdir() if _PCI_ADDRESS.match(entry.name)]
    nodes = sorted(p.name for p in Path(dev_root).glob("qat_*"))
    parts = [
        f"QAT PCI functions: {', '.join(sorted(bound))}" if bound else "no PCI function bound to a QAT driver",
        f"device nodes: {', '.join(nodes)}" if nodes else f"no {dev_root}/qat_* node",
        f"{dev_root}/vfio present" if Path(dev_root, "vfio").is_dir() else f"no {dev_root}/vfio",
    ]
    return "; ".join(parts)

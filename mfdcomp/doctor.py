"""A diagnosis of this host for hardware-offload compression: what ``mfdcomp doctor`` reports.

Every check reads files only: sysfs, ``/dev`` and ``/proc`` under ``root`` (tests pass a fake tree
built in a temporary folder), plus what each registered codec's ``probe()`` says (a probe may load its
own library, as the codec contract allows). Nothing here loads a vendor library: libqatzip's version
comes from the qatzip codec's probe, and other libraries are found by file name without being loaded.

Each observation is a :class:`Finding` with a status (ok, missing, problem, info) and, when it is not
ok, advice written for the person who has to fix it.

Device facts used here, from public sources:

* Intel QAT PCI ids and driver names are those of Linux's ``drivers/crypto/intel/qat`` and Intel's
  out-of-tree QAT driver headers; qatlib's INSTALL and README for the Gen4 user-space setup (VFs on
  vfio-pci, the ``qat`` group, the memlock limit); QATzip's setup script for huge pages and usdm_drv.
* Intel IAA: the idxd driver's sysfs layout (``/sys/bus/dsa/devices``), QEMU's QPL migration docs
  (shared work queues only, ``intel_iommu=on,sm_on``, ``/dev/iax`` root-only by default) and QPL's
  system requirements (libaccel-config, block on fault).
* HiSilicon UADK: the uacce class attributes and the hisi_zip driver's ``uacce_mode`` parameter
  (0, the default, registers with the kernel crypto API only; 1 also registers with uacce).
"""

from __future__ import annotations

import ctypes.util
import enum
import glob
import grp
import os
import pwd
import resource
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdcomp.errors import MfdcompError
from mfdcomp.methods import Codec, CodecPath, PathProbe, choose_path
from mfdcomp.registry import Registry, default_registry


class Status(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    PROBLEM = "problem"
    INFO = "info"


# Areas in the order the report shows them.
QAT = "Intel QAT"
IAA = "Intel IAA"
UADK = "HiSilicon UADK"
IOMMU = "IOMMU"
CODECS = "codecs"
PLUGINS = "plugins"
AREAS = (QAT, IAA, UADK, IOMMU, CODECS, PLUGINS)

# Which device section explains a codec's hardware path.
CODEC_AREAS = {"qatzip": QAT, "qpl": IAA, "uadk": UADK}


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
        return f"uid {self.uid} ({_user_name(self.uid)})"


# ---------------------------------------------------------------------------------------------------
# Reading the tree


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _link_name(path: Path) -> str | None:
    """The last component of a sysfs symlink (``driver``, ``iommu_group``), or None when absent."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _shown(root: Path, path: Path) -> str:
    """``path`` as it would be on the host, whatever ``root`` is."""
    return "/" + str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _hex(text: str | None) -> int | None:
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
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
        return _link_name(self.path / "iommu_group")


def pci_functions(root: Path = Path("/")) -> list[PciFunction]:
    """Every PCI function in /sys/bus/pci/devices, with its ids and bound driver."""
    folder = root / "sys/bus/pci/devices"
    if not folder.is_dir():
        return []
    found: list[PciFunction] = []
    for entry in sorted(folder.iterdir()):
        vendor = _hex(_read(entry / "vendor"))
        device = _hex(_read(entry / "device"))
        if vendor is not None and device is not None:
            found.append(PciFunction(entry.name, vendor, device, _link_name(entry / "driver"), entry))
    return found


def node_finding(area: str, item: str, path: Path, root: Path, identity: Identity, advice: str) -> Finding:
    """Whether ``identity`` can open a device node for reading and writing, with its mode and owner."""
    where = _shown(root, path)
    try:
        info = path.stat()
    except OSError:
        return Finding(area, item, Status.PROBLEM, f"{where} does not exist", advice)
    mode = f"{stat.filemode(info.st_mode)} {_user_name(info.st_uid)}:{_group_name(info.st_gid)}"
    if identity.can_open(info):
        return Finding(area, item, Status.OK, f"{where} ({mode}): {identity.describe()} can open it")
    return Finding(
        area, item, Status.PROBLEM, f"{where} ({mode}): {identity.describe()} cannot open it for read and write", advice
    )


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
            return LibraryFile(_shown(root, matches[0]), version)
    # The loader cache describes the real host only, so a fake tree never consults it.
    if root == Path("/"):
        name = ctypes.util.find_library(stem)
        if name is not None:
            return LibraryFile(name, None)
    return None


def library_finding(area: str, item: str, found: LibraryFile | None, advice: str) -> Finding:
    if found is None:
        return Finding(area, item, Status.MISSING, f"no {item} library found", advice)
    version = f", file version {found.version}" if found.version else ""
    return Finding(area, item, Status.OK, f"{found.path}{version}")


def _find_program(name: str, root: Path) -> str | None:
    for folder in ("usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin", "bin", "sbin"):
        if (root / folder / name).is_file():
            return f"/{folder}/{name}"
    return None


# ---------------------------------------------------------------------------------------------------
# Intel QAT

INTEL = 0x8086


@dataclass(frozen=True, slots=True)
class QatModel:
    """One QAT PCI id: its family, whether it is a virtual function, and who drives it.

    ``drivers`` are the names under /sys/bus/pci/drivers (in-kernel, or Intel's out-of-tree package);
    ``module`` the in-kernel module to load, or None where only Intel's package drives it;
    ``qatlib`` whether Intel's qatlib (what Debian's libqatzip3 runs on) supports the family.
    """

    family: str
    virtual: bool
    drivers: tuple[str, ...]
    module: str | None
    qatlib: bool


def _pf(family: str, driver: str, module: str | None, qatlib: bool = False) -> QatModel:
    return QatModel(family, False, (driver,), module, qatlib)


def _vf(family: str, driver: str | None, module: str | None, qatlib: bool = False) -> QatModel:
    return QatModel(family, True, (driver,) if driver else (), module, qatlib)


QAT_DEVICES: dict[int, QatModel] = {
    # Gen 1 and 2: Linux's in-kernel drivers, or Intel's out-of-tree package (which qatlib does not replace).
    0x0435: _pf("DH895xCC", "dh895xcc", "qat_dh895xcc"),
    0x0443: _vf("DH895xCC", "dh895xccvf", "qat_dh895xccvf"),
    0x37C8: _pf("C62x", "c6xx", "qat_c62x"),
    0x37C9: _vf("C62x", "c6xxvf", "qat_c62xvf"),
    0x19E2: _pf("C3xxx", "c3xxx", "qat_c3xxx"),
    0x19E3: _vf("C3xxx", "c3xxxvf", "qat_c3xxxvf"),
    # Only Intel's out-of-tree package knows these (from its headers).
    0x18EE: _pf("200xx", "200xx", None),
    0x18EF: _vf("200xx", "200xxvf", None),
    0x6F54: _pf("D15xx", "d15xx", None),
    0x6F55: _vf("D15xx", "d15xxvf", None),
    0x18A0: _pf("C4xxx", "c4xxx", None),
    0x18A1: _vf("C4xxx", "c4xxxvf", None),
    # Gen 4: one in-kernel PF driver (4xxx) for 4xxx, 401xx and 402xx; no in-kernel VF driver, so
    # qatlib takes the VFs through vfio-pci.
    0x4940: _pf("4xxx", "4xxx", "qat_4xxx", qatlib=True),
    0x4941: _vf("4xxx", None, None, qatlib=True),
    0x4942: _pf("401xx", "4xxx", "qat_4xxx", qatlib=True),
    0x4943: _vf("401xx", None, None, qatlib=True),
    0x4944: _pf("402xx", "4xxx", "qat_4xxx", qatlib=True),
    0x4945: _vf("402xx", None, None, qatlib=True),
    # Newer families: the ids are Linux's; which qatlib release supports them is not checked here.
    0x4946: _pf("420xx", "420xx", "qat_420xx", qatlib=True),
    0x4947: _vf("420xx", None, None, qatlib=True),
    0x4948: _pf("6xxx", "6xxx", "qat_6xxx", qatlib=True),
    0x4949: _vf("6xxx", None, None, qatlib=True),
}

# Nodes of Intel's out-of-tree QAT package (the in-kernel driver makes only qat_adf_ctl).
QAT_OOT_NODES = ("qat_dev_processes", "usdm_drv")
QATLIB_ACCESS = (
    "qatlib lets users of the 'qat' group use the device: `usermod -a -G qat <user>` and log in again "
    "(its qat service gives /dev/vfio/<group> to that group); or run as root"
)
QATLIB_MEMLOCK = 16 * 1024 * 1024  # qatlib's INSTALL: 16 MB of locked memory per VF, plus the application's


def qat_functions(root: Path = Path("/")) -> list[tuple[PciFunction, QatModel]]:
    return [(f, QAT_DEVICES[f.device]) for f in pci_functions(root) if f.vendor == INTEL and f.device in QAT_DEVICES]


def _qat_kind(model: QatModel) -> str:
    return f"QAT {model.family} {'VF' if model.virtual else 'PF'}"


def _firmware(root: Path) -> str:
    names = sorted(p.name for p in (root / "lib/firmware").glob("qat_*"))
    return f"QAT firmware in /lib/firmware: {', '.join(names)}" if names else "no qat_* firmware in /lib/firmware"


def _qat_unbound_advice(func: PciFunction, model: QatModel, root: Path) -> str:
    if model.virtual and model.qatlib:
        return (
            "bind this VF to vfio-pci so qatlib can use it: qatlib's service does it (`systemctl enable --now qat`), "
            f"or `echo vfio-pci > /sys/bus/pci/devices/{func.address}/driver_override` and "
            f"`echo {func.address} > /sys/bus/pci/drivers/vfio-pci/bind`"
        )
    if model.module is None:
        return f"the {model.family} needs Intel's out-of-tree QAT driver package; install it and start its qat_service"
    return (
        f"load the kernel driver (`modprobe {model.module}`; compression on Gen 4 needs Linux 5.17 or later) "
        f"and read `dmesg | grep -i qat` if it does not bind; it loads firmware from /lib/firmware "
        f"({_firmware(root)}); Intel's out-of-tree QAT package is the other way to drive it"
    )


def _qat_driver_finding(func: PciFunction, model: QatModel, root: Path) -> Finding:
    kind = _qat_kind(model)
    item = f"{func.address} ({kind})"
    if func.driver is None:
        return Finding(QAT, item, Status.PROBLEM, f"{kind}: no driver is bound", _qat_unbound_advice(func, model, root))
    if func.driver in model.drivers or func.driver == model.module:
        return Finding(QAT, item, Status.OK, f"{kind} bound to {func.driver}")
    if func.driver == "vfio-pci":
        if model.virtual and model.qatlib:
            return Finding(QAT, item, Status.OK, f"{kind} bound to vfio-pci, for qatlib in user space")
        return Finding(
            QAT,
            item,
            Status.INFO,
            f"{kind} bound to vfio-pci: set aside for a virtual machine, this host's libraries cannot use it",
            f"to use it on this host, unbind it from vfio-pci and load {model.module or 'its QAT driver'}",
        )
    return Finding(
        QAT,
        item,
        Status.PROBLEM,
        f"{kind} bound to {func.driver}, not a QAT driver",
        f"unbind it from {func.driver}; then: {_qat_unbound_advice(func, model, root)}",
    )


def _qat_pf_findings(func: PciFunction, model: QatModel, oot: bool) -> list[Finding]:
    """A Gen 4+ PF on the in-kernel driver: its state, its services, and its VFs for qatlib."""
    findings: list[Finding] = []
    item = f"{func.address} ({_qat_kind(model)})"
    where = f"/sys/bus/pci/devices/{func.address}"
    state = _read(func.path / "qat/state")
    if state is not None and state != "up":
        findings.append(
            Finding(QAT, item, Status.PROBLEM, f"the device is {state}", f"bring it up: `echo up > {where}/qat/state`")
        )
    services = _read(func.path / "qat/cfg_services")
    if services is not None and "dc" not in services.split(";"):
        findings.append(
            Finding(
                QAT,
                item,
                Status.INFO,
                f"configured for {services} only: no compression on this PF",
                "qatlib's default gives compression (dc) to every other PF; for more, set ServicesEnabled=dc "
                "in /etc/sysconfig/qat and restart the qat service, or write dc to "
                f"{where}/qat/cfg_services while its state is down",
            )
        )
    total = _int(_read(func.path / "sriov_totalvfs"))
    enabled = _int(_read(func.path / "sriov_numvfs"))
    if model.qatlib and total and not enabled:
        findings.append(
            Finding(
                QAT,
                item,
                Status.INFO if oot else Status.PROBLEM,
                f"none of its {total} VFs is enabled",
                "qatlib reaches a Gen 4 device only through VFs bound to vfio-pci: start its service "
                "(`systemctl enable --now qat`), with SR-IOV and VT-d on in the firmware and intel_iommu=on",
            )
        )
    elif enabled:
        findings.append(Finding(QAT, item, Status.INFO, f"{enabled} of its {total} VFs enabled"))
    return findings


def qat_findings(root: Path = Path("/"), identity: Identity | None = None, memlock: int | None = None) -> list[Finding]:
    """QAT PCI functions and their drivers, device nodes and their access, huge pages, memlock.

    ``memlock`` is the locked-memory limit in bytes (None: this process's own limit).
    """
    who = identity or Identity.current()
    functions = qat_functions(root)
    pci_count = len(pci_functions(root))
    dev = root / "dev"
    oot = any((dev / name).exists() for name in QAT_OOT_NODES)
    findings: list[Finding] = []
    if not functions:
        findings.append(
            Finding(
                QAT,
                "PCI devices",
                Status.MISSING,
                f"no Intel QAT PCI function among the {pci_count} PCI functions in /sys/bus/pci/devices",
                "QAT is built into some Xeon processors (4th generation and later: 4xxx/401xx/402xx) and "
                "chipsets (C62x, C3xxx), or sits on an add-in card; check that it is enabled in the firmware "
                "setup; in a virtual machine, the host must pass a QAT VF through",
            )
        )
    for func, model in functions:
        findings.append(_qat_driver_finding(func, model, root))
        if not model.virtual and model.qatlib and func.driver in model.drivers:
            findings += _qat_pf_findings(func, model, oot)
    older = sorted({m.family for _, m in functions if not m.qatlib})
    if older:
        findings.append(
            Finding(
                QAT,
                "qatlib support",
                Status.INFO,
                f"qatlib (libqat, which Debian's libqatzip3 runs on) supports Gen 4 and later, not {', '.join(older)}",
                "for these, QATzip has to be built against Intel's out-of-tree QAT package and its libraries",
            )
        )
    vfio = [f for f, m in functions if m.virtual and f.driver == "vfio-pci"]
    for func in vfio:
        group = func.iommu_group
        if group is None:
            findings.append(
                Finding(
                    QAT,
                    f"{func.address} VFIO group",
                    Status.PROBLEM,
                    "bound to vfio-pci but in no IOMMU group",
                    "turn VT-d on in the firmware and boot with intel_iommu=on",
                )
            )
            continue
        findings.append(node_finding(QAT, f"{func.address} VFIO group", dev / "vfio" / group, root, who, QATLIB_ACCESS))
    if vfio:
        findings.append(node_finding(QAT, "VFIO container", dev / "vfio/vfio", root, who, QATLIB_ACCESS))
        findings.append(_memlock_finding(len(vfio), memlock))
    nodes = sorted(dev.glob("qat_*")) + sorted(dev.glob("usdm_drv"))
    for node in nodes:
        findings.append(
            node_finding(
                QAT,
                node.name,
                node,
                root,
                who,
                "Intel's out-of-tree QAT package makes these nodes for root; run as root or give a group "
                "access to them with a udev rule",
            )
        )
    if functions and not vfio and not oot:
        findings.append(
            Finding(
                QAT,
                "user-space access",
                Status.PROBLEM,
                "no way for user space to reach QAT: no QAT VF bound to vfio-pci (qatlib) and no "
                f"{', '.join('/dev/' + n for n in QAT_OOT_NODES)} (Intel's out-of-tree package)",
                "on Gen 4 and later, install qatlib and start its service (`systemctl enable --now qat`); on "
                "earlier generations, install Intel's out-of-tree QAT package",
            )
        )
    if functions or oot:
        findings.append(_hugepages_finding(root, oot))
    return findings


def _memlock_finding(vfs: int, memlock: int | None) -> Finding:
    if memlock is None:
        memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    need = vfs * QATLIB_MEMLOCK
    if memlock == resource.RLIM_INFINITY or memlock >= need:
        shown = "unlimited" if memlock == resource.RLIM_INFINITY else f"{memlock // 1024} KiB"
        return Finding(QAT, "memlock limit", Status.OK, f"{shown} of locked memory allowed")
    return Finding(
        QAT,
        "memlock limit",
        Status.PROBLEM,
        f"{memlock // 1024} KiB of locked memory allowed; qatlib wants 16 MB per VF ({vfs} VFs here) plus "
        "the application's own",
        "raise it in /etc/security/limits.conf (`<user> - memlock 500000` is qatlib's example) and log in again",
    )


def _hugepages_finding(root: Path, oot: bool) -> Finding:
    count = _int(_read(root / "proc/sys/vm/nr_hugepages"))
    detail = f"vm.nr_hugepages = {count if count is not None else 'unknown'}"
    if oot and not count:
        return Finding(
            QAT,
            "huge pages",
            Status.INFO,
            f"{detail}, and usdm_drv (Intel's out-of-tree package) is present",
            "QATzip's setup for that package reserves 2 MiB huge pages "
            "(`echo 1024 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`) and loads usdm_drv "
            "with max_huge_pages=1024",
        )
    return Finding(QAT, "huge pages", Status.INFO, f"{detail} (used by Intel's out-of-tree usdm_drv, not by qatlib)")


def qat_library_findings(root: Path = Path("/"), qatzip: Sequence[PathProbe] = ()) -> list[Finding]:
    """libqatzip as the qatzip codec's probe found it, and qatlib's libqat and libusdm beside it or on the system."""
    findings: list[Finding] = []
    near: list[Path] = []
    loaded = next((p for p in qatzip if p.library and "qatzip" in p.library), None)
    if loaded is not None and loaded.library is not None:
        version = f", {loaded.version}" if loaded.version else ""
        findings.append(Finding(QAT, "libqatzip", Status.OK, f"{loaded.library}{version} (the qatzip codec's probe)"))
        if os.path.isabs(loaded.library):
            near.append(Path(loaded.library).parent)
    else:
        findings.append(
            library_finding(
                QAT,
                "libqatzip",
                locate_library("qatzip", root),
                "on Debian 12 run `ci/system/qatzip.sh` as root (it unpacks trixie's libqatzip3 into a private "
                "folder); on Debian 13 `apt-get install libqatzip3`",
            )
        )
    for stem, package in (("qat", "libqat4"), ("usdm", "libusdm0")):
        findings.append(
            library_finding(
                QAT,
                f"lib{stem}",
                locate_library(stem, root, near),
                f"qatlib's lib{stem} comes with libqatzip ({package} on Debian); Intel's out-of-tree package "
                "ships its own libraries under other names",
            )
        )
    return findings


# ---------------------------------------------------------------------------------------------------
# Intel IAA

IAA_DEVICE_IDS = {
    0x0CFE: "IAA (Sapphire Rapids and later)",
    # From a Linux patch for a future platform; not checked against a released kernel.
    0x1216: "IAA (newer platform)",
}
IDXD_DEVICES = Path("sys/bus/dsa/devices")
IAX_NODES = Path("dev/iax")


@dataclass(frozen=True, slots=True)
class WorkQueue:
    name: str
    state: str | None
    mode: str | None
    kind: str | None
    size: int | None
    block_on_fault: str | None


def iaa_work_queues(device: Path) -> list[WorkQueue]:
    """The work queues of one iaxN device (wqN.M beside it on the dsa bus)."""
    number = device.name.removeprefix("iax")
    queues: list[WorkQueue] = []
    for wq in sorted(device.parent.glob(f"wq{number}.*")):
        queues.append(
            WorkQueue(
                wq.name,
                _read(wq / "state"),
                _read(wq / "mode"),
                _read(wq / "type"),
                _int(_read(wq / "size")),
                _read(wq / "block_on_fault"),
            )
        )
    return queues


def _wq_config_advice(device: str, wq: str) -> str:
    return (
        f"configure it as a shared user queue and enable it, e.g. `accel-config config-wq {device}/{wq} -g 0 -s 128 "
        f"-p 10 -b 1 -t 128 -m shared -y user -n mfdcomp -d user` then `accel-config enable-wq {device}/{wq}` "
        "(QEMU's QPL docs show the engine and device steps too)"
    )


def iaa_findings(root: Path = Path("/"), identity: Identity | None = None) -> list[Finding]:
    """IAA PCI functions, iax devices, their work queues, /dev/iax nodes, accel-config."""
    who = identity or Identity.current()
    findings: list[Finding] = []
    functions = [f for f in pci_functions(root) if f.vendor == INTEL and f.device in IAA_DEVICE_IDS]
    for func in functions:
        kind = IAA_DEVICE_IDS[func.device]
        item = f"{func.address} ({kind})"
        if func.driver == "idxd":
            findings.append(Finding(IAA, item, Status.OK, f"{kind} bound to idxd"))
        elif func.driver is None:
            findings.append(
                Finding(
                    IAA,
                    item,
                    Status.PROBLEM,
                    f"{kind}: no driver is bound",
                    "load the idxd driver (`modprobe idxd`; QEMU's QPL docs recommend Linux 5.18 or later)",
                )
            )
        else:
            findings.append(
                Finding(
                    IAA,
                    item,
                    Status.INFO if func.driver == "vfio-pci" else Status.PROBLEM,
                    f"{kind} bound to {func.driver}, not idxd",
                    "to use it on this host, unbind it and load idxd",
                )
            )
    devices_dir = root / IDXD_DEVICES
    devices = sorted(devices_dir.glob("iax*")) if devices_dir.is_dir() else []
    if not devices:
        if functions:
            findings.append(
                Finding(
                    IAA,
                    "iax devices",
                    Status.PROBLEM,
                    f"IAA PCI functions are present but /{IDXD_DEVICES} lists no iax device",
                    "load the idxd driver (`modprobe idxd`) and check `dmesg | grep -i idxd`",
                )
            )
        else:
            findings.append(
                Finding(
                    IAA,
                    "devices",
                    Status.MISSING,
                    f"no Intel IAA device (no PCI function 8086:0cfe, no iax* in /{IDXD_DEVICES})",
                    "IAA is built into 4th generation Xeon Scalable processors (Sapphire Rapids) and later; "
                    "check the processor model and that the firmware exposes it; in a virtual machine it must "
                    "be passed through",
                )
            )
    usable: list[str] = []
    for device in devices:
        device_findings, device_usable = _iax_findings(device, root, who)
        findings += device_findings
        usable += device_usable
    if devices:
        if usable:
            findings.append(Finding(IAA, "usable work queues", Status.OK, ", ".join(usable)))
        else:
            findings.append(
                Finding(
                    IAA,
                    "usable work queues",
                    Status.PROBLEM,
                    "no enabled shared user work queue that this user can open",
                    "see the work queue findings above",
                )
            )
    program = _find_program("accel-config", root)
    if program is not None:
        findings.append(Finding(IAA, "accel-config", Status.OK, program))
    else:
        findings.append(
            Finding(
                IAA,
                "accel-config",
                Status.MISSING if not devices else Status.PROBLEM,
                "accel-config is not installed (it configures IAA devices and work queues)",
                "`apt-get install accel-config` (Debian), or build it from Intel's idxd-config",
            )
        )
    findings.append(
        library_finding(
            IAA,
            "libaccel-config",
            locate_library("accel-config", root),
            "libqpl needs libaccel-config 3.2 or later for its hardware path: `apt-get install libaccel-config1`",
        )
    )
    findings.append(
        library_finding(
            IAA,
            "libqpl",
            locate_library("qpl", root),
            "build Intel QPL as a shared library (cmake -DQPL_LIBRARY_TYPE=SHARED, as QEMU's QPL docs show); "
            "Debian does not package it",
        )
    )
    return findings


def _iax_findings(device: Path, root: Path, who: Identity) -> tuple[list[Finding], list[str]]:
    """One iax device's findings, and its work queues that this user can use."""
    name = device.name
    findings: list[Finding] = []
    state = _read(device / "state")
    if state == "enabled":
        findings.append(Finding(IAA, name, Status.OK, f"{name} is enabled"))
    else:
        findings.append(
            Finding(
                IAA,
                name,
                Status.PROBLEM,
                f"{name} is {state or 'in an unknown state'}: devices start disabled",
                f"configure its engines and a work queue with accel-config, then `accel-config enable-device {name}`",
            )
        )
    if _read(device / "pasid_enabled") == "0":
        findings.append(
            Finding(
                IAA,
                f"{name} SVA",
                Status.PROBLEM,
                f"{name} has PASID (shared virtual memory) off, which shared work queues need",
                "turn VT-d on in the firmware and boot with intel_iommu=on,sm_on; the idxd module's sva "
                "parameter must stay on",
            )
        )
    queues = iaa_work_queues(device)
    configured = [q for q in queues if (q.size or 0) > 0 or q.state == "enabled"]
    if not configured:
        first = queues[0].name if queues else f"wq{name.removeprefix('iax')}.0"
        advice = _wq_config_advice(name, first)
        findings.append(
            Finding(IAA, f"{name} work queues", Status.PROBLEM, f"{name} has no configured work queue", advice)
        )
    usable: list[str] = []
    for wq in configured:
        wq_findings, ready = _wq_findings(name, wq, root, who)
        findings += wq_findings
        if ready:
            usable.append(f"{name}/{wq.name}")
    return findings, usable


def _wq_findings(device: str, wq: WorkQueue, root: Path, who: Identity) -> tuple[list[Finding], bool]:
    """One work queue's findings, and whether this user can submit to it."""
    item = f"{device}/{wq.name}"
    shape = f"mode {wq.mode or '?'}, type {wq.kind or '?'}, size {wq.size if wq.size is not None else '?'}"
    if wq.state != "enabled":
        return [
            Finding(
                IAA,
                item,
                Status.PROBLEM,
                f"work queue {wq.name} is {wq.state or 'in an unknown state'} ({shape})",
                _wq_config_advice(device, wq.name),
            )
        ], False
    if wq.kind != "user":
        return [
            Finding(
                IAA,
                item,
                Status.INFO,
                f"work queue {wq.name} is enabled for the kernel ({shape}), e.g. for iaa_crypto and zswap; "
                "libqpl cannot use it",
                "libqpl needs a work queue of type user",
            )
        ], False
    if wq.mode != "shared":
        return [
            Finding(
                IAA,
                item,
                Status.PROBLEM,
                f"work queue {wq.name} is enabled but {wq.mode or 'of unknown mode'} ({shape}); QEMU's QPL docs "
                "say libqpl only supports shared work queues",
                f"`accel-config disable-wq {device}/{wq.name}`, then reconfigure it with -m shared: "
                + _wq_config_advice(device, wq.name),
            )
        ], False
    findings = [Finding(IAA, item, Status.OK, f"work queue {wq.name} is enabled ({shape})")]
    if wq.block_on_fault == "0":
        findings.append(
            Finding(
                IAA,
                item,
                Status.INFO,
                "block on fault is off",
                "libqpl expects it on (-b 1) unless it was built with -DBLOCK_ON_FAULT=OFF and the "
                "application touches its pages first",
            )
        )
    node = node_finding(
        IAA,
        f"{item} node",
        root / IAX_NODES / wq.name,
        root,
        who,
        "only root can open /dev/iax nodes by default; run as root or give them to the user "
        "(`chown -R <user> /dev/iax`, as QEMU's QPL docs show, or a udev rule)",
    )
    return [*findings, node], node.status is Status.OK


# ---------------------------------------------------------------------------------------------------
# HiSilicon UADK

HUAWEI = 0x19E5
ZIP_DEVICE_IDS = {0xA250: "ZIP PF", 0xA251: "ZIP VF"}
UACCE_CLASS = Path("sys/class/uacce")
UACCE_DEV_SVA = 0x1  # uacce's flags bit: the device shares the process's virtual memory


def uadk_findings(root: Path = Path("/"), identity: Identity | None = None) -> list[Finding]:
    """HiSilicon ZIP PCI functions, uacce devices and their attributes, /dev nodes, libwd/libwd_comp."""
    who = identity or Identity.current()
    findings: list[Finding] = []
    functions = [f for f in pci_functions(root) if f.vendor == HUAWEI and f.device in ZIP_DEVICE_IDS]
    for func in functions:
        kind = f"HiSilicon {ZIP_DEVICE_IDS[func.device]}"
        item = f"{func.address} ({kind})"
        if func.driver == "hisi_zip":
            findings.append(Finding(UADK, item, Status.OK, f"{kind} bound to hisi_zip"))
        else:
            findings.append(
                Finding(
                    UADK,
                    item,
                    Status.PROBLEM,
                    f"{kind}: {'bound to ' + func.driver if func.driver else 'no driver is bound'}",
                    "load hisi_zip with uacce on: `modprobe hisi_zip uacce_mode=1`",
                )
            )
    folder = root / UACCE_CLASS
    devices = sorted(folder.iterdir()) if folder.is_dir() else []
    if not devices:
        if functions:
            findings.append(
                Finding(
                    UADK,
                    "uacce devices",
                    Status.PROBLEM,
                    f"HiSilicon ZIP functions are present but /{UACCE_CLASS} lists no device",
                    "hisi_zip registers with uacce only when loaded with uacce_mode=1 (its default, 0, serves "
                    "the kernel crypto API only): `modprobe -r hisi_zip; modprobe hisi_zip uacce_mode=1`; "
                    "uacce also needs the SMMU with SVA",
                )
            )
        else:
            findings.append(
                Finding(
                    UADK,
                    "devices",
                    Status.MISSING,
                    f"no HiSilicon UADK device (no PCI function 19e5:a250/a251, nothing in /{UACCE_CLASS})",
                    "the ZIP engine is part of HiSilicon Kunpeng 920 and later Arm processors; this is not "
                    "one, or the device is not passed through",
                )
            )
    usable: list[str] = []
    for device in devices:
        device_findings, ready = _uacce_findings(device, root, who)
        findings += device_findings
        if ready:
            usable.append(device.name)
    if devices:
        if usable:
            findings.append(Finding(UADK, "usable devices", Status.OK, ", ".join(usable)))
        else:
            findings.append(
                Finding(
                    UADK,
                    "usable devices",
                    Status.PROBLEM,
                    "no uacce compression device with a free queue that this user can open",
                    "see the device findings above",
                )
            )
    for stem in ("wd", "wd_comp"):
        findings.append(
            library_finding(
                UADK,
                f"lib{stem}",
                locate_library(stem, root),
                "build and install UADK (libwd, libwd_comp) from its source; Debian does not package it",
            )
        )
    return findings


def _uacce_findings(device: Path, root: Path, who: Identity) -> tuple[list[Finding], bool]:
    """One uacce device's findings, and whether it can compress here for this user."""
    name = device.name
    algorithms = (_read(device / "algorithms") or "").split()
    api = _read(device / "api") or "?"
    if "zlib" not in algorithms and "deflate" not in algorithms:
        offers = ", ".join(algorithms) or "nothing"
        return [Finding(UADK, name, Status.INFO, f"{name} (api {api}) offers {offers}, no zlib")], False
    problems: list[Finding] = []
    flags = _int(_read(device / "flags"))
    if flags is not None and not flags & UACCE_DEV_SVA:
        problems.append(
            Finding(
                UADK,
                name,
                Status.PROBLEM,
                f"{name} is not in SVA mode (flags {flags:#x})",
                "UADK needs shared virtual addressing: an SMMUv3 with SVA enabled by the firmware and the kernel",
            )
        )
    free = _int(_read(device / "available_instances"))
    if free == 0:
        problems.append(
            Finding(
                UADK,
                name,
                Status.PROBLEM,
                f"{name} has no free queue: other processes hold them all",
                "stop some of them, or give the device more queues (hisi_zip's pf_q_num parameter)",
            )
        )
    if _read(device / "isolate") == "1":
        problems.append(
            Finding(
                UADK,
                name,
                Status.PROBLEM,
                f"{name} is isolated after hardware errors",
                "read `dmesg`; reload hisi_zip or reset the device",
            )
        )
    queues = free if free is not None else "?"
    described = f"{name}: api {api}, algorithms {', '.join(algorithms)}, free queues {queues}"
    node = node_finding(
        UADK,
        f"{name} node",
        root / "dev" / name,
        root,
        who,
        "run as root, or give the user access to the node with a udev rule",
    )
    findings = [Finding(UADK, name, Status.INFO if problems else Status.OK, described), *problems, node]
    return findings, not problems and node.status is Status.OK


# ---------------------------------------------------------------------------------------------------
# IOMMU


def iommu_findings(root: Path = Path("/"), needed_by: Sequence[str] = ()) -> list[Finding]:
    """IOMMU units and the kernel command line; ``needed_by`` names the devices here that need one."""
    folder = root / "sys/class/iommu"
    units = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    findings: list[Finding] = []
    if units:
        findings.append(Finding(IOMMU, "IOMMU units", Status.OK, f"{', '.join(units)} in /sys/class/iommu"))
    elif needed_by:
        findings.append(
            Finding(
                IOMMU,
                "IOMMU units",
                Status.PROBLEM,
                f"no IOMMU is active (/sys/class/iommu is empty or absent), and {', '.join(needed_by)} need one",
                "IAA and UADK share the process's memory through the IOMMU (SVA), and qatlib reaches QAT "
                "through vfio: turn VT-d (Intel) or the SMMU (Arm) on in the firmware, and on Intel boot with "
                "intel_iommu=on,sm_on",
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
    cmdline = _read(root / "proc/cmdline") or ""
    options = [t.split("=", 1)[1] for t in cmdline.split() if t.startswith("intel_iommu=")]
    values = {v for option in options for v in option.split(",")}
    intel_needed = any(n.startswith("Intel") for n in needed_by)
    if "off" in values:
        findings.append(
            Finding(
                IOMMU,
                "kernel command line",
                Status.PROBLEM if intel_needed else Status.INFO,
                f"intel_iommu={options[-1]} turns the Intel IOMMU off",
                "boot with intel_iommu=on,sm_on instead",
            )
        )
    elif "on" in values and "sm_on" in values:
        findings.append(Finding(IOMMU, "kernel command line", Status.OK, f"intel_iommu={options[-1]}"))
    elif options or intel_needed or any(u.startswith("dmar") for u in units):
        said = f"intel_iommu={options[-1]}" if options else "no intel_iommu= option"
        findings.append(
            Finding(
                IOMMU,
                "kernel command line",
                Status.INFO,
                f"{said}; scalable mode (sm_on), which IAA's shared work queues need, is not asked for "
                "(some kernels turn it on by default: an iax device's pasid_enabled tells)",
                "add intel_iommu=on,sm_on to the kernel command line if IAA is to be used",
            )
        )
    return findings


# ---------------------------------------------------------------------------------------------------
# Codecs


@dataclass(frozen=True, slots=True)
class CodecReport:
    """One registered codec: its probes, the path a default send takes, or why it cannot send."""

    name: str
    probes: tuple[PathProbe, ...]
    sends: CodecPath | None
    error: str | None = None

    @property
    def hardware(self) -> PathProbe | None:
        return next((p for p in self.probes if p.path is CodecPath.HARDWARE), None)

    @property
    def hardware_available(self) -> bool:
        return self.hardware is not None and self.hardware.available

    def sends_text(self) -> str:
        """``software: libqatzip.so.3 1.3.1-2`` or ``raw pages``: the path and what runs it."""
        if self.sends is None:
            return f"cannot send: {self.error}"
        if self.sends is CodecPath.RAW:
            return "raw pages, uncompressed"
        probe = next(p for p in self.probes if p.path is self.sends)
        what = " ".join(x for x in (os.path.basename(probe.library or ""), probe.version or "") if x)
        return f"{self.sends}: {what}" if what else str(self.sends)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paths": [
                {
                    "path": str(p.path),
                    "available": p.available,
                    "reason": p.reason,
                    "library": p.library,
                    "version": p.version,
                }
                for p in self.probes
            ],
            "sends_through": str(self.sends) if self.sends else None,
            "error": self.error,
        }


def codec_report(name: str, codec: Codec) -> CodecReport:
    try:
        probes = tuple(codec.probe())
    except Exception as exc:
        # A probe that raises is the plugin's bug; the report names it instead of stopping.
        return CodecReport(name, (), None, f"probe() failed: {type(exc).__name__}: {exc}")
    try:
        return CodecReport(name, probes, choose_path(codec.info, probes).path)
    except MfdcompError as exc:
        return CodecReport(name, probes, None, str(exc))


def codec_findings(reports: Sequence[CodecReport], registry: Registry) -> list[Finding]:
    findings: list[Finding] = []
    for report in reports:
        if report.error is not None and not report.probes:
            findings.append(
                Finding(CODECS, report.name, Status.PROBLEM, report.error, "report this to the plugin's authors")
            )
            continue
        for probe in report.probes:
            lib = f" [{probe.library}{' ' + probe.version if probe.version else ''}]" if probe.library else ""
            item = f"{report.name} {probe.path}"
            if probe.available:
                findings.append(Finding(CODECS, item, Status.OK, f"{probe.reason}{lib}"))
            else:
                area = CODEC_AREAS.get(report.name)
                advice = f"see the {area} findings above" if area and probe.path is CodecPath.HARDWARE else ""
                status = Status.MISSING if probe.path is CodecPath.HARDWARE else Status.PROBLEM
                findings.append(Finding(CODECS, item, status, f"{probe.reason}{lib}", advice))
        status = Status.INFO if report.sends is not None else Status.PROBLEM
        findings.append(Finding(CODECS, f"{report.name} sends", status, report.sends_text()))
    for plugin in registry.plugins:
        if not plugin.ok:
            findings.append(
                Finding(
                    PLUGINS,
                    f"{plugin.name} ({plugin.source})",
                    Status.PROBLEM,
                    "; ".join(plugin.errors),
                    "reinstall the plugin (`bash ci/setup.sh`) or report the error to its authors",
                )
            )
    return findings


# ---------------------------------------------------------------------------------------------------
# The whole diagnosis


@dataclass(frozen=True, slots=True)
class Accelerator:
    """A device this host shows (driver bound or not): its area, a phrase, and whether it needs an IOMMU."""

    area: str
    text: str
    needs_iommu: bool


def accelerators(root: Path = Path("/")) -> list[Accelerator]:
    """Every accelerator device in the tree: QAT functions, IAA devices, HiSilicon ZIP devices."""
    # qatlib (Gen 4 and later) goes through vfio; IAA and UADK share memory through the IOMMU (SVA).
    found = [Accelerator(QAT, f"Intel {_qat_kind(m)} at {f.address}", m.qatlib) for f, m in qat_functions(root)]
    functions = pci_functions(root)
    idxd = root / IDXD_DEVICES
    iax = sorted(p.name for p in idxd.glob("iax*")) if idxd.is_dir() else []
    if iax:
        found += [Accelerator(IAA, f"Intel IAA {name}", True) for name in iax]
    else:
        found += [
            Accelerator(IAA, f"Intel IAA at {f.address}", True)
            for f in functions
            if f.vendor == INTEL and f.device in IAA_DEVICE_IDS
        ]
    uacce = root / UACCE_CLASS
    zip_devices = sorted(p.name for p in uacce.glob("hisi_zip*")) if uacce.is_dir() else []
    if zip_devices:
        found += [Accelerator(UADK, f"HiSilicon UADK {name}", True) for name in zip_devices]
    else:
        found += [
            Accelerator(UADK, f"HiSilicon {ZIP_DEVICE_IDS[f.device]} at {f.address}", True)
            for f in functions
            if f.vendor == HUAWEI and f.device in ZIP_DEVICE_IDS
        ]
    return found


@dataclass
class Diagnosis:
    findings: list[Finding]
    codecs: list[CodecReport]
    accelerators: list[Accelerator]
    identity: Identity
    root: Path
    plugins: list[dict[str, Any]] = field(default_factory=list)

    @property
    def hardware_codecs(self) -> list[str]:
        return [c.name for c in self.codecs if c.hardware_available]

    def no_hardware_reason(self) -> str:
        """Why no codec can use hardware, codec by codec (for --require-hw)."""
        parts = [f"{c.name}: {c.hardware.reason}" for c in self.codecs if c.hardware is not None]
        return "no hardware path of any codec is available" + (f" ({'; '.join(parts)})" if parts else "")

    def summary(self) -> list[str]:
        """The closing sentences: devices seen, hardware paths that will run, and what runs otherwise."""
        others = [f"{c.name} ({c.sends_text()})" for c in self.codecs if not c.hardware_available]
        lines: list[str] = []
        if not self.accelerators:
            lines.append(
                "No accelerator device is present on this host (no Intel QAT, no Intel IAA, no HiSilicon UADK device)."
            )
            lines.append(f"These paths will run, without hardware: {', '.join(others)}.")
            return lines
        lines.append(f"Accelerator devices here: {', '.join(a.text for a in self.accelerators)}.")
        if self.hardware_codecs:
            lines.append(f"Hardware paths available: {', '.join(self.hardware_codecs)}.")
        else:
            lines.append("No codec's hardware path is available yet: see the problems above.")
        if others:
            lines.append(f"These codecs will run without hardware: {', '.join(others)}.")
        return lines

    def counts(self) -> dict[str, int]:
        return {str(s): sum(1 for f in self.findings if f.status is s) for s in Status}

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "user": {"uid": self.identity.uid, "gids": sorted(self.identity.gids)},
            "accelerators": [a.text for a in self.accelerators],
            "hardware_codecs": self.hardware_codecs,
            "counts": self.counts(),
            "findings": [f.as_dict() for f in self.findings],
            "codecs": [c.as_dict() for c in self.codecs],
            "plugins": self.plugins,
            "summary": self.summary(),
        }


def diagnose(
    root: Path = Path("/"),
    registry: Registry | None = None,
    identity: Identity | None = None,
    memlock: int | None = None,
) -> Diagnosis:
    """Every finding about this host (or the tree at ``root``) and every registered codec."""
    registry = registry if registry is not None else default_registry()
    who = identity or Identity.current()
    reports = [codec_report(name, codec) for name, codec in sorted(registry.codecs.items())]
    probes = {r.name: r.probes for r in reports}
    devices = accelerators(root)
    needed_by = sorted({a.area for a in devices if a.needs_iommu})
    findings = (
        qat_findings(root, who, memlock)
        + qat_library_findings(root, probes.get("qatzip", ()))
        + iaa_findings(root, who)
        + uadk_findings(root, who)
        + iommu_findings(root, needed_by)
        + codec_findings(reports, registry)
    )
    findings.sort(key=lambda f: AREAS.index(f.area))
    plugins = [
        {"name": p.name, "source": p.source, "codecs": list(p.codecs), "errors": list(p.errors)}
        for p in registry.plugins
    ]
    return Diagnosis(findings, reports, devices, who, root, plugins)

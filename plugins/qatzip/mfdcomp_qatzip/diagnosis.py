"""What ``mfdcomp doctor`` says about Intel QAT: the qatzip plugin's ``mfdcomp_doctor`` hook.

QAT PCI functions and their drivers, the device nodes user space reaches QAT through and whether this
user can open them, the memlock limit qatlib needs, huge pages, and libqatzip (as the qatzip codec's probe
found it) with qatlib's libqat and libusdm. Reads files only; loads no library.

Device facts, from public sources: the PCI ids and driver names are those of Linux's
``drivers/crypto/intel/qat`` and Intel's out-of-tree QAT driver headers; qatlib's INSTALL and README for
the Gen4 user-space setup (VFs on vfio-pci, the ``qat`` group, the memlock limit); QATzip's setup script
for huge pages and usdm_drv.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mfdcomp.diagnosis import (
    Accelerator,
    DoctorSection,
    Finding,
    Identity,
    IommuUse,
    PciFunction,
    Status,
    int_value,
    library_finding,
    locate_library,
    node_finding,
    pci_functions,
    read_attr,
    vendor_functions,
)
from mfdcomp.methods import PathProbe

QAT = "Intel QAT"
# qatlib (Gen 4 and later) reaches the device through vfio, which needs the IOMMU.
IOMMU_USE = IommuUse(QAT, "qatlib reaches QAT through vfio", intel=True)

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
    return [(f, QAT_DEVICES[f.device]) for f in vendor_functions(root, INTEL, QAT_DEVICES)]


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
    state = read_attr(func.path / "qat/state")
    if state is not None and state != "up":
        findings.append(
            Finding(QAT, item, Status.PROBLEM, f"the device is {state}", f"bring it up: `echo up > {where}/qat/state`")
        )
    services = read_attr(func.path / "qat/cfg_services")
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
    total = int_value(read_attr(func.path / "sriov_totalvfs"))
    enabled = int_value(read_attr(func.path / "sriov_numvfs"))
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
    count = int_value(read_attr(root / "proc/sys/vm/nr_hugepages"))
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


def accelerators(root: Path = Path("/")) -> list[Accelerator]:
    """Every QAT function in the tree, driver bound or not; qatlib's families need the IOMMU (vfio)."""
    return [Accelerator(QAT, f"Intel {_qat_kind(m)} at {f.address}", m.qatlib) for f, m in qat_functions(root)]


def doctor_sections(
    root: Path, identity: Identity, memlock: int | None, qatzip: Sequence[PathProbe] = ()
) -> list[DoctorSection]:
    """The Intel QAT section of the report; ``qatzip`` is the qatzip codec's probe results."""
    findings = qat_findings(root, identity, memlock) + qat_library_findings(root, qatzip)
    return [DoctorSection(QAT, tuple(findings), ("qatzip",), tuple(accelerators(root)), IOMMU_USE)]

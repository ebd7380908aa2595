"""What ``mfdcomp doctor`` says about Intel IAA: the qpl plugin's ``mfdcomp_doctor`` hook.

IAA PCI functions and the idxd driver, iax devices and their work queues, the /dev/iax nodes and whether
this user can open them, accel-config, libaccel-config and libqpl (found by file name, not loaded). The
codec's probe uses :func:`find_iaa` from here too, so both read the work queues the same way.

Device facts, from public sources: the idxd driver's sysfs layout (``/sys/bus/dsa/devices``), QEMU's QPL
migration docs (shared work queues only, ``intel_iommu=on,sm_on``, ``/dev/iax`` root-only by default) and
QPL's system requirements (libaccel-config, block on fault).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mfdcomp.diagnosis import (
    Accelerator,
    DoctorSection,
    Finding,
    Identity,
    IommuUse,
    Status,
    device_accelerators,
    find_program,
    int_value,
    library_finding,
    locate_library,
    no_device_finding,
    node_finding,
    read_attr,
    usable_finding,
    vendor_functions,
)
from mfdcomp.methods import hostprobe
from mfdcomp_qpl.locate import PRIVATE_PREFIX

IAA = "Intel IAA"
INTEL = 0x8086
# Shared work queues submit with the process's own addresses: SVA through the IOMMU, in scalable mode.
IOMMU_USE = IommuUse(
    IAA,
    "IAA shares the process's memory through the IOMMU (SVA)",
    intel=True,
    scalable_mode="IAA's shared work queues",
    scalable_mode_check="an iax device's pasid_enabled tells",
)

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
                read_attr(wq / "state"),
                read_attr(wq / "mode"),
                read_attr(wq / "type"),
                int_value(read_attr(wq / "size")),
                read_attr(wq / "block_on_fault"),
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
    functions = vendor_functions(root, INTEL, IAA_DEVICE_IDS)
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
        findings.append(
            no_device_finding(
                IAA,
                "iax devices",
                functions,
                (
                    f"IAA PCI functions are present but /{IDXD_DEVICES} lists no iax device",
                    "load the idxd driver (`modprobe idxd`) and check `dmesg | grep -i idxd`",
                ),
                (
                    f"no Intel IAA device (no PCI function 8086:0cfe, no iax* in /{IDXD_DEVICES})",
                    "IAA is built into 4th generation Xeon Scalable processors (Sapphire Rapids) and later; "
                    "check the processor model and that the firmware exposes it; in a virtual machine it must "
                    "be passed through",
                ),
            )
        )
    usable: list[str] = []
    for device in devices:
        device_findings, device_usable = _iax_findings(device, root, who)
        findings += device_findings
        usable += device_usable
    if devices:
        findings.append(
            usable_finding(
                IAA,
                "usable work queues",
                usable,
                "no enabled shared user work queue that this user can open",
                "see the work queue findings above",
            )
        )
    program = find_program("accel-config", root)
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
            # The private build of ci/system/qpl.sh too, where the codec's probe finds it.
            locate_library("qpl", root, near=[root / Path(PRIVATE_PREFIX).relative_to("/") / "lib"]),
            f"run ci/system/qpl.sh (builds QPL 1.6 into {PRIVATE_PREFIX}), or build Intel QPL as a shared "
            "library (cmake -DQPL_LIBRARY_TYPE=SHARED, as QEMU's QPL docs show); Debian does not package it",
        )
    )
    return findings


def _iax_findings(device: Path, root: Path, who: Identity) -> tuple[list[Finding], list[str]]:
    """One iax device's findings, and its work queues that this user can use."""
    name = device.name
    findings: list[Finding] = []
    state = read_attr(device / "state")
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
    if read_attr(device / "pasid_enabled") == "0":
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


def find_iaa(root: Path) -> hostprobe.Finding:
    """An enabled user-mode IAA work queue that this process can open (the codec probe's one-line answer)."""
    devices_dir = root / IDXD_DEVICES
    if not devices_dir.is_dir():
        return hostprobe.Finding(False, f"no IAA device: /{IDXD_DEVICES} is absent (no idxd driver loaded)")
    devices = sorted(devices_dir.glob("iax*"))
    if not devices:
        return hostprobe.Finding(False, f"no IAA device: no iax* in /{IDXD_DEVICES}")
    names = ", ".join(d.name for d in devices)
    queues = sorted(
        wq.name for d in devices for wq in iaa_work_queues(d) if wq.state == "enabled" and wq.kind == "user"
    )
    if not queues:
        return hostprobe.Finding(False, f"IAA device(s) {names} have no enabled user work queue (see accel-config)")
    usable = [wq for wq in queues if os.access(root / IAX_NODES / wq, os.R_OK | os.W_OK)]
    if not usable:
        return hostprobe.Finding(
            False, f"IAA work queue(s) {', '.join(queues)} are enabled but not accessible in /{IAX_NODES}"
        )
    return hostprobe.Finding(True, f"IAA work queue(s) {', '.join(usable)} enabled and accessible", usable[0])


def accelerators(root: Path = Path("/")) -> list[Accelerator]:
    """The iax devices in the tree, else the IAA PCI functions (no idxd driver yet); all need the IOMMU."""
    idxd = root / IDXD_DEVICES
    iax = sorted(p.name for p in idxd.glob("iax*")) if idxd.is_dir() else []
    functions = [] if iax else vendor_functions(root, INTEL, IAA_DEVICE_IDS)
    return device_accelerators(IAA, iax, functions, lambda f: f"Intel IAA at {f.address}")


def doctor_sections(root: Path, identity: Identity) -> list[DoctorSection]:
    """The Intel IAA section of the report."""
    findings = iaa_findings(root, identity)
    return [DoctorSection(IAA, tuple(findings), ("qpl",), tuple(accelerators(root)), IOMMU_USE)]

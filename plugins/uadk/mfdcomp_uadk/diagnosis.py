"""What ``mfdcomp doctor`` says about HiSilicon UADK: the uadk plugin's ``mfdcomp_doctor`` hook.

HiSilicon ZIP PCI functions and the hisi_zip driver, uacce devices (``/sys/class/uacce``) and their
attributes, their /dev nodes and whether this user can open them, libwd and libwd_comp (found by file name,
not loaded).

Device facts, from public sources: the uacce class attributes and the hisi_zip driver's ``uacce_mode``
parameter (0, the default, registers with the kernel crypto API only; 1 also registers with uacce).
"""

from __future__ import annotations

from pathlib import Path

from mfdcomp.diagnosis import (
    Accelerator,
    DoctorSection,
    Finding,
    Identity,
    IommuUse,
    Status,
    device_accelerators,
    int_value,
    library_finding,
    locate_library,
    no_device_finding,
    node_finding,
    read_attr,
    usable_finding,
    vendor_functions,
)
from mfdcomp_uadk.locate import PRIVATE_PREFIX

UADK = "HiSilicon UADK"
# uacce queues work on the process's own addresses: SVA through the SMMU.
IOMMU_USE = IommuUse(UADK, "UADK shares the process's memory through the SMMU (SVA)")

HUAWEI = 0x19E5
ZIP_DEVICE_IDS = {0xA250: "ZIP PF", 0xA251: "ZIP VF"}
UACCE_CLASS = Path("sys/class/uacce")
UACCE_DEV_SVA = 0x1  # uacce's flags bit: the device shares the process's virtual memory


def uadk_findings(root: Path = Path("/"), identity: Identity | None = None) -> list[Finding]:
    """HiSilicon ZIP PCI functions, uacce devices and their attributes, /dev nodes, libwd/libwd_comp."""
    who = identity or Identity.current()
    findings: list[Finding] = []
    functions = vendor_functions(root, HUAWEI, ZIP_DEVICE_IDS)
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
        findings.append(
            no_device_finding(
                UADK,
                "uacce devices",
                functions,
                (
                    f"HiSilicon ZIP functions are present but /{UACCE_CLASS} lists no device",
                    "hisi_zip registers with uacce only when loaded with uacce_mode=1 (its default, 0, serves "
                    "the kernel crypto API only): `modprobe -r hisi_zip; modprobe hisi_zip uacce_mode=1`; "
                    "uacce also needs the SMMU with SVA",
                ),
                (
                    f"no HiSilicon UADK device (no PCI function 19e5:a250/a251, nothing in /{UACCE_CLASS})",
                    "the ZIP engine is part of HiSilicon Kunpeng 920 and later Arm processors; this is not "
                    "one, or the device is not passed through",
                ),
            )
        )
    usable: list[str] = []
    for device in devices:
        device_findings, ready = _uacce_findings(device, root, who)
        findings += device_findings
        if ready:
            usable.append(device.name)
    if devices:
        findings.append(
            usable_finding(
                UADK,
                "usable devices",
                usable,
                "no uacce compression device with a free queue that this user can open",
                "see the device findings above",
            )
        )
    for stem in ("wd", "wd_comp"):
        findings.append(
            library_finding(
                UADK,
                f"lib{stem}",
                # The private build of ci/system/uadk.sh too, where the codec's probe finds it.
                locate_library(stem, root, near=[root / Path(PRIVATE_PREFIX).relative_to("/") / "lib"]),
                f"run ci/system/uadk.sh (builds UADK 2.10 into {PRIVATE_PREFIX}), or build and install UADK "
                "(libwd, libwd_comp) from its source; Debian does not package it",
            )
        )
    return findings


def _uacce_findings(device: Path, root: Path, who: Identity) -> tuple[list[Finding], bool]:
    """One uacce device's findings, and whether it can compress here for this user."""
    name = device.name
    algorithms = (read_attr(device / "algorithms") or "").split()
    api = read_attr(device / "api") or "?"
    if "zlib" not in algorithms and "deflate" not in algorithms:
        offers = ", ".join(algorithms) or "nothing"
        return [Finding(UADK, name, Status.INFO, f"{name} (api {api}) offers {offers}, no zlib")], False
    problems: list[Finding] = []
    flags = int_value(read_attr(device / "flags"))
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
    free = int_value(read_attr(device / "available_instances"))
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
    if read_attr(device / "isolate") == "1":
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


def accelerators(root: Path = Path("/")) -> list[Accelerator]:
    """The hisi_zip uacce devices in the tree, else the ZIP PCI functions; all need the SMMU (SVA)."""
    uacce = root / UACCE_CLASS
    zip_devices = sorted(p.name for p in uacce.glob("hisi_zip*")) if uacce.is_dir() else []
    functions = [] if zip_devices else vendor_functions(root, HUAWEI, ZIP_DEVICE_IDS)
    return device_accelerators(
        UADK, zip_devices, functions, lambda f: f"HiSilicon {ZIP_DEVICE_IDS[f.device]} at {f.address}"
    )


def doctor_sections(root: Path, identity: Identity) -> list[DoctorSection]:
    """The HiSilicon UADK section of the report."""
    findings = uadk_findings(root, identity)
    return [DoctorSection(UADK, tuple(findings), ("uadk",), tuple(accelerators(root)), IOMMU_USE)]

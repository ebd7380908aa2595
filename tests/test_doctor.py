"""``mfdcomp doctor``, the plugins' ``mfdcomp_doctor`` hooks, and ci/hardware-host.sh.

Two kinds of tests. The real-host ones run the command on this machine and check what it says
(on a host without accelerators: no device, the software paths that will run, ``--require-hw``
fails). The fake-tree ones build a small sysfs / dev / proc tree in a temporary folder, with a QAT,
IAA or HiSilicon device in some broken state, and check the findings and advice of the plugin that
owns that device (qatzip, qpl, uadk) and of the core doctor: they test how the code reads such a tree,
not any hardware, and nothing in them proves a real device would look exactly like this.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import mfdcomp_qatzip
import mfdcomp_qpl
import mfdcomp_uadk
import pytest
from mfdcomp_qatzip import diagnosis as qat_diagnosis
from mfdcomp_qatzip.diagnosis import QAT, qat_findings
from mfdcomp_qpl import diagnosis as iaa_diagnosis
from mfdcomp_qpl.diagnosis import IAA, iaa_findings
from mfdcomp_uadk import diagnosis as uadk_diagnosis
from mfdcomp_uadk.diagnosis import UADK, uadk_findings

from mfdcomp.cli.doctor_cmd import render
from mfdcomp.diagnosis import Accelerator, DoctorSection, IommuUse
from mfdcomp.doctor import (
    CODECS,
    IOMMU,
    PLUGINS,
    Finding,
    Identity,
    Status,
    diagnose,
    iommu_findings,
    locate_library,
)
from mfdcomp.methods import CodecInfo, CodecPath, MultiFDMethods, PathProbe
from mfdcomp.registry import Candidate, Registry, default_registry, hookimpl

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "ci" / "hardware-host.sh"
ROOT = Identity(0, frozenset({0}))
# Owns no file of the fake tree and is in none of its groups, whoever runs the tests.
STRANGER = Identity(os.geteuid() + 1, frozenset())


def run_mfdcomp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mfdcomp", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def find(findings: Sequence[Finding], area: str, item: str, status: Status | None = None) -> Finding:
    """The one finding of ``area`` named ``item`` (else whose item contains it), with ``status`` when given."""
    candidates = [f for f in findings if f.area == area and (status is None or f.status is status)]
    matches = [f for f in candidates if f.item == item] or [f for f in candidates if item in f.item]
    assert len(matches) == 1, f"{len(matches)} findings match {area}/{item}/{status}: {findings}"
    return matches[0]


class FakeHost:
    """A sysfs / dev / proc tree under a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, path: str, text: str, mode: int = 0o644) -> Path:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n")
        target.chmod(mode)
        return target

    def link(self, path: str, points_to: str) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(points_to)

    def node(self, path: str, mode: int) -> Path:
        """A device node stand-in: a plain file whose mode bits the doctor reads."""
        return self.write(path, "", mode)

    def pci(self, address: str, vendor: int, device: int, driver: str | None = None, group: str | None = None) -> str:
        base = f"sys/bus/pci/devices/{address}"
        self.write(f"{base}/vendor", f"0x{vendor:04x}")
        self.write(f"{base}/device", f"0x{device:04x}")
        if driver is not None:
            self.link(f"{base}/driver", f"../../../bus/pci/drivers/{driver}")
        if group is not None:
            self.link(f"{base}/iommu_group", f"../../../kernel/iommu_groups/{group}")
        return base

    def iax(self, number: int, state: str = "enabled", pasid: str = "1") -> None:
        self.write(f"sys/bus/dsa/devices/iax{number}/state", state)
        self.write(f"sys/bus/dsa/devices/iax{number}/pasid_enabled", pasid)

    def wq(self, name: str, state: str, mode: str = "shared", kind: str = "user", size: int = 128) -> None:
        base = f"sys/bus/dsa/devices/{name}"
        for attr, value in (("state", state), ("mode", mode), ("type", kind), ("size", str(size))):
            self.write(f"{base}/{attr}", value)
        self.write(f"{base}/block_on_fault", "1")

    def uacce(self, name: str, free: int = 4, flags: int = 1, algorithms: str = "zlib gzip deflate") -> None:
        base = f"sys/class/uacce/{name}"
        self.write(f"{base}/api", "hisi_qm_v2")
        self.write(f"{base}/flags", str(flags))
        self.write(f"{base}/available_instances", str(free))
        self.write(f"{base}/algorithms", algorithms)


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


# ---------------------------------------------------------------------------------------------------
# The real host


def test_real_host_report_says_what_will_run() -> None:
    result = run_mfdcomp("doctor")
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())  # the text is wrapped; compare it unwrapped
    assert "Summary (" in out
    registry = default_registry()
    diagnosis = diagnose()
    if not diagnosis.accelerators:
        assert "No accelerator device is present on this host" in out
        assert "These paths will run, without hardware:" in out
    else:
        assert "Accelerator devices here:" in out
    for report in diagnosis.codecs:
        if not report.hardware_available:
            assert f"{report.name} ({report.sends_text()})" in out
    # Every registered codec has its probes and its path in the report.
    for name in registry.codecs:
        assert f"{name} sends:" in out


def test_real_host_json_parses() -> None:
    result = run_mfdcomp("doctor", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= {"accelerators", "hardware_codecs", "findings", "codecs", "plugins", "summary", "counts"}
    # The bundled plugins each report their own section, in plugin order.
    titles = [s["title"] for s in data["sections"]]
    assert [t for t in titles if t in {QAT, IAA, UADK}] == [QAT, IAA, UADK]
    assert data["codecs"], "no codec is registered"
    summary = " ".join(data["summary"])
    for codec in data["codecs"]:
        # Each codec either has its hardware path or is named among those that run without one.
        assert codec["name"] in data["hardware_codecs"] or f"{codec['name']} (" in summary
        assert codec["sends_through"] in {"hardware", "software", "raw", None}
    for finding in data["findings"]:
        assert finding["status"] in {"ok", "missing", "problem", "info"}
        assert finding["area"] in {*titles, IOMMU, CODECS, PLUGINS}
    if not data["accelerators"]:
        assert data["summary"][0].startswith("No accelerator device is present")


def test_real_host_require_hw() -> None:
    result = run_mfdcomp("doctor", "--require-hw")
    if diagnose().hardware_codecs:
        assert result.returncode == 0
        return
    assert result.returncode == 1
    assert "--require-hw: no hardware path of any codec is available" in result.stderr
    for name in ("qatzip", "qpl", "uadk"):
        if name in default_registry().codecs:
            assert f"{name}: " in result.stderr


# ---------------------------------------------------------------------------------------------------
# Fake trees: Intel QAT


def test_empty_tree_has_no_device(host: FakeHost) -> None:
    findings = qat_findings(host.root, STRANGER, memlock=0)
    assert find(findings, QAT, "PCI devices").status is Status.MISSING
    diagnosis = diagnose(host.root, default_registry(), STRANGER)
    assert diagnosis.accelerators == []
    assert diagnosis.summary()[0].startswith("No accelerator device is present")
    assert "(no Intel QAT, no Intel IAA, no HiSilicon UADK device)" in diagnosis.summary()[0]
    # Without any plugin that reports, the doctor still runs and says so.
    bare = diagnose(host.root, Registry(), STRANGER)
    assert bare.summary()[0] == "No accelerator device is present on this host (no installed plugin looks for one)."
    assert "none implements mfdcomp_doctor" in find(bare.findings, PLUGINS, "hardware diagnosis").detail


def test_qat_device_without_driver(host: FakeHost) -> None:
    host.pci("0000:6b:00.0", 0x8086, 0x4940)
    host.write("lib/firmware/qat_4xxx.bin.xz", "")
    findings = qat_findings(host.root, STRANGER, memlock=0)
    unbound = find(findings, QAT, "0000:6b:00.0", Status.PROBLEM)
    assert "no driver is bound" in unbound.detail
    assert "modprobe qat_4xxx" in unbound.advice
    assert "qat_4xxx.bin.xz" in unbound.advice
    access = find(findings, QAT, "user-space access")
    assert access.status is Status.PROBLEM
    assert "systemctl enable --now qat" in access.advice
    assert [a.text for a in qat_diagnosis.accelerators(host.root)] == ["Intel QAT 4xxx PF at 0000:6b:00.0"]


def test_qat_pf_bound_but_crypto_only_and_no_vfs(host: FakeHost) -> None:
    base = host.pci("0000:6b:00.0", 0x8086, 0x4942, driver="4xxx")
    host.write(f"{base}/qat/state", "up")
    host.write(f"{base}/qat/cfg_services", "sym;asym")
    host.write(f"{base}/sriov_totalvfs", "16")
    host.write(f"{base}/sriov_numvfs", "0")
    findings = qat_findings(host.root, STRANGER, memlock=0)
    assert find(findings, QAT, "0000:6b:00.0", Status.OK).detail == "QAT 401xx PF bound to 4xxx"
    services = find(findings, QAT, "0000:6b:00.0", Status.INFO)
    assert "no compression" in services.detail
    assert "ServicesEnabled=dc" in services.advice
    vfs = find(findings, QAT, "0000:6b:00.0", Status.PROBLEM)
    assert "none of its 16 VFs is enabled" in vfs.detail


def test_qat_device_down(host: FakeHost) -> None:
    base = host.pci("0000:6b:00.0", 0x8086, 0x4940, driver="4xxx")
    host.write(f"{base}/qat/state", "down")
    down = find(qat_findings(host.root, STRANGER, memlock=0), QAT, "0000:6b:00.0", Status.PROBLEM)
    assert "echo up > /sys/bus/pci/devices/0000:6b:00.0/qat/state" in down.advice


def test_qat_vf_node_not_openable(host: FakeHost) -> None:
    host.pci("0000:6b:00.1", 0x8086, 0x4941, driver="vfio-pci", group="42")
    host.node("dev/vfio/42", 0o600)
    host.node("dev/vfio/vfio", 0o666)
    findings = qat_findings(host.root, STRANGER, memlock=64 * 1024)
    assert (
        find(findings, QAT, "0000:6b:00.1 (", Status.OK).detail
        == "QAT 4xxx VF bound to vfio-pci, for qatlib in user space"
    )
    group = find(findings, QAT, "VFIO group")
    assert group.status is Status.PROBLEM
    assert "/dev/vfio/42 (-rw-------" in group.detail
    assert "cannot open it" in group.detail
    assert "usermod -a -G qat" in group.advice
    assert find(findings, QAT, "VFIO container").status is Status.OK
    memlock = find(findings, QAT, "memlock limit")
    assert memlock.status is Status.PROBLEM
    assert "16 MB per VF" in memlock.detail
    # Root may open anything, and an unlimited memlock is enough.
    as_root = qat_findings(host.root, ROOT, memlock=-1)
    assert find(as_root, QAT, "VFIO group").status is Status.OK


def test_qat_vf_without_iommu_group(host: FakeHost) -> None:
    host.pci("0000:6b:00.1", 0x8086, 0x4941, driver="vfio-pci")
    group = find(qat_findings(host.root, STRANGER, memlock=-1), QAT, "VFIO group")
    assert group.status is Status.PROBLEM
    assert "intel_iommu=on" in group.advice


def test_qat_out_of_tree_nodes_and_hugepages(host: FakeHost) -> None:
    host.pci("0000:3d:00.0", 0x8086, 0x37C8, driver="c6xx")
    host.node("dev/qat_adf_ctl", 0o600)
    host.node("dev/qat_dev_processes", 0o600)
    host.node("dev/usdm_drv", 0o600)
    host.write("proc/sys/vm/nr_hugepages", "0")
    findings = qat_findings(host.root, STRANGER, memlock=0)
    assert find(findings, QAT, "0000:3d:00.0").status is Status.OK
    for node in ("qat_adf_ctl", "qat_dev_processes", "usdm_drv"):
        found = find(findings, QAT, node)
        assert found.status is Status.PROBLEM
        assert "udev rule" in found.advice
    hugepages = find(findings, QAT, "huge pages")
    assert hugepages.status is Status.INFO
    assert "max_huge_pages" in hugepages.advice
    # An earlier generation is not qatlib's: no VFs are expected, and the report says why.
    assert not [f for f in findings if "VFs" in f.detail]
    qatlib = find(findings, QAT, "qatlib support")
    assert "not C62x" in qatlib.detail
    assert "out-of-tree" in qatlib.advice


def test_qat_vf_on_wrong_driver(host: FakeHost) -> None:
    host.pci("0000:6b:00.2", 0x8086, 0x4941, driver="pci-stub")
    wrong = find(qat_findings(host.root, STRANGER, memlock=0), QAT, "0000:6b:00.2")
    assert wrong.status is Status.PROBLEM
    assert "vfio-pci" in wrong.advice
    assert "echo 0000:6b:00.2 > /sys/bus/pci/drivers/vfio-pci/bind" in wrong.advice


def test_non_qat_intel_device_is_ignored(host: FakeHost) -> None:
    host.pci("0000:00:00.0", 0x8086, 0x0D57)
    assert find(qat_findings(host.root, STRANGER, memlock=0), QAT, "PCI devices").status is Status.MISSING


# ---------------------------------------------------------------------------------------------------
# Fake trees: Intel IAA


def test_iaa_pci_without_idxd(host: FakeHost) -> None:
    host.pci("0000:6a:02.0", 0x8086, 0x0CFE)
    findings = iaa_findings(host.root, STRANGER)
    unbound = find(findings, IAA, "0000:6a:02.0")
    assert unbound.status is Status.PROBLEM
    assert "modprobe idxd" in unbound.advice
    assert find(findings, IAA, "iax devices").status is Status.PROBLEM


def test_iaa_work_queue_disabled(host: FakeHost) -> None:
    host.iax(1)
    host.wq("wq1.0", "disabled")
    findings = iaa_findings(host.root, STRANGER)
    assert find(findings, IAA, "iax1", Status.OK).detail == "iax1 is enabled"
    disabled = find(findings, IAA, "iax1/wq1.0")
    assert disabled.status is Status.PROBLEM
    assert "is disabled" in disabled.detail
    assert "accel-config enable-wq iax1/wq1.0" in disabled.advice
    assert "-m shared -y user" in disabled.advice
    assert find(findings, IAA, "usable work queues").status is Status.PROBLEM


def test_iaa_device_disabled_and_no_queue(host: FakeHost) -> None:
    host.iax(3, state="disabled")
    findings = iaa_findings(host.root, STRANGER)
    device = find(findings, IAA, "iax3", Status.PROBLEM)
    assert "accel-config enable-device iax3" in device.advice
    queues = find(findings, IAA, "iax3 work queues")
    assert "no configured work queue" in queues.detail
    assert "iax3/wq3.0" in queues.advice


def test_iaa_node_not_openable(host: FakeHost) -> None:
    host.iax(1)
    host.wq("wq1.0", "enabled")
    host.node("dev/iax/wq1.0", 0o600)
    findings = iaa_findings(host.root, STRANGER)
    node = find(findings, IAA, "wq1.0 node")
    assert node.status is Status.PROBLEM
    assert "chown -R <user> /dev/iax" in node.advice
    assert find(findings, IAA, "usable work queues").status is Status.PROBLEM
    as_root = iaa_findings(host.root, ROOT)
    assert find(as_root, IAA, "usable work queues").detail == "iax1/wq1.0"


def test_iaa_dedicated_and_kernel_queues(host: FakeHost) -> None:
    host.iax(1)
    host.wq("wq1.0", "enabled", mode="dedicated")
    host.wq("wq1.1", "enabled", kind="kernel")
    findings = iaa_findings(host.root, ROOT)
    dedicated = find(findings, IAA, "iax1/wq1.0")
    assert dedicated.status is Status.PROBLEM
    assert "only supports shared" in dedicated.detail
    kernel = find(findings, IAA, "iax1/wq1.1")
    assert kernel.status is Status.INFO
    assert "type user" in kernel.advice


def test_iaa_pasid_off(host: FakeHost) -> None:
    host.iax(1, pasid="0")
    sva = find(iaa_findings(host.root, ROOT), IAA, "iax1 SVA")
    assert sva.status is Status.PROBLEM
    assert "intel_iommu=on,sm_on" in sva.advice


def test_iaa_tools_and_libraries(host: FakeHost) -> None:
    host.write("usr/bin/accel-config", "")
    lib = host.write("usr/lib/x86_64-linux-gnu/libqpl.so.1.6.0", "")
    host.link("usr/lib/x86_64-linux-gnu/libqpl.so.1", lib.name)
    findings = iaa_findings(host.root, ROOT)
    assert find(findings, IAA, "accel-config").detail == "/usr/bin/accel-config"
    libqpl = find(findings, IAA, "libqpl")
    assert libqpl.status is Status.OK
    assert libqpl.detail == "/usr/lib/x86_64-linux-gnu/libqpl.so.1, file version 1.6.0"
    accel = find(findings, IAA, "libaccel-config")
    assert accel.status is Status.MISSING
    assert "libaccel-config1" in accel.advice


def test_the_private_builds_of_qpl_and_uadk_are_found_as_the_codecs_find_them(host: FakeHost) -> None:
    """ci/system/qpl.sh and uadk.sh build into /opt/mfdcomp: the doctor said 'no libqpl' while qpl ran on it."""
    assert find(iaa_findings(host.root, ROOT), IAA, "libqpl").status is Status.MISSING
    host.write("opt/mfdcomp/qpl/lib/libqpl.so.1.6.0", "")
    host.write("opt/mfdcomp/uadk/lib/libwd.so.2.10.0", "")
    host.write("opt/mfdcomp/uadk/lib/libwd_comp.so.2.10.0", "")
    libqpl = find(iaa_findings(host.root, ROOT), IAA, "libqpl")
    assert (libqpl.status, libqpl.detail) == (Status.OK, "/opt/mfdcomp/qpl/lib/libqpl.so.1.6.0, file version 1.6.0")
    libwd_comp = find(uadk_findings(host.root, ROOT), UADK, "libwd_comp")
    assert libwd_comp.status is Status.OK and libwd_comp.detail.startswith("/opt/mfdcomp/uadk/lib/libwd_comp.so")


def test_locate_library_prefers_the_folder_given(host: FakeHost) -> None:
    host.write("opt/vendor/libqat.so.4.2.0", "")
    host.write("usr/lib64/libqat.so.3.0.0", "")
    found = locate_library("qat", host.root, [host.root / "opt/vendor"])
    assert found is not None
    assert (found.path, found.version) == ("/opt/vendor/libqat.so.4.2.0", "4.2.0")
    assert locate_library("qatzip", host.root) is None


# ---------------------------------------------------------------------------------------------------
# Fake trees: HiSilicon UADK


def test_hisi_zip_without_uacce(host: FakeHost) -> None:
    host.pci("0000:75:00.0", 0x19E5, 0xA250, driver="hisi_zip")
    findings = uadk_findings(host.root, STRANGER)
    assert find(findings, UADK, "0000:75:00.0").status is Status.OK
    missing = find(findings, UADK, "uacce devices")
    assert missing.status is Status.PROBLEM
    assert "uacce_mode=1" in missing.advice


def test_hisi_zip_not_bound(host: FakeHost) -> None:
    host.pci("0000:75:00.0", 0x19E5, 0xA250)
    unbound = find(uadk_findings(host.root, STRANGER), UADK, "0000:75:00.0")
    assert unbound.status is Status.PROBLEM
    assert "no driver is bound" in unbound.detail
    assert "modprobe hisi_zip uacce_mode=1" in unbound.advice


def test_uacce_device_busy_and_node_not_openable(host: FakeHost) -> None:
    host.uacce("hisi_zip-0", free=0)
    host.node("dev/hisi_zip-0", 0o600)
    findings = uadk_findings(host.root, STRANGER)
    busy = find(findings, UADK, "hisi_zip-0", Status.PROBLEM)
    assert "no free queue" in busy.detail
    node = find(findings, UADK, "hisi_zip-0 node")
    assert node.status is Status.PROBLEM
    assert "udev rule" in node.advice
    assert find(findings, UADK, "usable devices").status is Status.PROBLEM
    assert [a.text for a in uadk_diagnosis.accelerators(host.root)] == ["HiSilicon UADK hisi_zip-0"]


def test_uacce_device_usable_and_not_sva(host: FakeHost) -> None:
    host.uacce("hisi_zip-0")
    host.node("dev/hisi_zip-0", 0o666)
    host.uacce("hisi_zip-1", flags=0)
    host.node("dev/hisi_zip-1", 0o666)
    host.uacce("hisi_sec2-0", algorithms="cipher digest")
    findings = uadk_findings(host.root, STRANGER)
    assert find(findings, UADK, "usable devices").detail == "hisi_zip-0"
    sva = find(findings, UADK, "hisi_zip-1", Status.PROBLEM)
    assert "not in SVA mode" in sva.detail
    assert find(findings, UADK, "hisi_sec2-0").status is Status.INFO


# ---------------------------------------------------------------------------------------------------
# Fake trees: IOMMU (the core's shared check, told by the plugins how their devices use it)

USES = [qat_diagnosis.IOMMU_USE, iaa_diagnosis.IOMMU_USE, uadk_diagnosis.IOMMU_USE]


def test_no_iommu_when_a_device_needs_one(host: FakeHost) -> None:
    host.write("proc/cmdline", "console=ttyS0 quiet")
    findings = iommu_findings(host.root, [IAA], USES)
    units = find(findings, IOMMU, "IOMMU units")
    assert units.status is Status.PROBLEM
    assert "intel_iommu=on,sm_on" in units.advice
    assert "IAA shares the process's memory through the IOMMU (SVA)" in units.advice
    cmdline = find(findings, IOMMU, "kernel command line")
    assert cmdline.status is Status.INFO
    assert "scalable mode" in cmdline.detail
    assert "IAA's shared work queues" in cmdline.detail
    assert find(iommu_findings(host.root, (), USES), IOMMU, "IOMMU units").status is Status.INFO


def test_iommu_on_with_scalable_mode(host: FakeHost) -> None:
    (host.root / "sys/class/iommu/dmar0").mkdir(parents=True)
    host.write("proc/cmdline", "intel_iommu=on,sm_on iommu=pt")
    findings = iommu_findings(host.root, [IAA], USES)
    assert find(findings, IOMMU, "IOMMU units").status is Status.OK
    assert find(findings, IOMMU, "kernel command line").status is Status.OK


def test_iommu_turned_off(host: FakeHost) -> None:
    host.write("proc/cmdline", "intel_iommu=off")
    off = find(iommu_findings(host.root, [QAT], USES), IOMMU, "kernel command line")
    assert off.status is Status.PROBLEM
    assert "intel_iommu=on,sm_on" in off.advice
    # Only an Intel device needing it makes it a problem.
    arm = find(iommu_findings(host.root, [UADK], USES), IOMMU, "kernel command line")
    assert arm.status is Status.INFO


def test_diagnosis_marks_iommu_needed_by_present_devices(host: FakeHost) -> None:
    host.iax(1)
    diagnosis = diagnose(host.root, plugins_registry(mfdcomp_qpl), STRANGER)
    assert find(diagnosis.findings, IOMMU, "IOMMU units").status is Status.PROBLEM
    assert diagnosis.summary()[0] == "Accelerator devices here: Intel IAA iax1."
    assert diagnosis.summary()[1] == "No codec's hardware path is available yet: see the problems above."


# ---------------------------------------------------------------------------------------------------
# Codecs and plugins, with a registry of stand-ins


EXTENSION_IDS = itertools.count(200)


class StandIn:
    """A codec whose probe answers what the test says (its methods are never called here)."""

    def __init__(self, name: str, probes: Sequence[PathProbe] | Exception) -> None:
        self.info = CodecInfo(
            name=name,
            qemu_flag=None,
            wire_format=name,
            stateful=False,
            paths=(CodecPath.HARDWARE, CodecPath.SOFTWARE),
            extension_id=next(EXTENSION_IDS),
        )
        self._probes = probes

    def probe(self) -> Sequence[PathProbe]:
        if isinstance(self._probes, Exception):
            raise self._probes
        return self._probes

    def methods(self, page_size: int, level: int | None, path: CodecPath) -> MultiFDMethods:
        raise NotImplementedError


def registry_of(*codecs: StandIn, broken: bool = False, doctors: Sequence[object] = ()) -> Registry:
    """Stand-in codecs, then plugins that only diagnose (each given as its ``mfdcomp_doctor`` function)."""
    candidates = [Candidate(c.info.name, "tests", lambda c=c: _plugin(c)) for c in codecs]
    candidates += [
        Candidate(
            f"doctor{i}", "tests", lambda d=d: types.SimpleNamespace(mfdcomp_methods=lambda: [], mfdcomp_doctor=d)
        )
        for i, d in enumerate(doctors)
    ]
    if broken:
        candidates.append(Candidate("broken", "tests", _fail))
    return Registry.from_candidates(candidates)


def plugins_registry(*modules: types.ModuleType) -> Registry:
    """A registry of the real plugin packages given, as their entry points would register them."""
    return Registry.from_candidates(Candidate(m.__name__, "tests", lambda m=m: m) for m in modules)


def _plugin(codec: StandIn) -> object:
    class Plugin:
        @staticmethod
        def mfdcomp_methods() -> list[StandIn]:
            return [codec]

    return Plugin


def _fail() -> object:
    raise ImportError("no module named mfdcomp_broken")


def test_hardware_codec_in_summary(host: FakeHost) -> None:
    host.pci("0000:6b:00.1", 0x8086, 0x4941, driver="vfio-pci", group="7")
    hw = StandIn(
        "qatzip",
        [
            PathProbe(CodecPath.HARDWARE, True, "a QAT session opened", "/usr/lib/libqatzip.so.3", "1.3.1"),
            PathProbe(CodecPath.SOFTWARE, True, "software backup", "/usr/lib/libqatzip.so.3", "1.3.1"),
        ],
    )
    sw = StandIn(
        "qpl",
        [
            PathProbe(CodecPath.HARDWARE, False, "no IAA device"),
            PathProbe(CodecPath.SOFTWARE, True, "zlib raw deflate", "zlib", "1.2.13"),
        ],
    )
    # The real qatzip and qpl plugins' doctor hooks, beside stand-in codecs of the same names.
    registry = registry_of(hw, sw, doctors=[mfdcomp_qatzip.mfdcomp_doctor, mfdcomp_qpl.mfdcomp_doctor])
    diagnosis = diagnose(host.root, registry, STRANGER, memlock=-1)
    assert diagnosis.hardware_codecs == ["qatzip"]
    assert diagnosis.summary() == [
        "Accelerator devices here: Intel QAT 4xxx VF at 0000:6b:00.1.",
        "Hardware paths available: qatzip.",
        "These codecs will run without hardware: qpl (software: zlib 1.2.13).",
    ]
    assert find(diagnosis.findings, CODECS, "qatzip hardware").status is Status.OK
    missing = find(diagnosis.findings, CODECS, "qpl hardware")
    assert missing.status is Status.MISSING
    assert missing.advice == "see the Intel IAA findings above"
    # libqatzip is reported as the codec's probe found it, not loaded again.
    assert "(the qatzip codec's probe)" in find(diagnosis.findings, QAT, "libqatzip").detail
    assert "what to do:" in render(diagnosis)


def test_broken_plugin_and_failing_probe_are_problems(host: FakeHost) -> None:
    raising = StandIn("zz", RuntimeError("device exploded"))
    nothing = StandIn("yy", [PathProbe(CodecPath.HARDWARE, False, "no device")])
    diagnosis = diagnose(host.root, registry_of(raising, nothing, broken=True), STRANGER)
    plugin = find(diagnosis.findings, PLUGINS, "broken")
    assert plugin.status is Status.PROBLEM
    assert "no module named mfdcomp_broken" in plugin.detail
    probe = find(diagnosis.findings, CODECS, "zz")
    assert probe.status is Status.PROBLEM
    assert "RuntimeError: device exploded" in probe.detail
    cannot = find(diagnosis.findings, CODECS, "yy sends")
    assert cannot.status is Status.PROBLEM
    assert "no path of codec yy can run here" in cannot.detail
    assert diagnosis.no_hardware_reason() == "no hardware path of any codec is available (yy: no device)"
    assert json.loads(json.dumps(diagnosis.as_dict()))["counts"]["problem"] >= 3


# ---------------------------------------------------------------------------------------------------
# A third-party plugin's own section, and plugins whose doctor hook is broken


ACME = "Acme ZIP"


class AcmePlugin:
    """A third-party accelerator plugin, registered at run time: its codec and its own doctor section.

    Its device is a fake sysfs class, ``/sys/class/acme``; the doctor knows nothing of it but what the
    hook returns. The hook takes only the arguments it needs (pluggy passes them by name).
    """

    codec = StandIn("acme", [PathProbe(CodecPath.HARDWARE, False, "no acme device")])

    @hookimpl
    def mfdcomp_methods(self) -> list[StandIn]:
        return [self.codec]

    @hookimpl
    def mfdcomp_doctor(self, root: Path) -> list[DoctorSection]:
        devices = sorted(p.name for p in (root / "sys/class/acme").glob("acme*"))
        findings = [Finding(ACME, d, Status.PROBLEM, f"{d} has no firmware", "install acme-firmware") for d in devices]
        if not devices:
            findings.append(Finding(ACME, "devices", Status.MISSING, "no Acme ZIP card", "plug one in"))
        return [
            DoctorSection(
                ACME,
                tuple(findings),
                codecs=("acme",),
                accelerators=tuple(Accelerator(ACME, f"Acme ZIP {d}", True) for d in devices),
                iommu=IommuUse(ACME, "Acme ZIP cards DMA through the IOMMU"),
            )
        ]


def hook_plugin(name: str, doctor: Callable[..., object]) -> Candidate:
    return Candidate(name, "tests", lambda: types.SimpleNamespace(mfdcomp_methods=lambda: [], mfdcomp_doctor=doctor))


def test_third_party_plugin_adds_its_own_section(host: FakeHost) -> None:
    (host.root / "sys/class/acme/acme0").mkdir(parents=True)
    registry = Registry.from_candidates(
        [Candidate("mfdcomp_qpl", "tests", lambda: mfdcomp_qpl), Candidate("acme", "acme-dist", AcmePlugin)]
    )
    diagnosis = diagnose(host.root, registry, STRANGER)
    # Sections come in plugin order, before the core's own areas.
    assert diagnosis.areas == [IAA, ACME, IOMMU, CODECS, PLUGINS]
    problem = find(diagnosis.findings, ACME, "acme0")
    assert (problem.status, problem.advice) == (Status.PROBLEM, "install acme-firmware")
    # The codec table points to the plugin's section; the IOMMU check counts its device and its reason.
    assert find(diagnosis.findings, CODECS, "acme hardware").advice == "see the Acme ZIP findings above"
    units = find(diagnosis.findings, IOMMU, "IOMMU units")
    assert units.status is Status.PROBLEM
    assert "Acme ZIP need one" in units.detail
    assert units.advice.startswith("Acme ZIP cards DMA through the IOMMU: ")
    assert diagnosis.summary()[0] == "Accelerator devices here: Acme ZIP acme0."
    text = render(diagnosis)
    assert text.index("\nIntel IAA\n") < text.index("\nAcme ZIP\n") < text.index("\nIOMMU\n")
    data = json.loads(json.dumps(diagnosis.as_dict()))
    assert {"title": ACME, "plugin": "acme (acme-dist)", "codecs": ["acme"], "accelerators": ["Acme ZIP acme0"]} in (
        data["sections"]
    )
    assert not [f for f in diagnosis.findings if f.area == PLUGINS]


def test_broken_doctor_hooks_are_reported_and_the_rest_still_print(host: FakeHost) -> None:
    def raising(root: Path) -> list[DoctorSection]:
        raise RuntimeError("sysfs walk exploded")

    def wrong_type() -> str:
        return "all good"

    def taken_title() -> list[DoctorSection]:
        return [DoctorSection(IAA, (Finding(IAA, "x", Status.OK, "impostor"),))]

    def misfiled() -> list[DoctorSection]:
        # A finding filed under another area is shown in its own section.
        return [DoctorSection("Tidy", (Finding(CODECS, "t", Status.INFO, "filed wrong"),))]

    registry = Registry.from_candidates(
        [
            hook_plugin("raising", raising),
            Candidate("mfdcomp_qpl", "tests", lambda: mfdcomp_qpl),
            hook_plugin("wrong", wrong_type),
            hook_plugin("taken", taken_title),
            hook_plugin("misfiled", misfiled),
        ]
    )
    diagnosis = diagnose(host.root, registry, STRANGER)
    raised = find(diagnosis.findings, PLUGINS, "raising (tests) doctor")
    assert raised.status is Status.PROBLEM
    assert raised.detail == "its mfdcomp_doctor hook raised RuntimeError: sysfs walk exploded"
    assert "returned str, not a list of DoctorSection" in find(diagnosis.findings, PLUGINS, "wrong (tests)").detail
    assert "has the title of another section" in find(diagnosis.findings, PLUGINS, "taken (tests)").detail
    assert find(diagnosis.findings, "Tidy", "t").detail == "filed wrong"
    # The IAA section is qpl's own, whole, and the report renders with every block.
    assert find(diagnosis.findings, IAA, "devices").status is Status.MISSING
    assert not [f for f in diagnosis.findings if f.detail == "impostor"]
    assert diagnosis.areas == [IAA, "Tidy", IOMMU, CODECS, PLUGINS]
    text = render(diagnosis)
    assert "\nIntel IAA\n" in text and "sysfs walk exploded" in text


def test_the_bundled_plugins_report_through_the_hook(host: FakeHost) -> None:
    host.pci("0000:6b:00.0", 0x8086, 0x4940)
    host.iax(1)
    host.uacce("hisi_zip-0")
    registry = plugins_registry(mfdcomp_qatzip, mfdcomp_qpl, mfdcomp_uadk)
    diagnosis = diagnose(host.root, registry, STRANGER, memlock=0)
    assert [(s.title, s.codecs) for s in diagnosis.sections] == [(QAT, ("qatzip",)), (IAA, ("qpl",)), (UADK, ("uadk",))]
    assert [a.text for a in diagnosis.accelerators] == [
        "Intel QAT 4xxx PF at 0000:6b:00.0",
        "Intel IAA iax1",
        "HiSilicon UADK hisi_zip-0",
    ]
    needed = find(diagnosis.findings, IOMMU, "IOMMU units").detail
    assert needed.endswith("HiSilicon UADK, Intel IAA, Intel QAT need one")


def test_plugins_diagnose_without_loading_a_library(tmp_path: Path) -> None:
    """The qpl and uadk hooks read files only: ctypes is never imported (qatzip's locate imports it anyway)."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import mfdcomp_qpl, mfdcomp_uadk\n"
        "from mfdcomp.diagnosis import Identity\n"
        f"root = Path({str(tmp_path)!r})\n"
        "who = Identity(12345, frozenset())\n"
        "sections = mfdcomp_qpl.mfdcomp_doctor(root, who) + mfdcomp_uadk.mfdcomp_doctor(root, who)\n"
        "print(len(sections), 'ctypes' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.split() == ["2", "False"], done.stderr


def test_core_doctor_knows_no_accelerator() -> None:
    """Vendor knowledge lives in the plugins; the core doctor and command speak only of sections."""
    for path in (REPO / "mfdcomp/doctor.py", REPO / "mfdcomp/diagnosis.py"):
        words = re.findall(r"qat|iaa|iax|idxd|uacce|hisi|4xxx", path.read_text(), re.IGNORECASE)
        allowed = {"qat", "iaa"} if path.name == "diagnosis.py" else set()  # docstring examples only
        assert {w.lower() for w in words} <= allowed, (path, words)


# ---------------------------------------------------------------------------------------------------
# ci/hardware-host.sh


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_script_help() -> None:
    result = run_script("--help")
    assert result.returncode == 0
    assert "mfdcomp conformance --codec CODEC --require-hw --json" in result.stdout
    assert run_script("--nonsense").returncode == 2


def test_script_on_this_host(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_script("--out", str(out), env={"MFDCOMP": f"{sys.executable} -m mfdcomp"})
    for name in ("doctor.txt", "doctor.json", "summary.md"):
        assert (out / name).is_file(), name
    assert f"Report written to {out}" in result.stdout
    if diagnose().hardware_codecs:
        return  # a hardware host: the conformance runs decide the exit code
    assert result.returncode == 0, result.stderr
    assert "NO ACCELERATOR DEVICE ON THIS HOST" in result.stdout or "NO CODEC CAN USE THEM" in result.stdout
    assert "Not run:" in (out / "summary.md").read_text()
    strict = run_script("--out", str(tmp_path / "strict"), "--require-hw")
    assert strict.returncode == 1
    assert "--require-hw" in strict.stderr


# A stand-in for mfdcomp that claims a QAT hardware path, to drive the script's conformance branch
# on a host without one: it tests the script's logic, not conformance.
FAKE_MFDCOMP = """
import json, os, sys
args = sys.argv[1:]
mode = os.environ["FAKE_MODE"]
if args == ["--version"]:
    print("mfdcomp fake")
elif args[0] == "doctor" and "--json" in args:
    print(json.dumps({
        "accelerators": ["Intel QAT 4xxx VF at 0000:6b:00.1"], "hardware_codecs": ["qatzip"],
        "counts": {"ok": 1, "missing": 0, "problem": 0, "info": 0}, "findings": [],
        "summary": ["Hardware paths available: qatzip."],
    }))
elif args[0] == "doctor":
    print("fake doctor report")
elif args[0] == "conformance":
    if mode == "absent":
        print("mfdcomp: error: invalid choice: 'conformance'", file=sys.stderr)
        sys.exit(2)
    if "--help" in args:
        sys.exit(0)
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(" ".join(args) + "\\n")
    ok = mode == "pass"
    print(json.dumps({"ok": ok, "verdicts": [
        {"codec": "qatzip", "ok": ok, "passed": 9 if ok else 8, "failed": 0 if ok else 1, "not_applicable": 0},
    ]}))
    sys.exit(0 if ok else 1)
"""


@pytest.mark.parametrize(
    ("mode", "code", "row"),
    [
        ("pass", 0, "| qatzip | passed | qatzip: 9 passed"),
        ("fail", 1, "| qatzip | FAILED (exit 1) | qatzip: 8 passed, 1 failed"),
        ("absent", 3, "`mfdcomp conformance` does not exist"),
    ],
)
def test_script_conformance_branch(tmp_path: Path, mode: str, code: int, row: str) -> None:
    fake = tmp_path / "fake_mfdcomp.py"
    fake.write_text(FAKE_MFDCOMP)
    log = tmp_path / "calls.log"
    out = tmp_path / "report"
    env = {"MFDCOMP": f"{sys.executable} {fake}", "FAKE_MODE": mode, "FAKE_LOG": str(log)}
    result = run_script("--out", str(out), "--", "--size", "8M", env=env)
    assert result.returncode == code, result.stdout + result.stderr
    assert row in (out / "summary.md").read_text()
    if mode == "absent":
        assert "no\n# `mfdcomp conformance` command" in result.stdout
        assert not log.exists()
    else:
        assert log.read_text() == "conformance --codec qatzip --require-hw --json --size 8M\n"
        assert (out / "conformance-qatzip.json").is_file()

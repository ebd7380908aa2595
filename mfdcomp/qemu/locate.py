"""Where the QEMU builds that mfdcomp drives live, as ``ci/system/qemu.sh`` installs them.

* QEMU 10.0 is the system's (``/usr/bin/qemu-system-x86_64``): Debian 13's own
  package, or bookworm-backports' on Debian 12.
* QEMU 10.0 with qpl, uadk and qatzip (``10.0hw``) is built by ``ci/system/qemu-hw.sh``
  into :data:`QEMU_HW_DIR`; where it could not be, the reason is in ``QEMU_HW_DIR.UNAVAILABLE``.
* QEMU 7.2 (for cross-version runs) is Debian 12's package unpacked with
  ``dpkg-deb -x`` into :data:`QEMU72_DIR` and never installed: it runs with the
  system's shared libraries and firmware. The install script reads
  :data:`QEMU72_DIR` from this file; when 7.2 cannot run on the host, it writes
  the reason to :data:`QEMU72_UNAVAILABLE` instead.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mfdcomp.errors import MfdcompError

INSTALL_SCRIPT = "ci/system/qemu.sh"
HW_INSTALL_SCRIPT = "ci/system/qemu-hw.sh"
SYSTEM_BINARY = "/usr/bin/qemu-system-x86_64"
QEMU72_DIR = "/opt/mfdcomp/qemu72"
QEMU72_ROOT = f"{QEMU72_DIR}/root"
QEMU72_BINARY = f"{QEMU72_ROOT}/usr/bin/qemu-system-x86_64"
# 7.2 loads its accelerator ops (tcg-accel-ops) as a module: from its own tree, not 10.0's.
QEMU72_MODULE_DIR = f"{QEMU72_ROOT}/usr/lib/x86_64-linux-gnu/qemu"
QEMU72_UNAVAILABLE = f"{QEMU72_DIR}/UNAVAILABLE"
# QEMU 10.0 built with qpl, uadk and qatzip by ci/system/qemu-hw.sh (Debian's has none of them).
QEMU_HW_DIR = "/opt/mfdcomp/qemu-hw"
QEMU_HW_BINARY = f"{QEMU_HW_DIR}/bin/qemu-system-x86_64"
# The unpacked tree has no firmware of its own; the system's (seabios, qemu-system-data) serves.
FIRMWARE_DIRS = ("/usr/share/seabios", "/usr/share/qemu")


class QemuNotFound(MfdcompError):
    """A QEMU build the caller asked for is not installed or does not run here."""


class QemuUnavailable(QemuNotFound):
    """The install script found that this build cannot run on this host (QEMU 7.2 on Debian 13, say)."""


@dataclass(frozen=True)
class QemuBuild:
    """One runnable QEMU: its binary, the extra arguments and environment it needs, and its newest machine type.

    ``machine`` is what both sides of a migration use: ``q35`` for the system's
    10.0, ``pc-q35-7.2`` for 7.2 (a 7.2 destination refuses 10.0's machine).
    ``zero_page_detection`` says whether it has that migration parameter (9.0+).
    """

    name: str
    binary: str
    machine: str
    zero_page_detection: bool
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def command(self, *args: str) -> list[str]:
        return [self.binary, *self.args, *args]

    def environment(self) -> dict[str, str]:
        return os.environ | self.env

    def version(self) -> str:
        """The first line of ``--version`` (``QEMU emulator version 10.0.2 (Debian ...)``)."""
        try:
            done = subprocess.run(
                self.command("--version"), env=self.environment(), capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise QemuNotFound(f"QEMU {self.name} at {self.binary} does not run: {exc}; {_hint()}") from exc
        lines = done.stdout.splitlines()
        if done.returncode != 0 or not lines:
            problem = done.stderr.strip() or f"exit status {done.returncode}"
            raise QemuNotFound(f"QEMU {self.name} at {self.binary} does not run: {problem}; {_hint()}")
        return lines[0]


def _hint() -> str:
    return f"run {INSTALL_SCRIPT} as root to install QEMU 10.0 and the private QEMU 7.2"


def system_qemu() -> QemuBuild:
    """The system's QEMU (10.0 as installed by the script)."""
    if not os.access(SYSTEM_BINARY, os.X_OK):
        raise QemuNotFound(f"no QEMU at {SYSTEM_BINARY}; {_hint()}")
    return QemuBuild(name="10.0", binary=SYSTEM_BINARY, machine="q35", zero_page_detection=True)


def qemu72() -> QemuBuild:
    """The private QEMU 7.2, run on the system's firmware."""
    unavailable = Path(QEMU72_UNAVAILABLE)
    if unavailable.is_file():
        raise QemuUnavailable(f"QEMU 7.2 is not available on this host: {unavailable.read_text().strip()}")
    if not os.access(QEMU72_BINARY, os.X_OK):
        raise QemuNotFound(f"no QEMU 7.2 at {QEMU72_BINARY}; {_hint()}")
    firmware = tuple(arg for folder in FIRMWARE_DIRS for arg in ("-L", folder))
    return QemuBuild(
        name="7.2",
        binary=QEMU72_BINARY,
        machine="pc-q35-7.2",
        zero_page_detection=False,
        args=firmware,
        env={"QEMU_MODULE_DIR": QEMU72_MODULE_DIR},
    )


def qemu_hw() -> QemuBuild:
    """QEMU 10.0 built with qpl, uadk and qatzip (``ci/system/qemu-hw.sh``), on the system's firmware."""
    unavailable = Path(f"{QEMU_HW_DIR}.UNAVAILABLE")
    if not os.access(QEMU_HW_BINARY, os.X_OK):
        if unavailable.is_file():
            # The set-up said why it could not build it (no sources, no vendor library): not run.
            raise QemuUnavailable(f"QEMU with qpl, uadk and qatzip was not built: {unavailable.read_text().strip()}")
        raise QemuNotFound(
            f"no QEMU with qpl, uadk and qatzip at {QEMU_HW_BINARY}; "
            f"run {HW_INSTALL_SCRIPT} as root (about 20 min the first time)"
        )
    firmware = tuple(arg for folder in FIRMWARE_DIRS for arg in ("-L", folder))
    return QemuBuild(name="10.0hw", binary=QEMU_HW_BINARY, machine="q35", zero_page_detection=True, args=firmware)


BUILDS = ("10.0", "7.2", "10.0hw")


def build(name: str) -> QemuBuild:
    """``10.0`` (the system's), ``7.2`` (private) or ``10.0hw`` (built with every multifd codec)."""
    if name == "10.0":
        return system_qemu()
    if name == "7.2":
        return qemu72()
    if name == "10.0hw":
        return qemu_hw()
    raise QemuNotFound(f"unknown QEMU build {name!r}: {', '.join(BUILDS)}")

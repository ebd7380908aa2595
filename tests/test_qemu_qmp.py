"""The QMP client and the QEMU process wrapper against a real QEMU 10.0 (a paused 16 MiB TCG guest);
what the harness says when a QEMU build is missing or cannot run here."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mfdcomp.qemu import locate
from mfdcomp.qemu.harness import Case, MiB, QemuProcess, run_case
from mfdcomp.qemu.locate import INSTALL_SCRIPT, QemuBuild, QemuNotFound, system_qemu
from mfdcomp.qemu.qmp import QMPClient, QMPClosed, QMPCommandError, QMPConnectError, QMPTimeout


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[QemuProcess]:
    process = QemuProcess(
        system_qemu(),
        "source",
        tmp_path,
        machine="q35",
        ram_path=tmp_path / "ram",
        ram_size=16 * MiB,
        incoming=False,
        timeout=30,
    )
    try:
        process.start()
        yield process
    finally:
        process.stop()
    assert not process.alive()


def test_greeting_and_a_query(qemu: QemuProcess) -> None:
    assert qemu.qmp.greeting["version"]["qemu"]["major"] == 10
    version = qemu.qmp.execute("query-version")
    assert version["qemu"]["major"] == 10 and version["package"]
    assert qemu.qmp.execute("query-status")["status"] == "prelaunch"


def test_refusals_are_typed(qemu: QemuProcess) -> None:
    with pytest.raises(QMPCommandError) as unknown:
        qemu.qmp.execute("no-such-command")
    assert unknown.value.error_class == "CommandNotFound"
    assert unknown.value.command == "no-such-command"
    # Debian's builds have no qpl (spec §14); QEMU says so in a GenericError.
    with pytest.raises(QMPCommandError, match="does not accept value") as refused:
        qemu.qmp.execute("migrate-set-parameters", {"multifd-compression": "qpl"})
    assert refused.value.error_class == "GenericError"
    # The session goes on after a refusal.
    assert qemu.qmp.execute("query-migrate-parameters")["multifd-compression"] == "none"


def test_events_are_queued_and_awaited(qemu: QemuProcess) -> None:
    qemu.qmp.execute("cont")
    assert qemu.qmp.wait_event("RESUME", timeout=10)["event"] == "RESUME"
    qemu.qmp.execute("stop")
    # STOP arrives while nothing waits for it; it stays queued through a timed-out wait.
    time.sleep(0.2)
    with pytest.raises(QMPTimeout, match="event NO-SUCH-EVENT"):
        qemu.qmp.wait_event("NO-SUCH-EVENT", timeout=0.3)
    assert qemu.qmp.wait_event("STOP", timeout=10)["event"] == "STOP"
    assert qemu.qmp.events() == []


def test_quit_closes_the_session(qemu: QemuProcess) -> None:
    qemu.qmp.execute("quit")
    with pytest.raises(QMPClosed):
        qemu.qmp.execute("query-status")
    assert qemu.process is not None
    assert qemu.process.wait(timeout=10) == 0


def test_connect_errors(tmp_path: Path) -> None:
    with pytest.raises(QMPConnectError, match="no QMP monitor"):
        QMPClient.connect(str(tmp_path / "absent.qmp"), timeout=0.3)
    with pytest.raises(QMPConnectError, match="exited"):
        QMPClient.connect(str(tmp_path / "absent.qmp"), timeout=30, alive=lambda: False)
    # Something that listens there but does not speak QMP.
    path = tmp_path / "silent.qmp"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        with pytest.raises(QMPTimeout, match="greeting"):
            QMPClient.connect(str(path), timeout=0.3)


def test_a_missing_qemu_names_the_install_script() -> None:
    missing = QemuBuild(name="10.0", binary="/nonexistent/qemu-system-x86_64", machine="q35", zero_page_detection=True)
    with pytest.raises(QemuNotFound, match=INSTALL_SCRIPT):
        missing.version()


def test_a_missing_build_fails_the_row_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locate, "SYSTEM_BINARY", "/nonexistent/qemu-system-x86_64")
    result = run_case(Case())
    assert result.verdict == "FAIL"
    assert result.problems == [
        f"no QEMU at /nonexistent/qemu-system-x86_64; run {INSTALL_SCRIPT} as root to install "
        "QEMU 10.0 and the private QEMU 7.2"
    ]


def test_a_build_recorded_as_unable_to_run_is_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "UNAVAILABLE"
    marker.write_text("Debian 12's QEMU 7.2 does not start on Debian trixie: libxenctrl.so.4.17 missing\n")
    monkeypatch.setattr(locate, "QEMU72_UNAVAILABLE", str(marker))
    result = run_case(Case(source="7.2"))
    assert result.verdict == "N/A" and result.ok
    assert result.unavailable is not None and "libxenctrl.so.4.17 missing" in result.unavailable

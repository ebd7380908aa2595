"""The uadk codec on the real UADK 2.10 libwd_comp: its init's answer, the raw send path, QEMU's capture.

Needs libwd_comp (ci/system/uadk.sh builds it); tests that need it skip,
saying so, without it. On a host without a HiSilicon device
``wd_comp_init2`` returns -22, so the hardware path is off and every page
goes raw; no session is ever allocated after a failed init (that would
crash the process).
"""

from __future__ import annotations

import errno
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from mfdcomp_uadk import UadkCodec
from mfdcomp_uadk import host as uadk_host

from mfdcomp.errors import CodecError
from mfdcomp.methods import CodecPath
from mfdcomp.qemu.replay import replay_capture
from mfdcomp.wire import Flag, RamPacket

PS = 4096


def probe() -> uadk_host.HostProbe:
    found = uadk_host.probe_host()
    if found.runtime is None:
        pytest.skip(f"libwd_comp is not installed (run ci/system/uadk.sh): {found.probes[0].reason}")
    return found


def no_device() -> bool:
    return not Path("/sys/class/uacce").exists()


def test_probe_calls_init_and_reports_its_result() -> None:
    found = probe()
    hardware, raw = found.probes
    assert hardware.library is not None and hardware.library.endswith("libwd_comp.so.2")
    assert hardware.version == "2.10.0" or hardware.version is None or hardware.version.startswith("2.")
    if no_device():
        assert found.init_result == -errno.EINVAL
        assert not hardware.available
        assert hardware.reason == (
            "wd_comp_init2 returned -22 (EINVAL): no UADK compression device (/sys/class/uacce absent)"
        )
    assert raw.available and raw.path is CodecPath.RAW


def test_a_failed_init_never_reaches_session_allocation() -> None:
    """The runtime refuses a session when init fails, before wd_comp_alloc_sess could crash the process."""
    found = probe()
    if found.init_result in (0, -errno.EEXIST):
        pytest.skip("this host has a UADK device")
    from mfdcomp_uadk.binding import WD_DIR_COMPRESS, Session

    assert found.runtime is not None
    with pytest.raises(CodecError, match=r"wd_comp_init2 returned -22 \(EINVAL\): no UADK session"):
        Session(found.runtime, WD_DIR_COMPRESS)
    assert found.runtime.acquire() == -errno.EINVAL  # init is called again and fails again, harmlessly


def test_init_runs_once_per_process_at_probe_time() -> None:
    """Importing and making codecs calls nothing; probing any number of codecs calls init once."""
    script = (
        "import sys\n"
        "import mfdcomp_uadk\n"
        "from mfdcomp_uadk import host\n"
        "codecs = [mfdcomp_uadk.UadkCodec() for _ in range(3)]\n"
        "print(host._PROCESS == [])\n"
        "[c.probe() for c in codecs]\n"
        "print(len(host._PROCESS), codecs[0].runtime is codecs[2].runtime)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["True", "1", "True"]


def test_hardware_path_refused_with_the_reason() -> None:
    probe()
    if not no_device():
        pytest.skip("this host has uacce devices")
    with pytest.raises(CodecError, match=r"the uadk hardware path cannot run here: wd_comp_init2 returned -22"):
        UadkCodec().methods(PS, None, CodecPath.HARDWARE)


def test_send_path_is_raw_pages_as_qemu_sends_without_a_device() -> None:
    codec = UadkCodec()
    m = codec.methods(PS, None, CodecPath.RAW)
    m.send_setup(0)
    pages = [bytes([i]) * PS for i in range(4)]
    payload = m.send_prepare([memoryview(p) for p in pages])
    wire = b"".join(bytes(b) for b in payload.buffers)
    assert payload.path is CodecPath.RAW
    assert wire == struct.pack(">4I", PS, PS, PS, PS) + b"".join(pages)
    m.send_cleanup()


def test_compressed_pages_from_a_device_peer_decode_with_zlib() -> None:
    page = b"uadk " * (PS // 5) + b"x" * (PS % 5)
    blob = zlib.compress(page, 1)
    wire = struct.pack(">2I", len(blob), PS) + blob + page
    m = UadkCodec().methods(PS, None, CodecPath.RAW)
    m.recv_setup(0)
    target = bytearray(2 * PS)
    packet = RamPacket.data(flags=Flag.UADK, ramblock="r", normal=[0, PS], next_packet_size=len(wire), packet_num=0)

    class Source:
        size = len(wire)

        def read(self) -> memoryview:
            return memoryview(bytearray(wire))

        def read_into(self, views: object) -> None:
            raise AssertionError

    assert m.recv(packet, Source(), [memoryview(target)[:PS], memoryview(target)[PS:]]) is CodecPath.SOFTWARE
    assert bytes(target) == page * 2


def test_qemu_uadk_capture_replays(capture_dirs: list[Path]) -> None:
    captures = [d for d in capture_dirs if json.loads((d / "manifest.json").read_text())["codec"] == "uadk"]
    if not captures:
        pytest.skip(f"no uadk capture among {len(capture_dirs)}")
    for directory in captures:
        final = json.loads((directory / "manifest.json").read_text())["ram0"]["final_sha256"]
        assert replay_capture(directory, UadkCodec()) == final

"""ISA-L (python-isal) as the default deflate of the zlib, qpl and uadk codecs, and the way to force each library.

Every stream ISA-L writes is decoded by another library here (stdlib zlib,
which is QEMU's inflate, or libqpl), and the engine's statistics say which
library produced and consumed each packet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from mfdcomp_zlib import ZlibCodec

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine.migrate import MigrateOptions
from mfdcomp.errors import CodecError
from mfdcomp.imagegen import fill_memory, parse_mix
from mfdcomp.methods import Codec, CodecPath, PageViews
from mfdcomp.methods import deflate as libs
from mfdcomp.testing.loopback import run_loopback

pytestmark = pytest.mark.skipif(not isinstance(libs.isal(), libs.Deflate), reason="python-isal is not installed")
PS = 4096
CONFORMANCE = [sys.executable, "-m", "mfdcomp", "conformance", "--json"]


def test_zlib_levels_map_to_isal_levels() -> None:
    assert [libs.isal_level(level) for level in range(1, 10)] == [1, 2, 2, 2, 2, 3, 3, 3, 3]
    with pytest.raises(ValueError, match="stored"):
        libs.isal_level(0)


def test_the_fastest_installed_library_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MFDCOMP_ZLIB_IMPL", raising=False)
    codec = ZlibCodec()
    assert codec.implementation == "isal"
    assert set(codec.implementations()) == {"zlib"}
    assert codec.methods(PS, None).implementation == "isal"


@pytest.mark.parametrize("impl", ["isal", "zlib"])
def test_the_variable_forces_a_library(impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFDCOMP_ZLIB_IMPL", impl)
    codec = ZlibCodec()
    (probe,) = codec.probe()
    assert probe.available and probe.library == impl and "MFDCOMP_ZLIB_IMPL" in probe.reason
    assert codec.methods(PS, None).implementation == impl
    assert set(codec.implementations()) == {"isal", "zlib"} - {impl}


def test_a_bad_value_of_the_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFDCOMP_ZLIB_IMPL", "igzip")
    codec = ZlibCodec()
    (probe,) = codec.probe()
    assert not probe.available and "MFDCOMP_ZLIB_IMPL='igzip' is not one of isal, zlib" in probe.reason
    with pytest.raises(CodecError, match="cannot run here: MFDCOMP_ZLIB_IMPL"):
        codec.methods(PS, None)


def test_level_0_is_stored_blocks_from_zlib_even_on_isal() -> None:
    sender = ZlibCodec(impl="isal").methods(PS, 0)
    sender.send_setup(0)
    page = memoryview(bytes(range(256)) * 16)
    payload = b"".join(bytes(b) for b in sender.send_prepare([page]).buffers)
    assert sender.implementation == "zlib"
    assert payload[:3] == b"\x78\x01\x00", "zlib header, then a stored block"
    assert zlib.decompressobj().decompress(payload) == page


@pytest.mark.parametrize("level", [1, 5, 9])
def test_isal_writes_what_stdlib_zlib_inflates_and_reads_what_it_deflates(level: int) -> None:
    rng = np.random.default_rng(level)
    data = (rng.integers(0, 4, 64 * PS, dtype=np.uint8) + ord("a")).tobytes()
    pages = PageViews(memoryview(data), range(0, len(data), PS), PS)
    sender = ZlibCodec(impl="isal").methods(PS, level)
    sender.send_setup(0)
    inflate = zlib.decompressobj()
    for _ in range(3):  # one stream: the header only in the first packet
        payload = b"".join(bytes(b) for b in sender.send_prepare(pages).buffers)
        assert inflate.decompress(payload) == data and payload.endswith(b"\x00\x00\xff\xff")


def _ram(seed: int) -> RamClient:
    ram = RamClient.anonymous([("ram0", 4 << 20)], page_size=PS)
    fill_memory(ram.blocks["ram0"].memory, parse_mix("zero=10,text=40,random=20,half=30"), seed, PS)
    return ram


@pytest.mark.parametrize(("sender", "receiver"), [("isal", "zlib"), ("zlib", "isal")])
def test_the_statistics_name_the_library_of_every_packet(sender: str, receiver: str, tmp_path: Path) -> None:
    source_codec, destination_codec = ZlibCodec(impl=sender), ZlibCodec(impl=receiver)

    def find(name: str) -> Codec:
        assert name == "zlib"
        return destination_codec

    ram = _ram(seed=4)
    outcome = run_loopback(ram, source_codec, MigrateOptions(channels=2), workdir=tmp_path, find_codec=find)
    outcome.raise_for_errors()
    assert outcome.source is not None and outcome.destination is not None
    assert outcome.destination.digests == ram.digests()
    sent = outcome.source.as_dict()
    packets = sent["totals"]["paths"][CodecPath.SOFTWARE]
    assert packets > 0
    assert sent["totals"]["implementations"] == {sender: packets}
    assert all(c["implementations"] == {sender: c["paths"][CodecPath.SOFTWARE]} for c in sent["channels"])
    got = outcome.destination.as_dict()["channels"]
    assert sum(c["implementations"].get(receiver, 0) for c in got) == packets
    assert all(set(c["implementations"]) == {receiver} for c in got)


# --- qpl: the ISA-L writer beside libqpl and the zlib writer ---------------------------------------------------


def _mixed_pages(count: int, seed: int) -> bytes:
    ram = bytearray(count * PS)
    fill_memory(memoryview(ram), parse_mix("zero=5,text=50,random=15,half=30"), seed, PS)
    return bytes(ram)


class _Source:
    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def read(self) -> memoryview:
        return memoryview(self.data)

    def read_into(self, views: object) -> None:
        raise AssertionError("per-page payloads are read whole")


def _qpl(impl: str) -> Codec:
    from mfdcomp_qpl import QplCodec

    codec = QplCodec(impl=impl)
    if not codec.probe()[1].available:
        pytest.skip(f"qpl's {impl} implementation cannot run here: {codec.probe()[1].reason}")
    return codec


QPL_IMPLS = ["libqpl", "isal", "zlib"]


@pytest.mark.parametrize("decoder", QPL_IMPLS)
@pytest.mark.parametrize("encoder", QPL_IMPLS)
def test_qpl_implementations_decode_each_other(encoder: str, decoder: str) -> None:
    from mfdcomp.wire import Flag, RamPacket

    data = _mixed_pages(128, seed=7)
    sender = _qpl(encoder).methods(PS, None, CodecPath.SOFTWARE)
    sender.send_setup(0)
    payload = b"".join(
        bytes(b) for b in sender.send_prepare(PageViews(memoryview(data), range(0, len(data), PS), PS)).buffers
    )
    assert sender.implementation == encoder
    receiver = _qpl(decoder).methods(PS, None, CodecPath.SOFTWARE)
    receiver.recv_setup(0)
    out = bytearray(len(data))
    offsets = list(range(0, len(data), PS))
    packet = RamPacket.data(flags=Flag.QPL, ramblock="r", normal=offsets, next_packet_size=len(payload), packet_num=0)
    assert receiver.recv(packet, _Source(payload), PageViews(memoryview(out), offsets, PS)) is CodecPath.SOFTWARE
    assert receiver.implementation == decoder and out == data


def test_isal_pages_fit_iaa_4k_window() -> None:
    """A 4 KiB page can reach at most 4095 bytes back: ISA-L's page is the same with a 4 KiB or 32 KiB window.

    zlib inflating with a 4 KiB window (wbits -12) takes every page, and the
    ISA-L writer asks for that window anyway (it matters for larger pages:
    with a 512-byte window the output changes, so ISA-L does honour wbits).
    """
    lib = libs.isal()
    assert isinstance(lib, libs.Deflate)
    data = _mixed_pages(256, seed=8)
    narrower = 0
    for at in range(0, len(data), PS):
        page = data[at : at + PS]
        blob = lib.compress(page, 1, -12)
        assert blob == lib.compress(page, 1, -15)
        assert zlib.decompress(blob, -12) == page
        narrower += lib.compress(page, 1, -9) != blob
    assert narrower > 0


def test_uadk_decodes_device_pages_with_isal() -> None:
    from mfdcomp_uadk import UadkCodec

    from mfdcomp.methods.pagetable import length_table
    from mfdcomp.wire import Flag, RamPacket

    data = _mixed_pages(32, seed=9)
    blobs = [zlib.compress(data[at : at + PS], 1, 12) for at in range(0, len(data), PS)]  # what a device would send
    blobs = [blob if len(blob) < PS else data[i * PS : (i + 1) * PS] for i, blob in enumerate(blobs)]
    payload = length_table([len(b) for b in blobs]) + b"".join(blobs)
    codec = UadkCodec()
    receiver = codec.methods(PS, None, CodecPath.RAW)
    receiver.recv_setup(0)
    offsets = list(range(0, len(data), PS))
    out = bytearray(len(data))
    packet = RamPacket.data(flags=Flag.UADK, ramblock="r", normal=offsets, next_packet_size=len(payload), packet_num=0)
    assert receiver.recv(packet, _Source(payload), PageViews(memoryview(out), offsets, PS)) is CodecPath.SOFTWARE
    assert out == data and receiver.implementation == "isal"


def test_conformance_cross_decodes_isal_with_the_others(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CONFORMANCE, "--check", "cross_decode", "--codec", "zlib", "--codec", "qpl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    pairs = {v["codec"]: set(v["checks"][0]["notes"]["pairs"]) for v in json.loads(done.stdout)["verdicts"]}
    assert {"zlib (isal)/software -> zlib (zlib)", "zlib (zlib)/software -> zlib (isal)"} <= pairs["zlib"]
    writers = ["qpl (isal writer)", "qpl (zlib writer)"]
    if any(p.startswith("qpl (libqpl)") for p in pairs["qpl"]):
        writers.append("qpl (libqpl)")
    assert {f"{a}/software -> {b}" for a in writers for b in writers} <= pairs["qpl"]


@pytest.mark.parametrize("forced", ["", "isal", "zlib"])
def test_codecs_says_which_library_runs_and_how_to_force_another(forced: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MFDCOMP_ZLIB_IMPL"} | {"MFDCOMP_ZLIB_IMPL": forced}
    command = [sys.executable, "-m", "mfdcomp", "codecs"]
    listed = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=120, check=True)
    (zlib_codec,) = [c for c in json.loads(listed.stdout)["codecs"] if c["name"] == "zlib"]
    expected = forced or "isal"
    assert zlib_codec["implementation"] == expected
    assert zlib_codec["other_implementations"] == [{"isal": "zlib", "zlib": "isal"}[expected]]
    assert zlib_codec["implementation_env"] == "MFDCOMP_ZLIB_IMPL"
    assert zlib_codec["paths"][0]["library"] == expected
    text = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    assert f"    implementation: {expected} (also runs here:" in text


@pytest.mark.parametrize("forced", ["isal", "zlib"])
def test_the_bench_reference_runs_the_library_the_codec_runs(forced: str) -> None:
    env = os.environ | {"MFDCOMP_ZLIB_IMPL": forced}
    code = "from mfdcomp.bench.library import reference_for; print(reference_for('zlib', 1).measures)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.startswith(f"{forced} ")

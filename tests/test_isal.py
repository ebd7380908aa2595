"""ISA-L (python-isal) as the default deflate of the zlib, qpl and uadk codecs, and the way to force each library.

Every stream ISA-L writes is decoded by another library here (stdlib zlib,
which is QEMU's inflate, or libqpl), and the engine's statistics say which
library produced and consumed each packet.
"""

from __future__ import annotations

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

"""The qpl and uadk plugins: per-page payloads, cross-decoding with zlib, hostile payloads, probes.

Both codecs share one payload shape (a u32 BE length per page, then the
blobs; length == page size means raw) and differ in the stream format:
raw deflate with a 4 KiB window (qpl) or zlib (uadk). Payloads are taken
apart and built here by hand with struct and the reference zlib, not with
the code under test. qpl runs twice: through libqpl when it is installed
(``qpl``) and through its zlib writer and zlib decoder (``qpl-zlib``).
"""

from __future__ import annotations

import contextlib
import functools
import re
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mfdcomp_qpl import QplCodec
from mfdcomp_qpl import host as qpl_host
from mfdcomp_uadk import UadkCodec
from mfdcomp_uadk import host as uadk_host

from mfdcomp.errors import CodecError
from mfdcomp.imagegen import generate_image
from mfdcomp.methods import CodecPath, MultiFDMethods, PageViews, PathProbe, SendPayload
from mfdcomp.methods import deflate as deflate_libs
from mfdcomp.methods.pagetable import encode_pages
from mfdcomp.registry import default_registry
from mfdcomp.wire import Flag, RamPacket, page_count

PS = 4096
SENTINEL = 0xA5


@dataclass(frozen=True)
class Case:
    """One codec and how the reference zlib writes and reads its page streams."""

    name: str
    codec: QplCodec | UadkCodec
    flag: int
    send_path: CodecPath
    compress: Callable[[bytes, int, int], bytes]  # page, level, window bits (8 < bits <= 15)
    window_bits: tuple[int, ...]


def _raw_deflate(page: bytes, level: int, bits: int) -> bytes:
    return zlib.compress(page, level, -bits)


QPL = Case("qpl", QplCodec(), Flag.QPL, CodecPath.SOFTWARE, _raw_deflate, (9, 12, 15))
QPL_ZLIB = Case("qpl", QplCodec(impl="zlib"), Flag.QPL, CodecPath.SOFTWARE, _raw_deflate, (9, 12, 15))
UADK = Case("uadk", UadkCodec(), Flag.UADK, CodecPath.RAW, lambda p, lvl, w: zlib.compress(p, lvl, w), (9, 12, 15))
QPL_ISAL = Case("qpl", QplCodec(impl="isal"), Flag.QPL, CodecPath.SOFTWARE, _raw_deflate, (9, 12, 15))
HAS_ISAL = isinstance(deflate_libs.isal(), deflate_libs.Deflate)
QPLS = [
    pytest.param(QPL, id="qpl"),
    pytest.param(QPL_ZLIB, id="qpl-zlib"),
    pytest.param(QPL_ISAL, id="qpl-isal", marks=pytest.mark.skipif(not HAS_ISAL, reason="no python-isal")),
]
CASES = [*QPLS, pytest.param(UADK, id="uadk")]


def through_libqpl(case: Case) -> bool:
    """Whether this case's qpl contexts decode with libqpl (installed, and not forced to zlib)."""
    return isinstance(case.codec, QplCodec) and case.codec.probe() and case.codec.library is not None


def through_isal(case: Case) -> bool:
    """Whether this case decodes with ISA-L (the qpl ISA-L writer's contexts; uadk without a device)."""
    if isinstance(case.codec, QplCodec):
        return case.codec.implementation == "isal"
    return deflate_libs.fastest().name == "isal"


# ---------------------------------------------------------------- helpers


@functools.cache
def image(kind: str, page_size: int, count: int, seed: int = 1) -> bytes:
    """``count`` pages of one kind from mfdcomp.imagegen (zero, text, random, half)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "img"
        generate_image(path, count * page_size, {kind: 100}, seed, page_size)
        return path.read_bytes()


def split_pages(data: bytes, page_size: int) -> list[bytes]:
    return [data[i : i + page_size] for i in range(0, len(data), page_size)]


def assemble(lengths: Sequence[int], blobs: Sequence[bytes]) -> bytes:
    return struct.pack(f">{len(lengths)}I", *lengths) + b"".join(blobs)


def take_apart(payload: bytes, count: int) -> tuple[list[int], list[bytes]]:
    lengths = list(struct.unpack_from(f">{count}I", payload))
    blobs, start = [], 4 * count
    for length in lengths:
        blobs.append(payload[start : start + length])
        start += length
    assert start == len(payload)
    return lengths, blobs


def reference_payload(case: Case, pages: Sequence[bytes], page_size: int, level: int = 1, bits: int = 12) -> bytes:
    """What a peer with the reference zlib would send: compressed unless that does not shrink the page."""
    blobs = [case.compress(p, level, bits) for p in pages]
    blobs = [b if len(b) < page_size else p for b, p in zip(blobs, pages, strict=True)]
    return assemble([len(b) for b in blobs], blobs)


class Source:
    """PayloadSource over bytes; counts reads."""

    def __init__(self, payload: bytes) -> None:
        self.data = bytearray(payload)
        self.size = len(payload)
        self.reads = 0

    def read(self) -> memoryview:
        self.reads += 1
        return memoryview(self.data)

    def read_into(self, views: Sequence[memoryview]) -> None:
        raise AssertionError("the per-page codecs read the whole payload at once")


class Target:
    """A block larger than the packet: its pages sit between sentinel-filled gaps."""

    def __init__(self, count: int, page_size: int) -> None:
        self.page_size = page_size
        self.memory = bytearray([SENTINEL]) * ((2 * count + 1) * page_size)
        self.offsets = [(2 * i + 1) * page_size for i in range(count)]
        view = memoryview(self.memory)
        self.pages = [view[o : o + page_size] for o in self.offsets]

    def page(self, index: int) -> bytes:
        return bytes(self.pages[index])

    def untouched(self, index: int) -> bool:
        return self.page(index) == bytes([SENTINEL]) * self.page_size

    def gaps_untouched(self) -> bool:
        ps = self.page_size
        return all(self.memory[o - ps : o] == bytes([SENTINEL]) * ps for o in [*self.offsets, len(self.memory)])


def methods(case: Case, page_size: int, *, send: bool) -> MultiFDMethods:
    m = case.codec.methods(page_size, None, case.send_path)
    (m.send_setup if send else m.recv_setup)(0)
    return m


def send(case: Case, data: bytes, page_size: int) -> tuple[bytes, SendPayload]:
    view = memoryview(data)
    pages = [view[i : i + page_size] for i in range(0, len(data), page_size)]
    payload = methods(case, page_size, send=True).send_prepare(pages)
    wire = b"".join(bytes(b) for b in payload.buffers)
    assert len(wire) == payload.size
    return wire, payload


def receive(
    case: Case, payload: bytes, count: int, page_size: int, flags: int | None = None
) -> tuple[CodecPath, Target, Source]:
    target = Target(count, page_size)
    packet = RamPacket.data(
        flags=case.flag if flags is None else flags,
        ramblock="pc.ram",
        normal=target.offsets,
        next_packet_size=len(payload),
        packet_num=7,
        page_size=page_size,
    )
    source = Source(payload)
    path = methods(case, page_size, send=False).recv(packet, source, target.pages)
    return path, target, source


def inflate_4k_window(blob: bytes) -> bytes:
    """Raw inflate through a 4 KiB window in small steps, so a longer distance fails."""
    inflate = zlib.decompressobj(-12)
    out, data = bytearray(), blob
    while not inflate.eof:
        step = inflate.decompress(data, 256)
        assert step or inflate.eof, "stream ended early"
        out += step
        data = inflate.unconsumed_tail
    assert not inflate.unused_data
    return bytes(out)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("page_size", [4096, 512, 16384, 65536])
@pytest.mark.parametrize("kind", ["zero", "text", "random", "half"])
@pytest.mark.parametrize("case", CASES)
def test_round_trip(case: Case, kind: str, page_size: int) -> None:
    count = min(page_count(page_size), 32)
    data = image(kind, page_size, count)
    wire, sent = send(case, data, page_size)
    assert sent.path is case.send_path
    lengths, _ = take_apart(wire, count)
    if case is UADK or kind == "random":
        assert lengths == [page_size] * count, "uadk without a device, and pages that do not shrink, go raw"
    else:
        assert all(0 < n < page_size for n in lengths)
    path, target, source = receive(case, wire, count, page_size)
    assert b"".join(target.page(i) for i in range(count)) == data
    assert target.gaps_untouched()
    assert source.reads == 1
    assert path is (CodecPath.RAW if lengths == [page_size] * count else CodecPath.SOFTWARE)


@pytest.mark.parametrize("case", QPLS)
def test_qpl_zero_pages_shrink_to_a_few_bytes(case: Case) -> None:
    wire, _ = send(case, bytes(128 * PS), PS)
    lengths, _ = take_apart(wire, 128)
    assert max(lengths) < 64


# ---------------------------------------------------------------- cross-decoding with the reference zlib


@pytest.mark.parametrize("page_size", [4096, 16384])
@pytest.mark.parametrize("kind", ["zero", "text", "half"])
@pytest.mark.parametrize("case", QPLS)
def test_qpl_pages_inflate_with_reference_zlib_through_a_4k_window(case: Case, kind: str, page_size: int) -> None:
    pages = split_pages(image(kind, page_size, 8), page_size)
    wire, _ = send(case, b"".join(pages), page_size)
    _, blobs = take_apart(wire, len(pages))
    for page, blob in zip(pages, blobs, strict=True):
        assert inflate_4k_window(blob) == page
        assert zlib.decompress(blob, -15) == page


@pytest.mark.parametrize("case", QPLS)
def test_qpl_never_reaches_back_more_than_4k(case: Case) -> None:
    """A 16 KiB page of 8 KiB repeated: only a window above 4 KiB finds the repeat."""
    half = image("random", 8192, 1)
    page = half + half
    assert len(zlib.compress(page, 1, -15)) < len(page)
    wire, _ = send(case, page, len(page))
    assert take_apart(wire, 1) == ([len(page)], [page])


def test_uadk_raw_payload_is_what_qemu_sends_without_a_device() -> None:
    pages = split_pages(image("text", PS, 4), PS)
    wire, _ = send(UADK, b"".join(pages), PS)
    assert wire == assemble([PS] * 4, pages)


@pytest.mark.parametrize("case", CASES)
def test_page_views_as_the_engine_passes_them(case: Case) -> None:
    """The engine hands PageViews; uadk sends adjacent raw pages as one buffer."""
    memory = image("text", PS, 6, seed=4)
    offsets = [0, PS, 2 * PS, 4 * PS, 5 * PS]
    pages = PageViews(memoryview(memory), offsets, PS)
    sent = methods(case, PS, send=True).send_prepare(pages)
    wire = b"".join(bytes(b) for b in sent.buffers)
    if case is UADK:
        assert len(sent.buffers) == 3  # the table, pages 0-2, pages 4-5
    target = bytearray([SENTINEL]) * len(memory)
    packet = RamPacket.data(flags=case.flag, ramblock="r", normal=offsets, next_packet_size=len(wire), packet_num=0)
    methods(case, PS, send=False).recv(packet, Source(wire), PageViews(memoryview(target), offsets, PS))
    for o in offsets:
        assert target[o : o + PS] == memory[o : o + PS]
    assert target[3 * PS : 4 * PS] == bytes([SENTINEL]) * PS


@pytest.mark.parametrize("level", [1, 6, 9])
@pytest.mark.parametrize("case", CASES)
def test_decodes_payloads_of_the_reference_zlib(case: Case, level: int) -> None:
    pages = [p for kind in ("text", "zero", "half", "random") for p in split_pages(image(kind, PS, 4, seed=5), PS)]
    for bits in case.window_bits:
        payload = reference_payload(case, pages, PS, level, bits)
        path, target, _ = receive(case, payload, len(pages), PS)
        assert [target.page(i) for i in range(len(pages))] == pages
        assert path is CodecPath.SOFTWARE


@pytest.mark.parametrize("case", CASES)
def test_hand_built_payload_with_raw_and_compressed_pages(case: Case) -> None:
    random, text, zero, half = (image(kind, PS, 1, seed=9) for kind in ("random", "text", "zero", "half"))
    # Raw pages may be compressible (a sender may always send raw), and may sit anywhere.
    pages = [random, text, zero, text, half, random]
    blobs = [random, case.compress(text, 1, 12), case.compress(zero, 9, 15), text, case.compress(half, 1, 12), random]
    payload = assemble([len(b) for b in blobs], blobs)
    path, target, _ = receive(case, payload, len(pages), PS)
    assert [target.page(i) for i in range(len(pages))] == pages
    assert target.gaps_untouched()
    assert path is CodecPath.SOFTWARE


def test_length_rule_at_the_page_size_boundary() -> None:
    """A blob of page_size - 1 bytes is sent as such; one of page_size bytes means the page goes raw."""
    page = bytes(range(256)) * 16
    for blob_size, sent in ((PS - 1, b"x" * (PS - 1)), (PS, page), (PS + 5, page)):

        def compress(_page: memoryview, n: int = blob_size) -> bytes:
            return b"x" * n

        buffers, size = encode_pages([memoryview(page)], PS, compress)
        wire = b"".join(bytes(b) for b in buffers)
        assert size == len(wire)
        assert take_apart(wire, 1) == ([len(sent)], [sent])


# ---------------------------------------------------------------- hostile payloads


@dataclass(frozen=True)
class Bad:
    payload: bytes
    message: str
    first_bad: int  # pages from this index on must stay untouched; earlier ones decoded
    flags: int | None = None
    cause: type[BaseException] | None = None
    libqpl_message: str | None = None  # what the libqpl decoder says instead, where it differs


COUNT = 4


def good(case: Case) -> tuple[list[bytes], list[int], list[bytes]]:
    """Text, zero, random (raw) and half pages with their reference blobs."""
    pages = [image(kind, PS, 1, seed=3) for kind in ("text", "zero", "random", "half")]
    blobs = [case.compress(p, 1, 12) for p in pages]
    blobs[2] = pages[2]
    return pages, [len(b) for b in blobs], blobs


def with_blob(case: Case, index: int, blob: bytes) -> bytes:
    _, lengths, blobs = good(case)
    blobs[index] = blob
    lengths[index] = len(blob)
    return assemble(lengths, blobs)


def with_length(case: Case, index: int, length: int) -> bytes:
    _, lengths, blobs = good(case)
    lengths[index] = length
    return assemble(lengths, blobs)


def whole(case: Case) -> bytes:
    _, lengths, blobs = good(case)
    return assemble(lengths, blobs)


BAD: dict[str, Callable[[Case], Bad]] = {
    "payload shorter than the table": lambda c: Bad(whole(c)[: 4 * COUNT - 1], "cannot hold the length table", 0),
    "zero length": lambda c: Bad(with_length(c, 1, 0), "page 1 of 4 (ramblock 'pc.ram', offset 0x3000): length 0", 0),
    "length above the page size": lambda c: Bad(with_length(c, 2, PS + 1), f"length {PS + 1} in the table", 0),
    "table adds up to less": lambda c: Bad(whole(c) + b"\0", "adds up to", 0),
    "table adds up to more": lambda c: Bad(whole(c)[:-1], "adds up to", 0),
    "corrupt stream": lambda c: Bad(
        with_blob(c, 1, b"\xff" * 16), "page 1 of 4", 1, cause=zlib.error, libqpl_message="libqpl returned 213"
    ),
    "decodes to more": lambda c: Bad(with_blob(c, 1, c.compress(bytes(2 * PS), 9, 12)), "more than the page size", 1),
    "decodes to less": lambda c: Bad(with_blob(c, 3, c.compress(bytes(PS - 1), 1, 12)), f"to {PS - 1} bytes", 3),
    "stream cut short": lambda c: Bad(
        with_blob(c, 3, c.compress(image("half", PS, 1), 1, 12)[:-6]),
        "cut short",
        3,
        # libqpl does not insist on the final end-of-block code, so it sees too few bytes
        libqpl_message="bytes, not the page size",
    ),
    "bytes after the stream": lambda c: Bad(
        with_blob(c, 0, c.compress(bytes(PS), 1, 12) + b"abcdefgh" * 4),
        "32 bytes follow",
        0,
        # libqpl reads a few bytes past the final block and counts them as read (see the test below)
        libqpl_message="bytes follow the end of the compressed stream",
    ),
    "flag of another codec": lambda c: Bad(whole(c), "flags 0x2", 0, flags=Flag.ZLIB),
}


@pytest.mark.parametrize("name", list(BAD))
@pytest.mark.parametrize("case", CASES)
def test_hostile_payload(case: Case, name: str) -> None:
    bad = BAD[name](case)
    expected_pages, _, _ = good(case)
    target = Target(COUNT, PS)
    packet = RamPacket.data(
        flags=case.flag if bad.flags is None else bad.flags,
        ramblock="pc.ram",
        normal=target.offsets,
        next_packet_size=len(bad.payload),
        packet_num=1,
    )
    with pytest.raises(CodecError, match=case.name) as caught:
        methods(case, PS, send=False).recv(packet, Source(bad.payload), target.pages)
    libqpl = through_libqpl(case)
    assert (bad.libqpl_message if libqpl and bad.libqpl_message else bad.message) in str(caught.value)
    if bad.cause is not None:
        # libqpl's and ISA-L's errors come through the inflater as a ValueError.
        assert isinstance(caught.value.__cause__, ValueError if libqpl or through_isal(case) else bad.cause)
    assert target.gaps_untouched()
    assert [target.page(i) for i in range(bad.first_bad)] == expected_pages[: bad.first_bad]
    assert all(target.untouched(i) for i in range(bad.first_bad, COUNT))


@pytest.mark.parametrize("case", QPLS)
def test_qpl_a_few_bytes_after_the_stream(case: Case) -> None:
    """zlib refuses any byte after the final block; libqpl counts up to a few of them as read and so takes
    the page (its bytes exactly as the stream says), as QEMU's receiver on libqpl would."""
    page = bytes(PS)
    payload = assemble([38], [zlib.compress(page, 1, -12) + b"abc"])
    if not through_libqpl(case):
        with pytest.raises(CodecError, match="3 bytes follow the end"):
            receive(case, payload, 1, PS)
        return
    path, target, _ = receive(case, payload, 1, PS)
    assert target.page(0) == page and path is CodecPath.SOFTWARE


def test_uadk_checks_the_adler32_of_each_page() -> None:
    text = image("text", PS, 1, seed=3)
    blob = bytearray(zlib.compress(text, 1))
    blob[-1] ^= 0x01
    check = "Incorrect checksum" if through_isal(UADK) else "incorrect data check"  # ISA-L's words, zlib's
    with pytest.raises(CodecError, match=rf"page 0 of 1.*corrupt compressed stream.*{check}") as caught:
        receive(UADK, assemble([len(blob)], [bytes(blob)]), 1, PS)
    cause = caught.value.__cause__
    assert isinstance(cause.__cause__ if through_isal(UADK) else cause, deflate_libs.fastest().error)


@pytest.mark.parametrize("case", QPLS)
def test_qpl_refuses_zlib_wrapped_pages(case: Case) -> None:
    """A zlib header is not a deflate block: the formats of the two codecs do not mix."""
    blob = zlib.compress(bytes(PS), 1)
    with pytest.raises(CodecError, match="qpl page 0 of 1"):
        receive(case, assemble([len(blob)], [blob]), 1, PS)


FUZZ_PS = 256


@settings(max_examples=300, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("case", CASES)
def test_fuzzed_payloads_fail_cleanly(case: Case, data: st.DataObject) -> None:
    """Valid payloads with one byte changed, or random tables and blobs: a CodecError or a
    clean decode, never another exception and never a byte outside the packet's pages."""
    count = data.draw(st.integers(1, 4))
    if data.draw(st.booleans()):
        pages = [data.draw(st.sampled_from([bytes(FUZZ_PS), b"ab" * (FUZZ_PS // 2), bytes(range(FUZZ_PS))]))]
        payload = bytearray(reference_payload(case, pages * count, FUZZ_PS))
        where = data.draw(st.integers(0, len(payload) - 1))
        payload[where] ^= data.draw(st.integers(1, 255))
    else:
        lengths = data.draw(st.lists(st.integers(0, FUZZ_PS + 1), min_size=count, max_size=count))
        payload = bytearray(struct.pack(f">{count}I", *lengths) + data.draw(st.binary(max_size=sum(lengths) + 2)))
    target = Target(count, FUZZ_PS)
    packet = RamPacket.data(
        flags=case.flag, ramblock="r", normal=target.offsets, next_packet_size=len(payload), packet_num=0
    )
    with contextlib.suppress(CodecError):
        methods(case, FUZZ_PS, send=False).recv(packet, Source(bytes(payload)), target.pages)
    assert target.gaps_untouched()


# ---------------------------------------------------------------- contexts


@pytest.mark.parametrize("case", CASES)
def test_context_is_bound_to_its_channel_thread(case: Case) -> None:
    page = [memoryview(bytes(PS))]
    unbound = case.codec.methods(PS, None, case.send_path)
    with pytest.raises(CodecError, match="before setup"):
        unbound.send_prepare(page)
    bound = methods(case, PS, send=True)
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            bound.send_prepare(page)
        except CodecError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "another thread" in str(errors[0])


@pytest.mark.parametrize("case", CASES)
def test_methods_refuse_levels_and_paths_they_cannot_run(case: Case) -> None:
    with pytest.raises(CodecError, match="takes no level"):
        case.codec.methods(PS, 1, case.send_path)
    with pytest.raises(CodecError, match=f"the {case.name} hardware path cannot run here: .*(returned|not loaded)"):
        case.codec.methods(PS, None, CodecPath.HARDWARE)
    missing = CodecPath.SOFTWARE if case is UADK else CodecPath.RAW
    with pytest.raises(CodecError, match=f"codec {case.name} has no {missing} path"):
        case.codec.methods(PS, None, missing)


# ---------------------------------------------------------------- probes and loading


def test_probes_on_this_host() -> None:
    """No IAA or uacce device here: hardware is off and the probe says why, with the library's own answer."""
    qpl, uadk = QplCodec().probe(), UadkCodec().probe()
    assert [p.path for p in qpl] == [CodecPath.HARDWARE, CodecPath.SOFTWARE]
    assert [p.path for p in uadk] == [CodecPath.HARDWARE, CodecPath.RAW]
    assert not qpl[0].available and not uadk[0].available
    if not Path("/sys/bus/dsa/devices").exists():
        assert "no IAA device" in qpl[0].reason
    if QPL.codec.library is not None:
        # libqpl's hardware path without IAA: 501 without libaccel-config, 503 without a work queue.
        assert re.search(r"qpl_init_job\(qpl_path_hardware\) returned 50[13] \(QPL_STS_INIT_\w+\): ", qpl[0].reason)
        assert qpl[1].library == QPL.codec.library.path and "qpl_path_software" in qpl[1].reason
    else:
        assert "needs libqpl, which is not loaded" in qpl[0].reason
        # Without libqpl the fastest deflate writes the pages: ISA-L when python-isal imports, else zlib.
        writer = deflate_libs.fastest()
        assert qpl[1] == PathProbe(CodecPath.SOFTWARE, True, qpl[1].reason, writer.name, writer.version)
    if UadkCodec().probe() and uadk[0].library != "libwd_comp" and not Path("/sys/class/uacce").exists():
        assert uadk[0].reason == (
            "wd_comp_init2 returned -22 (EINVAL): no UADK compression device (/sys/class/uacce absent)"
        )
    assert uadk[1].available and "raw" in uadk[1].reason


def test_qpl_zlib_writer_is_forced_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(qpl_host.IMPL_ENV, "zlib")
    hardware, software = QplCodec().probe()
    assert not hardware.available and "MFDCOMP_QPL_IMPL=zlib" in hardware.reason
    assert software.available and software.library == "zlib" and software.reason.startswith("zlib writer")
    monkeypatch.setenv(qpl_host.IMPL_ENV, "lz4")
    hardware, software = QplCodec().probe()
    assert not software.available and "MFDCOMP_QPL_IMPL='lz4' is not one of libqpl, isal, zlib" in software.reason
    with pytest.raises(CodecError, match="software path cannot run here: MFDCOMP_QPL_IMPL='lz4'"):
        QplCodec().methods(PS, None, CodecPath.SOFTWARE)


@pytest.mark.parametrize("codec", [QplCodec, UadkCodec])
def test_probe_runs_once(codec: type[QplCodec | UadkCodec], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    module = sys.modules[codec.__module__]
    real = module.probe_host

    def counted(**options: object) -> object:
        calls.append(1)
        return real(**options)

    monkeypatch.setattr(module, "probe_host", counted)
    instance = codec()
    assert instance.probe() == instance.probe()
    assert calls == [1]


def test_uadk_init_runs_once_per_process() -> None:
    """Every uadk codec object shares the process's one probe, so wd_comp_init2 ran once."""
    assert uadk_host.probe_host() is uadk_host.probe_host()
    assert UadkCodec().probe() == UadkCodec().probe() == list(uadk_host.probe_host().probes)


def touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def iaa_host(root: Path, *, state: str = "enabled", node: bool = True) -> None:
    devices = root / "sys/bus/dsa/devices"
    (devices / "iax1").mkdir(parents=True)
    touch(devices / "wq1.0" / "state", state)
    touch(devices / "wq1.0" / "type", "user")
    touch(devices / "wq0.0" / "state", "enabled")  # a DSA queue (dsa0): not IAA
    touch(devices / "wq0.0" / "type", "user")
    if node:
        touch(root / "dev/iax/wq1.0")


@pytest.mark.parametrize(
    ("setup", "expected", "found"),
    [
        (lambda r: None, "/sys/bus/dsa/devices is absent", False),
        (lambda r: (r / "sys/bus/dsa/devices/dsa0").mkdir(parents=True), "no iax* in", False),
        (lambda r: iaa_host(r, state="disabled"), "iax1 have no enabled user work queue", False),
        (lambda r: iaa_host(r, node=False), "wq1.0 are enabled but not accessible in /dev/iax", False),
        (iaa_host, "IAA work queue(s) wq1.0 enabled and accessible", True),
    ],
    ids=["bare", "dsa only", "queue disabled", "no device node", "all there"],
)
def test_iaa_sysfs_reasons(tmp_path: Path, setup: Callable[[Path], None], expected: str, found: bool) -> None:
    setup(tmp_path)
    finding = qpl_host.find_iaa(tmp_path)
    assert finding.found is found
    assert expected in finding.detail


def uacce_host(root: Path, *, algorithms: str = "zlib\ngzip\ndeflate", free: str = "4", node: bool = True) -> None:
    device = root / "sys/class/uacce/hisi_zip-0"
    touch(device / "algorithms", algorithms)
    touch(device / "available_instances", free)
    if node:
        touch(root / "dev/hisi_zip-0")


@pytest.mark.parametrize(
    ("setup", "expected", "found"),
    [
        (lambda r: None, "/sys/class/uacce is absent", False),
        (lambda r: (r / "sys/class/uacce").mkdir(parents=True), "/sys/class/uacce is empty", False),
        (lambda r: uacce_host(r, algorithms="sm4 aes"), "hisi_zip-0 offer no zlib algorithm", False),
        (lambda r: uacce_host(r, free="0"), "hisi_zip-0 have no free queue", False),
        (lambda r: uacce_host(r, node=False), "hisi_zip-0 are not accessible in /dev", False),
        (uacce_host, "hisi_zip-0 offer zlib with free queues", True),
    ],
    ids=["bare", "empty class", "no zlib", "no free queue", "no device node", "all there"],
)
def test_uacce_sysfs_reasons(tmp_path: Path, setup: Callable[[Path], None], expected: str, found: bool) -> None:
    setup(tmp_path)
    finding = uadk_host.find_uacce(tmp_path)
    assert finding.found is found
    assert expected in finding.detail


def test_importing_the_plugins_loads_no_library() -> None:
    """ctypes is not even imported until a probe runs, so no CDLL can exist before it."""
    script = (
        "import sys\n"
        "import mfdcomp_qpl, mfdcomp_uadk\n"
        "codecs = mfdcomp_qpl.mfdcomp_methods() + mfdcomp_uadk.mfdcomp_methods()\n"
        "print(any(m == 'ctypes' or m.startswith('ctypes.') for m in sys.modules))\n"
        "[c.probe() for c in codecs]\n"
        "print('ctypes' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["False", "True"]


def test_registered_through_entry_points() -> None:
    registry = default_registry()
    assert isinstance(registry.get("qpl"), QplCodec)
    assert isinstance(registry.get("uadk"), UadkCodec)
    records = {p.name: p for p in registry.plugins}
    assert records["qpl"].ok and records["qpl"].codecs == ("qpl",) and records["qpl"].source == "mfdcomp-qpl"
    assert records["uadk"].ok and records["uadk"].codecs == ("uadk",) and records["uadk"].source == "mfdcomp-uadk"

"""The qpl codec on the real libqpl (1.6, software path here): against zlib, against itself, and on QEMU's capture.

Every test needs libqpl and skips, saying so, without it (CI builds it with
ci/system/qpl.sh). ``libqpl`` contexts come from ``QplCodec()``, ``zlib``
ones from ``QplCodec(impl="zlib")``: the zlib writer and zlib decoder.
"""

from __future__ import annotations

import json
import struct
import tempfile
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from mfdcomp_qpl import QplCodec, QplMethods
from mfdcomp_qpl.binding import STS_MORE_OUTPUT_NEEDED, address, status_name

from mfdcomp.errors import CodecError
from mfdcomp.imagegen import generate_image
from mfdcomp.methods import CodecPath, PageViews
from mfdcomp.methods import deflate as deflate_libs
from mfdcomp.qemu.replay import replay_capture
from mfdcomp.wire import Flag, RamPacket, page_count

PS = 4096
LIBQPL = QplCodec()
ZLIB = QplCodec(impl="zlib")


@pytest.fixture(autouse=True)
def needs_libqpl() -> None:
    LIBQPL.probe()
    if LIBQPL.library is None:
        pytest.skip(f"libqpl is not installed (run ci/system/qpl.sh): {LIBQPL.probe()[1].reason}")


def mixed(count: int, seed: int = 1, page_size: int = PS) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "img"
        generate_image(path, count * page_size, {"zero": 10, "text": 40, "random": 20, "half": 30}, seed, page_size)
        return path.read_bytes()


class Source:
    def __init__(self, payload: bytes) -> None:
        self.data = bytearray(payload)
        self.size = len(payload)

    def read(self) -> memoryview:
        return memoryview(self.data)

    def read_into(self, views: Sequence[memoryview]) -> None:
        raise AssertionError("qpl reads the whole payload")


def sender(codec: QplCodec, page_size: int = PS) -> QplMethods:
    m = codec.methods(page_size, None, CodecPath.SOFTWARE)
    m.send_setup(0)
    return m


def receiver(codec: QplCodec, page_size: int = PS) -> QplMethods:
    m = codec.methods(page_size, None, CodecPath.SOFTWARE)
    m.recv_setup(0)
    return m


def encode(codec: QplCodec, data: bytes | bytearray, page_size: int = PS) -> bytes:
    m = sender(codec, page_size)
    view = memoryview(data)
    payload = m.send_prepare([view[i : i + page_size] for i in range(0, len(data), page_size)])
    m.send_cleanup()
    wire = b"".join(bytes(b) for b in payload.buffers)
    assert len(wire) == payload.size
    return wire


def decode(codec: QplCodec, wire: bytes, count: int, page_size: int = PS) -> tuple[bytes, CodecPath]:
    target = bytearray(count * page_size)
    offsets = [i * page_size for i in range(count)]
    packet = RamPacket.data(
        flags=Flag.QPL, ramblock="pc.ram", normal=offsets, next_packet_size=len(wire), packet_num=1, page_size=page_size
    )
    m = receiver(codec, page_size)
    path = m.recv(packet, Source(wire), PageViews(memoryview(target), offsets, page_size))
    m.recv_cleanup()
    return bytes(target), path


def split(wire: bytes, count: int) -> list[bytes]:
    lengths = struct.unpack_from(f">{count}I", wire)
    blobs, start = [], 4 * count
    for n in lengths:
        blobs.append(wire[start : start + n])
        start += n
    return blobs


@pytest.mark.parametrize("page_size", [4096, 16384, 65536])
def test_libqpl_pages_inflate_with_zlib_and_with_libqpl(page_size: int) -> None:
    count = min(16, page_count(page_size))
    data = mixed(count, page_size=page_size)
    wire = encode(LIBQPL, data, page_size)
    blobs = split(wire, count)
    for index, blob in enumerate(blobs):
        page = data[index * page_size : (index + 1) * page_size]
        assert (zlib.decompress(blob, -15) if len(blob) < page_size else blob) == page
    assert decode(ZLIB, wire, count, page_size)[0] == data
    assert decode(LIBQPL, wire, count, page_size)[0] == data


def test_zlib_writer_pages_decode_through_libqpl() -> None:
    data = mixed(64, seed=2)
    wire = encode(ZLIB, data)
    decoded, path = decode(LIBQPL, wire, 64)
    assert decoded == data and path is CodecPath.SOFTWARE


def test_libqpl_writes_fixed_huffman_as_qemu_asks() -> None:
    """No DYNAMIC_HUFFMAN flag: every compressed page is one final block of type 01 (fixed codes)."""
    data = mixed(32, seed=3)
    for blob in split(encode(LIBQPL, data), 32):
        if len(blob) < PS:
            assert blob[0] & 0b111 == 0b011, f"first block header bits {blob[0] & 0b111:03b}"


def test_incompressible_pages_go_raw_and_only_those() -> None:
    data = mixed(64, seed=4)
    m = sender(LIBQPL)
    view = memoryview(data)
    pages = [view[i : i + PS] for i in range(0, len(data), PS)]
    payload = m.send_prepare(pages)
    wire = b"".join(bytes(b) for b in payload.buffers)
    lengths = struct.unpack_from(">64I", wire)
    for index, length in enumerate(lengths):
        page = data[index * PS : (index + 1) * PS]
        shrinks = len(zlib.compress(page, 1, -12)) < PS - 64
        if length == PS:
            assert split(wire, 64)[index] == page
            assert not shrinks
    assert PS in lengths and any(n < PS for n in lengths)
    assert m.page_paths[CodecPath.RAW] == lengths.count(PS)
    assert m.page_paths[CodecPath.SOFTWARE] == 64 - lengths.count(PS)
    assert m.page_paths[CodecPath.HARDWARE] == 0
    assert payload.path is CodecPath.SOFTWARE
    m.send_cleanup()


def test_a_page_that_does_not_shrink_goes_raw_on_more_output_needed() -> None:
    """Output room is page size - 1: libqpl says "more output needed" and the page travels as it is."""
    with tempfile.TemporaryDirectory() as folder:
        generate_image(Path(folder) / "img", PS, {"random": 100}, 7, PS)
        noise = (Path(folder) / "img").read_bytes()
    job = sender(LIBQPL)._jobs
    assert job is not None
    out = bytearray(PS)
    status, _ = job.software.compress(address(memoryview(bytearray(noise))), PS, address(memoryview(out)), PS - 1)
    assert status == STS_MORE_OUTPUT_NEEDED
    assert split(encode(LIBQPL, noise), 1) == [noise]


def test_read_only_and_writable_pages_give_the_same_payload() -> None:
    data = mixed(32, seed=5)
    assert encode(LIBQPL, bytes(data)) == encode(LIBQPL, bytearray(data))


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\xff" * 16, f"corrupt compressed stream: libqpl returned {status_name(213)}"),
        (zlib.compress(bytes(2 * PS), 9, -12), "decodes to more than the page size 4096"),
        (zlib.compress(bytes(PS - 1), 1, -12), "decodes to 4095 bytes, not the page size 4096"),
        (zlib.compress(bytes(PS), 1), "corrupt compressed stream: libqpl returned"),  # a zlib header
        (zlib.compress(bytes(PS), 1, -12) + bytes(40), "bytes follow the end of the compressed stream"),
    ],
    ids=["garbage", "more than a page", "less than a page", "zlib wrapped", "trailing bytes"],
)
def test_hostile_pages_through_the_libqpl_decoder(blob: bytes, message: str) -> None:
    good = zlib.compress(bytes(PS), 1, -12)
    wire = struct.pack(">2I", len(good), len(blob)) + good + blob
    with pytest.raises(CodecError, match="qpl page 1 of 2") as caught:
        decode(LIBQPL, wire, 2)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("lengths", "message"),
    [((0,), "length 0 in the table"), ((PS + 1,), f"length {PS + 1} in the table"), ((10,), "adds up to 14")],
)
def test_bad_length_tables_through_the_libqpl_decoder(lengths: tuple[int, ...], message: str) -> None:
    wire = struct.pack(f">{len(lengths)}I", *lengths) + bytes(20)
    with pytest.raises(CodecError, match=message):
        decode(LIBQPL, wire, len(lengths))


def test_hardware_path_is_not_available_here_with_libqpls_status() -> None:
    hardware = LIBQPL.probe()[0]
    if hardware.available:
        pytest.skip("this host has IAA: libqpl initialised a hardware job")
    assert "qpl_init_job(qpl_path_hardware) returned 50" in hardware.reason
    assert "QPL_STS_INIT_" in hardware.reason
    with pytest.raises(CodecError, match="the qpl hardware path cannot run here: qpl_init_job"):
        LIBQPL.methods(PS, None, CodecPath.HARDWARE)


def test_software_probe_names_libqpl_and_its_version() -> None:
    software = LIBQPL.probe()[1]
    assert software.available and software.version and software.version.startswith("1.")
    assert software.library is not None and "libqpl" in software.library
    assert ZLIB.probe()[1].library == "zlib"
    # Every other implementation that runs here: the ISA-L writer needs python-isal.
    isal = {"isal writer"} if isinstance(deflate_libs.isal(), deflate_libs.Deflate) else set()
    assert set(LIBQPL.implementations()) == {"zlib writer"} | isal
    assert set(ZLIB.implementations()) == {"libqpl"} | isal


def test_jobs_are_per_context_and_released_at_cleanup() -> None:
    m = sender(LIBQPL)
    assert m.implementation == "libqpl" and m._jobs is not None
    m.send_cleanup()
    assert m._jobs is None
    assert sender(ZLIB).implementation == "zlib"


def test_channels_in_parallel_each_with_its_own_job() -> None:
    data = mixed(128, seed=6)
    expected = encode(LIBQPL, data)
    results: dict[int, bool] = {}

    def channel(number: int) -> None:
        wire = b"".join(encode(LIBQPL, data) for _ in range(5))
        results[number] = wire == expected * 5 and decode(LIBQPL, expected, 128)[0] == data

    threads = [threading.Thread(target=channel, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {0: True, 1: True, 2: True, 3: True}


def test_qemu_qpl_capture_replays_through_libqpl_and_through_zlib(capture_dirs: list[Path]) -> None:
    """QEMU 10.0.2's qpl channels (libqpl 1.6 software path) decode to QEMU's final RAM with either decoder."""
    captures = [d for d in capture_dirs if json.loads((d / "manifest.json").read_text())["codec"] == "qpl"]
    if not captures:
        pytest.skip(f"no qpl capture among {len(capture_dirs)}")
    for directory in captures:
        final = json.loads((directory / "manifest.json").read_text())["ram0"]["final_sha256"]
        assert replay_capture(directory, QplCodec()) == final
        assert replay_capture(directory, QplCodec(impl="zlib")) == final

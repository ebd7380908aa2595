"""The qatzip plugin against the real libqatzip 1.3.1 and QATzip's recorded outputs.

Vectors: ../shared/vectors/qatzip when it exists, else the copy of two of its
cases in tests/vectors/qatzip. Tests that need libqatzip fail (never skip)
when it is missing: ci/system/qatzip.sh installs it. Payloads are checked with
the reference decoders (zlib, gzip) besides the plugin's own.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import zstandard
from mfdcomp_qatzip import QatzipCodec, gzipext, locate
from mfdcomp_qatzip.locate import ENV_VAR, Candidate, describe_devices, search_order

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine.migrate import MigrateOptions
from mfdcomp.errors import CodecError
from mfdcomp.imagegen import generate_image
from mfdcomp.methods import CodecPath, SendPayload
from mfdcomp.registry import get_codec
from mfdcomp.testing import run_loopback
from mfdcomp.wire import Flag, RamPacket

PS = 4096
SENTINEL = 0xA5
TESTS = Path(__file__).resolve().parent.parent
SHARED_VECTORS = TESTS.parent.parent / "shared" / "vectors" / "qatzip"
BUNDLED_VECTORS = TESTS / "vectors" / "qatzip"
VECTOR_ROOT = SHARED_VECTORS if SHARED_VECTORS.is_dir() else BUNDLED_VECTORS
CASES = sorted(d.name for d in VECTOR_ROOT.iterdir() if (d / "manifest.json").is_file()) if VECTOR_ROOT.is_dir() else []
INSTALL_HINT = "run `bash ci/system/qatzip.sh` as root (ci/setup.sh does) to install libqatzip"


# ---------------------------------------------------------------- helpers


@functools.cache
def _library_codec() -> QatzipCodec:
    codec = QatzipCodec()
    codec.probe()
    return codec


@pytest.fixture
def qz() -> QatzipCodec:
    """The codec bound to the real libqatzip; fails when the library is not installed."""
    codec = _library_codec()
    if codec.library is None:
        reason = next(p.reason for p in codec.probe() if p.path is CodecPath.SOFTWARE)
        pytest.fail(f"libqatzip is not available: {reason}; {INSTALL_HINT}")
    return codec


def python_codec() -> QatzipCodec:
    """The codec with no library to load: the pure-Python writer and the zlib reader."""
    return QatzipCodec(list)


@functools.cache
def image(pages: int, mix: str = "text=50,random=30,half=20", seed: int = 5) -> bytes:
    """Pages from mfdcomp.imagegen, no zero pages (as a packet's normal pages)."""
    kinds = dict(part.split("=") for part in mix.split(","))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "img"
        generate_image(path, pages * PS, {k: float(v) for k, v in kinds.items()}, seed, PS)
        return path.read_bytes()


def vector(case: str) -> tuple[bytes, dict[str, bytes], dict[str, object]]:
    folder = VECTOR_ROOT / case
    data = zstandard.ZstdDecompressor().decompress((folder / "input.bin.zst").read_bytes())
    outputs = {level: (folder / f"output.l{level}.bin").read_bytes() for level in ("1", "9")}
    manifest = json.loads((folder / "manifest.json").read_text())
    return data, outputs, manifest


@pytest.fixture(params=CASES or [None])
def case(request: pytest.FixtureRequest) -> str:
    if request.param is None:
        pytest.fail(f"no QATzip vector found in {SHARED_VECTORS} nor in {BUNDLED_VECTORS}")
    name: str = request.param
    return name


class Source:
    """PayloadSource over bytes."""

    def __init__(self, payload: bytes) -> None:
        self.data = bytearray(payload)
        self.size = len(payload)

    def read(self) -> memoryview:
        return memoryview(self.data)

    def read_into(self, views: Sequence[memoryview]) -> None:
        raise AssertionError("qatzip reads the whole payload at once")


class Target:
    """A block with sentinel bytes around the packet's pages.

    ``contiguous``: the pages follow each other (libqatzip decodes straight
    into them); otherwise every page sits between two sentinel pages.
    """

    def __init__(self, count: int, *, contiguous: bool) -> None:
        stride = PS if contiguous else 2 * PS
        self.memory = bytearray([SENTINEL]) * (count * stride + 2 * PS)
        self.offsets = [PS + i * stride for i in range(count)]
        view = memoryview(self.memory)
        self.pages = [view[o : o + PS] for o in self.offsets]

    def data(self) -> bytes:
        return b"".join(bytes(p) for p in self.pages)

    def outside_untouched(self) -> bool:
        inside = set()
        for offset in self.offsets:
            inside.update(range(offset, offset + PS))
        return all(b == SENTINEL for i, b in enumerate(self.memory) if i not in inside)


def split(data: bytes) -> list[memoryview]:
    view = memoryview(data)
    return [view[i : i + PS] for i in range(0, len(data), PS)]


def send(codec: QatzipCodec, data: bytes, level: int | None = 1) -> tuple[bytes, SendPayload]:
    methods = codec.methods(PS, level, CodecPath.SOFTWARE)
    methods.send_setup(0)
    try:
        payload = methods.send_prepare(split(data))
        wire = b"".join(bytes(b) for b in payload.buffers)
    finally:
        methods.send_cleanup()
    assert len(wire) == payload.size
    return wire, payload


def packet(target: Target, size: int, flags: int = Flag.QATZIP) -> RamPacket:
    return RamPacket.data(
        flags=flags, ramblock="pc.ram", normal=target.offsets, next_packet_size=size, packet_num=3, page_size=PS
    )


def receive(
    codec: QatzipCodec, payload: bytes, count: int, *, contiguous: bool = False, flags: int = Flag.QATZIP
) -> tuple[CodecPath, Target]:
    target = Target(count, contiguous=contiguous)
    methods = codec.methods(PS, None, CodecPath.SOFTWARE)
    methods.recv_setup(0)
    try:
        path = methods.recv(packet(target, len(payload), flags), Source(payload), target.pages)
    finally:
        methods.recv_cleanup()
    return path, target


def real_decompress(codec: QatzipCodec, payload: bytes, size: int) -> bytes:
    """qzDecompress of the real library on a fresh session; the whole payload must be used."""
    assert codec.library is not None
    session = codec.library.session(1)
    try:
        out = bytearray(size)
        consumed, produced = session.decompress(payload, out)
    finally:
        session.close()
    assert (consumed, produced) == (len(payload), size)
    return bytes(out)


def member_header(payload: bytes) -> tuple[int, ...]:
    """(FLG, MTIME, XFL, OS, XLEN, 'QZ' source length, 'QZ' deflate length) of the first member."""
    magic, method, flags, mtime, xfl, os_, xlen, si, sublen, size, deflated = struct.unpack_from(
        "<HBBIBBH2sHII", payload
    )
    assert (magic, method, si, sublen) == (0x8B1F, 8, b"QZ", 8)
    return flags, mtime, xfl, os_, xlen, size, deflated


DECODERS: dict[str, Callable[[], QatzipCodec]] = {"libqatzip": _library_codec, "python": python_codec}


@pytest.fixture(params=list(DECODERS))
def decoder(request: pytest.FixtureRequest) -> QatzipCodec:
    """Each receiver: libqatzip's (fails without the library) and the pure-Python one."""
    if request.param == "libqatzip":
        codec: QatzipCodec = request.getfixturevalue("qz")
        return codec
    return python_codec()


# ---------------------------------------------------------------- the recorded vectors


def test_vector_inputs_match_their_manifests(case: str) -> None:
    data, outputs, manifest = vector(case)
    assert isinstance(manifest["input"], dict) and isinstance(manifest["outputs"], dict)
    assert hashlib.sha256(data).hexdigest() == manifest["input"]["sha256"]
    for level, output in outputs.items():
        assert hashlib.sha256(output).hexdigest() == manifest["outputs"][f"l{level}"]["sha256"]


@pytest.mark.parametrize("contiguous", [False, True], ids=["scattered", "contiguous"])
@pytest.mark.parametrize("level", ["1", "9"])
def test_vectors_decode_through_the_plugin(case: str, level: str, decoder: QatzipCodec, contiguous: bool) -> None:
    data, outputs, _ = vector(case)
    path, target = receive(decoder, outputs[level], len(data) // PS, contiguous=contiguous)
    assert target.data() == data
    assert target.outside_untouched()
    assert path is CodecPath.SOFTWARE


@pytest.mark.parametrize("level", ["1", "9"])
def test_vectors_decode_with_real_qzdecompress(case: str, level: str, qz: QatzipCodec) -> None:
    data, outputs, _ = vector(case)
    assert real_decompress(qz, outputs[level], len(data)) == data


@pytest.mark.parametrize("level", [1, 9])
def test_writers_reproduce_the_recorded_format(case: str, level: int, qz: QatzipCodec) -> None:
    data, outputs, _ = vector(case)
    recorded = outputs[str(level)]
    flags, mtime, xfl, os_, xlen, size, deflated = member_header(recorded)
    assert (flags, mtime, xfl, os_, xlen, size) == (4, 0, {1: 4, 9: 2}[level], 255, 12, len(data))
    assert deflated == len(recorded) - gzipext.HEADER_SIZE - gzipext.TRAILER_SIZE
    for codec in (qz, python_codec()):
        wire, _ = send(codec, data, level)
        assert member_header(wire)[:6] == (flags, mtime, xfl, os_, xlen, size)
        assert gzipext.qz_members(wire) == [gzipext.Member(0, len(wire), len(data))]


def test_library_reproduces_the_vectors_bytes(case: str, qz: QatzipCodec) -> None:
    data, outputs, _ = vector(case)
    for level in (1, 9):
        assert send(qz, data, level)[0] == outputs[str(level)]


# ---------------------------------------------------------------- writers and readers agree


@pytest.mark.parametrize("pages", [1, 37, 128])
@pytest.mark.parametrize("level", [1, 9])
@pytest.mark.parametrize("writer", ["libqatzip", "python"])
def test_output_is_accepted_by_every_reader(writer: str, level: int, pages: int, qz: QatzipCodec) -> None:
    data = image(pages)
    wire, sent = send(DECODERS[writer](), data, level)
    assert sent.path is CodecPath.SOFTWARE
    assert real_decompress(qz, wire, len(data)) == data
    assert zlib.decompress(wire, 16 + zlib.MAX_WBITS) == data
    assert gzip.decompress(wire) == data
    for reader in (qz, python_codec()):
        _, target = receive(reader, wire, pages)
        assert target.data() == data


@pytest.mark.parametrize("level", range(1, 10))
@pytest.mark.parametrize("mix", ["text=100", "text=50,random=30,half=20", "half=100"])
def test_python_writer_writes_the_librarys_bytes(level: int, mix: str, qz: QatzipCodec) -> None:
    # Same zlib underneath: byte-identical (an all-random packet at level 9 differs, as in the vectors).
    data = image(128, mix, seed=level)
    assert send(python_codec(), data, level)[0] == send(qz, data, level)[0]


def test_qatzip_style_multi_member_payloads_decode(decoder: QatzipCodec) -> None:
    # Hardware writes one member per 64 KiB; plain gzip members (no 'QZ' field) are accepted too.
    data = image(37)
    cut = 64 * 1024
    for first, second in (
        (gzipext.compress(data[:cut], 1), gzipext.compress(data[cut:], 1)),
        (gzipext.compress(data[:cut], 1), gzip.compress(data[cut:], mtime=0)),
        (gzip.compress(data[:cut], mtime=0), gzip.compress(data[cut:], mtime=0)),
    ):
        _, target = receive(decoder, first + second, 37)
        assert target.data() == data


# ---------------------------------------------------------------- hostile and broken payloads


def _flip(payload: bytes, index: int) -> bytes:
    broken = bytearray(payload)
    broken[index] ^= 0xFF
    return bytes(broken)


def _lying_bomb(pages: int) -> bytes:
    """A member whose 'QZ' field and ISIZE claim the packet's size but whose deflate body holds 64 MiB."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(bytes(64 << 20)) + deflater.flush()
    size = pages * PS
    header = struct.pack("<BBBBIBBH2sHII", 0x1F, 0x8B, 8, 4, 0, 2, 255, 12, b"QZ", 8, size, len(body))
    return header + body + struct.pack("<II", zlib.crc32(bytes(size)), size)


@functools.cache
def _bomb(kind: str, pages: int) -> bytes:
    if kind == "plain-gzip":
        return gzip.compress(bytes(256 << 20), compresslevel=9, mtime=0)
    if kind == "qz-honest":
        return gzipext.compress(bytes(64 << 20), 1)
    return _lying_bomb(pages)


BROKEN: dict[str, Callable[[bytes, bytes], bytes]] = {
    "corrupt-body": lambda wire, data: _flip(wire, len(wire) // 2),
    "corrupt-crc": lambda wire, data: _flip(wire, len(wire) - 6),
    "corrupt-isize": lambda wire, data: _flip(wire, len(wire) - 2),
    "corrupt-header": lambda wire, data: _flip(wire, 0),
    "truncated-1": lambda wire, data: wire[:-1],
    "truncated-8": lambda wire, data: wire[:-8],
    "truncated-9": lambda wire, data: wire[:-9],
    "truncated-half": lambda wire, data: wire[: len(wire) // 2],
    "trailing-garbage": lambda wire, data: wire + b"garbage!",
    "one-page-short": lambda wire, data: gzipext.compress(data[:-PS], 1),
    "one-page-long": lambda wire, data: gzipext.compress(data + data[:PS], 1),
    "plain-gzip-short": lambda wire, data: gzip.compress(data[:-PS], mtime=0),
    "not-gzip": lambda wire, data: os.urandom(len(wire)),
    "plain-gzip-truncated": lambda wire, data: gzip.compress(data, mtime=0)[:-5],
    "plain-gzip-corrupt": lambda wire, data: _flip(gzip.compress(data, mtime=0), 5000),
    "plain-gzip-long": lambda wire, data: gzip.compress(data + data[:PS], mtime=0),
    "bomb-plain-gzip": lambda wire, data: _bomb("plain-gzip", len(data) // PS),
    "bomb-qz-honest": lambda wire, data: _bomb("qz-honest", len(data) // PS),
    "bomb-qz-lying": lambda wire, data: _bomb("qz-lying", len(data) // PS),
}


@pytest.mark.parametrize("contiguous", [False, True], ids=["scattered", "contiguous"])
@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_payloads_raise_codec_error(kind: str, decoder: QatzipCodec, contiguous: bool) -> None:
    data = image(37)
    wire = gzipext.compress(data, 1)
    broken = BROKEN[kind](wire, data)
    assert len(broken) <= 1 << 20, "a payload the wire layer would let through"
    with pytest.raises(CodecError) as caught:
        receive(decoder, broken, 37, contiguous=contiguous)
    assert str(caught.value)
    # receive() leaves the pages written at most: never a byte around them.
    target = Target(37, contiguous=contiguous)
    methods = decoder.methods(PS, None, CodecPath.SOFTWARE)
    methods.recv_setup(0)
    with pytest.raises(CodecError):
        methods.recv(packet(target, len(broken)), Source(broken), target.pages)
    assert target.outside_untouched()
    # The same context decodes the next, valid payload (libqatzip's session is set up again).
    target = Target(37, contiguous=contiguous)
    methods.recv(packet(target, len(wire)), Source(wire), target.pages)
    methods.recv_cleanup()
    assert target.data() == data


def test_zlib_errors_are_chained() -> None:
    wire = gzipext.compress(image(37), 1)
    with pytest.raises(CodecError, match="corrupt") as caught:
        receive(python_codec(), _flip(wire, len(wire) // 2), 37)
    assert isinstance(caught.value.__cause__, zlib.error)


def test_empty_payload_and_foreign_flags_are_refused(decoder: QatzipCodec) -> None:
    wire = gzipext.compress(image(1), 1)
    with pytest.raises(CodecError, match="empty"):
        receive(decoder, b"", 1)
    with pytest.raises(CodecError, match="flags 0x2"):
        receive(decoder, wire, 1, flags=Flag.ZLIB)


# ---------------------------------------------------------------- probes, loading, levels, ownership


def test_probe_here(qz: QatzipCodec) -> None:
    hardware, software = qz.probe()
    assert (hardware.path, software.path) == (CodecPath.HARDWARE, CodecPath.SOFTWARE)
    devices = describe_devices()
    if "QAT PCI functions:" not in devices:
        assert not hardware.available
        assert "QZ_NO_HW (11)" in hardware.reason and devices in hardware.reason
    assert software.available and "software backup" in software.reason
    for probe in (hardware, software):
        assert probe.library is not None and probe.library.endswith("libqatzip.so.3")
        assert Path(probe.library).exists()
        assert probe.version is not None and probe.version.startswith("1.3.1")
    assert qz.probe() == [hardware, software], "cached"


def test_hardware_path_is_refused_without_a_device(qz: QatzipCodec) -> None:
    hardware = qz.probe()[0]
    if hardware.available:
        pytest.fail("this host has a QAT device: the hardware tests of this file were written without one")
    with pytest.raises(CodecError, match="hardware path is not available"):
        qz.methods(PS, 1, CodecPath.HARDWARE)


def test_probe_without_the_library() -> None:
    hardware, software = python_codec().probe()
    assert not hardware.available and "ci/system/qatzip.sh" in hardware.reason
    assert software.available and "pure-Python" in software.reason
    assert (software.library, software.version) == ("zlib", zlib.ZLIB_RUNTIME_VERSION)


def test_a_candidate_that_does_not_load_is_named() -> None:
    codec = QatzipCodec(lambda: [Candidate("/nonexistent/libqatzip.so.3", "test")])
    hardware, software = codec.probe()
    assert "/nonexistent/libqatzip.so.3 (test)" in hardware.reason
    assert software.available and software.library == "zlib"


def test_search_order(monkeypatch: pytest.MonkeyPatch, qz: QatzipCodec) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert qz.library is not None
    assert qz.library.candidate in search_order()
    monkeypatch.setenv(ENV_VAR, "/elsewhere/libqatzip.so.3")
    assert search_order() == [Candidate("/elsewhere/libqatzip.so.3", f"${ENV_VAR}")]


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_importing_loads_no_library(qz: QatzipCodec) -> None:
    result = _python(
        """
        def mapped():
            return "libqatzip.so" in open("/proc/self/maps").read()
        import mfdcomp_qatzip
        from mfdcomp.registry import get_codec
        codec = get_codec("qatzip")
        assert type(codec).__name__ == "QatzipCodec", codec
        assert not mapped(), "loaded by import or registration"
        codec.probe()
        assert mapped(), "not loaded by the probe"
        """
    )
    assert result.returncode == 0, result.stderr


def test_library_calls_print_nothing(qz: QatzipCodec) -> None:
    # Without a device libqatzip logs and libqat prints "Cannot open /dev/vfio" on every call.
    # Two codecs (two loaded Library objects) on two threads: C stdio's stderr comes back afterwards.
    result = _python(
        """
        import ctypes, sys, threading
        from mfdcomp_qatzip import QatzipCodec
        from mfdcomp.methods import CodecPath

        def channel(index):
            codec = QatzipCodec()
            codec.probe()
            assert codec.library is not None
            methods = codec.methods(4096, 1, CodecPath.SOFTWARE)
            methods.send_setup(index)
            for _ in range(50):
                methods.send_prepare([memoryview(bytes(4096))] * 128)
            methods.send_cleanup()

        threads = [threading.Thread(target=channel, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print("python's stderr works", file=sys.stderr, flush=True)
        libc = ctypes.CDLL(None)
        stderr = ctypes.c_void_p.in_dll(libc, "stderr")
        libc.fputs.argtypes = libc.fflush.argtypes = None
        libc.fputs(b"C stdio's stderr works\\n", stderr)
        libc.fflush(stderr)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "python's stderr works\nC stdio's stderr works\n"


def test_the_environment_variable_picks_the_library(qz: QatzipCodec) -> None:
    assert qz.library is not None
    code = """
        from mfdcomp_qatzip import QatzipCodec
        hardware, software = QatzipCodec().probe()
        print(software.library, "|", software.reason)
        """
    picked = _python(code, {ENV_VAR: qz.library.path})
    assert picked.returncode == 0, picked.stderr
    assert picked.stdout.startswith(qz.library.path) and f"${ENV_VAR}" in picked.stdout
    wrong = _python(code, {ENV_VAR: "/nonexistent/libqatzip.so.3"})
    assert wrong.returncode == 0, wrong.stderr
    assert wrong.stdout.startswith("zlib") and "/nonexistent/libqatzip.so.3" in wrong.stdout


def test_levels(qz: QatzipCodec) -> None:
    data = image(4)
    assert member_header(send(qz, data, None)[0])[2] == 4, "level 1 by default"
    for level in (0, 10):
        with pytest.raises(CodecError, match="level must be 1-9"):
            qz.methods(PS, level, CodecPath.SOFTWARE)
    with pytest.raises(CodecError, match="no raw path"):
        qz.methods(PS, 1, CodecPath.RAW)


def test_library_errors_become_codec_errors(qz: QatzipCodec) -> None:
    assert qz.library is not None
    with pytest.raises(CodecError, match=r"qzSetupSessionDeflate\(level 0\) failed: QZ_PARAMS \(-1\)"):
        qz.library.session(0)
    session = qz.library.session(1)
    with pytest.raises(CodecError, match="qzCompress failed"):
        session.compress(os.urandom(65536), bytearray(100))
    assert session.compress(image(1), bytearray(8192)) > 0, "set up again after the error"
    session.close()


def test_package_versions_and_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    library = "/usr/lib/x86_64-linux-gnu/libqatzip.so.3"
    (tmp_path / "info").mkdir()
    (tmp_path / "info" / "libqatzip3:amd64.list").write_text(f"/usr/lib/x86_64-linux-gnu\n{library}\n")
    (tmp_path / "status").write_text(
        "Package: zlib1g\nVersion: 1:1.3\n\nPackage: libqatzip3\nStatus: install ok installed\n"
        "Architecture: amd64\nVersion: 1.3.1-2\nDescription: QATzip\n more text\n"
    )
    monkeypatch.setattr(locate, "DPKG_INFO", str(tmp_path / "info"))
    monkeypatch.setattr(locate, "DPKG_STATUS", str(tmp_path / "status"))
    assert locate.package_version(library) == "1.3.1-2 (libqatzip3)"
    assert locate.package_version("/usr/local/lib/libqatzip.so.3") is None
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    assert locate.describe_devices(str(sys_root), str(dev_root)) == (
        f"no PCI function bound to a QAT driver; no {dev_root}/qat_* node; no {dev_root}/vfio"
    )
    (sys_root / "bus/pci/drivers/4xxx/0000:6b:00.0").mkdir(parents=True)
    (sys_root / "bus/pci/drivers/4xxx/bind").touch()
    (dev_root / "vfio").mkdir(parents=True)
    (dev_root / "qat_adf_ctl").touch()
    assert locate.describe_devices(str(sys_root), str(dev_root)) == (
        f"QAT PCI functions: 0000:6b:00.0 (4xxx); device nodes: qat_adf_ctl; {dev_root}/vfio present"
    )


def test_a_context_belongs_to_its_channel_thread(decoder: QatzipCodec) -> None:
    methods = decoder.methods(PS, 1, CodecPath.SOFTWARE)
    pages = split(image(1))
    with pytest.raises(CodecError, match="before setup"):
        methods.send_prepare(pages)
    methods.send_setup(0)
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            methods.send_prepare(pages)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], CodecError)
    methods.send_cleanup()


# ---------------------------------------------------------------- through the engine


def _fill(ram: RamClient) -> None:
    for block in ram.blocks.values():
        data = image(len(block.memory) // PS, "zero=10,text=40,random=30,half=20", seed=9)
        block.memory[:] = data


@pytest.mark.parametrize("receiver", ["libqatzip", "python"])
@pytest.mark.parametrize("sender", ["libqatzip", "python"])
def test_engine_round_trip(sender: str, receiver: str, tmp_path: Path, qz: QatzipCodec) -> None:
    codec = get_codec("qatzip") if sender == "libqatzip" else python_codec()
    with RamClient.anonymous([("ram0", 4 << 20)]) as ram:
        _fill(ram)
        options = MigrateOptions(channels=2, level=9, rounds=2, dirty_fraction=0.2)
        outcome = run_loopback(ram, codec, options, workdir=tmp_path, find_codec=lambda name: DECODERS[receiver]())
        outcome.raise_for_errors()
        assert outcome.destination is not None and outcome.source is not None
        assert outcome.destination.digests == ram.digests()
    assert sum(c.paths[CodecPath.SOFTWARE] for c in outcome.source.channels) > 0
    assert all(c.paths[CodecPath.HARDWARE] == 0 for c in outcome.source.channels)

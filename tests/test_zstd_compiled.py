"""The zstd codec's compiled streams (mfdcomp_zstd._zstdpages, on the system's libzstd) against python-zstandard.

python-zstandard is the reference. Each implementation must decode what the
other encodes to the same pages; fed the same hostile channels (real packets
of the codec's own sender and of QEMU's captures, mutated as the codec fuzz
tests mutate them, and decompression bombs), both must end each packet alike:
the same error text or the same pages, and the same for the packet after.
QEMU links the same system libzstd, so the compiled sender re-encodes QEMU's
captured pages to QEMU's bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib
import json
import random
from collections.abc import Sequence
from types import ModuleType

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from mfdcomp_zstd import ZstdCodec
from mfdcomp_zstd.codec import FRAME_MAGIC, LIBZSTD, MAX_WINDOW, PYTHON_ZSTANDARD

from mfdcomp.errors import MfdcompError
from mfdcomp.methods import MultiFDMethods, PageViews
from mfdcomp.testing.checks import PACKAGED_VECTORS
from mfdcomp.wire import MULTIFD_PACKET_SIZE, ChannelReader, RamData, RamPacket
from tests.test_fuzz_codecs import (
    PACKETS_PER_CHANNEL,
    PAGE_SIZE,
    Channel,
    GuardedPages,
    Packet,
    Payload,
    capture_channels,
    mutate_payload,
    own_channel,
    zstd_bomb,
    zstd_huge_window,
)
from tests.test_fuzz_wire import Op, fuzz_settings, guest_ram, ops_lists

try:
    ZSTDPAGES: ModuleType | None = importlib.import_module("mfdcomp_zstd._zstdpages")
except ImportError:  # no compiler or no libzstd-dev at install: only python-zstandard runs here
    ZSTDPAGES = None

pytestmark = pytest.mark.skipif(ZSTDPAGES is None, reason="mfdcomp_zstd._zstdpages is not built here")

IMPLS = (LIBZSTD, PYTHON_ZSTANDARD)


def receiver(impl: str) -> MultiFDMethods:
    method = ZstdCodec(impl=impl).methods(PAGE_SIZE, None)
    method.recv_setup(0)
    return method


def sender(impl: str, level: int = 1) -> MultiFDMethods:
    method = ZstdCodec(impl=impl).methods(PAGE_SIZE, level)
    method.send_setup(0)
    return method


def encode(method: MultiFDMethods, pages: bytes) -> bytes:
    count = len(pages) // PAGE_SIZE
    sent = method.send_prepare(PageViews(memoryview(pages), [i * PAGE_SIZE for i in range(count)], PAGE_SIZE))
    return b"".join(bytes(b) for b in sent.buffers)


def decode(method: MultiFDMethods, data: bytes, pages: int, scattered: bool, number: int = 0) -> tuple[str, bytes]:
    """One packet into guarded pages: ("ok", the pages) or (the error's text, b""); guards checked."""
    target = GuardedPages(pages, scattered)
    header = RamPacket.data(
        flags=0x4, ramblock="ram0", normal=target.offsets, next_packet_size=len(data), packet_num=number
    )
    try:
        method.recv(header, Payload(data, len(data)), target.views)
    except MfdcompError as exc:
        assert target.guards_intact(), f"{exc}: bytes written outside the packet's pages"
        return f"{type(exc).__name__}: {exc}", b""
    assert target.guards_intact(), "bytes written outside the packet's pages"
    return "ok", target.content()


def page_runs(kind: str, seed: int) -> list[bytes]:
    """A channel's packets of one kind of data: guest RAM, random, zero, repetitive text, one page."""
    rng = random.Random(seed)
    ram = guest_ram()
    runs = []
    for count in (128, 37, 1, 64, 128, 3):
        if kind == "ram":
            start = rng.randrange(0, len(ram) // PAGE_SIZE - count) * PAGE_SIZE
            runs.append(ram[start : start + count * PAGE_SIZE])
        elif kind == "random":
            runs.append(rng.randbytes(count * PAGE_SIZE))
        elif kind == "zero":
            runs.append(bytes(count * PAGE_SIZE))
        else:
            line = f"line {rng.random()} of a log that repeats itself\n".encode()
            runs.append((line * (count * PAGE_SIZE // len(line) + 1))[: count * PAGE_SIZE])
    return runs


@pytest.mark.parametrize("kind", ["ram", "random", "zero", "text"])
@pytest.mark.parametrize("encoder", IMPLS)
@pytest.mark.parametrize("level", [1, 3, 19])
def test_each_implementation_decodes_what_either_encodes(kind: str, encoder: str, level: int) -> None:
    runs = page_runs(kind, seed=level)
    source = sender(encoder, level)
    payloads = [encode(source, pages) for pages in runs]
    source.send_cleanup()
    for decoder in IMPLS:
        for scattered in (False, True):
            method = receiver(decoder)
            for number, (pages, payload) in enumerate(zip(runs, payloads, strict=True)):
                assert decode(method, payload, len(pages) // PAGE_SIZE, scattered, number) == ("ok", pages), (
                    f"{encoder} level {level} -> {decoder}, packet {number}"
                )


def packaged_channels() -> list[Channel]:
    """The zstd channels of the QEMU captures packaged with mfdcomp (their first packets)."""
    found = []
    for manifest_path in sorted((PACKAGED_VECTORS / "qemu").glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        if manifest["codec"] != "zstd":
            continue
        for entry in manifest["multifd_channels"].values():
            reader = ChannelReader()
            reader.feed(zstandard.ZstdDecompressor().decompress((manifest_path.parent / entry["file"]).read_bytes()))
            packets = [
                Packet(event.packet, event.payload)
                for event in reader
                if isinstance(event, RamData) and event.packet.normal_pages
            ]
            found.append(Channel(f"packaged {manifest_path.parent.name}/{entry['file']}", "zstd", tuple(packets)))
    return found


def test_the_compiled_sender_writes_qemus_bytes_for_qemus_pages() -> None:
    """QEMU 10 links the system's libzstd: its captured payloads, decoded and re-encoded, come out equal."""
    assert ZSTDPAGES is not None
    channels = packaged_channels() + capture_channels("zstd")
    assert channels, f"no zstd capture found (packaged: {PACKAGED_VECTORS})"
    for channel in channels:
        method = receiver(LIBZSTD)
        source = sender(LIBZSTD, level=1)  # the captures' level (vectors/README.md)
        for number, packet in enumerate(channel.packets):
            verdict, pages = decode(method, packet.payload, packet.pages, False, number)
            assert verdict == "ok", f"{channel.name} packet {number}: {verdict}"
            assert encode(source, pages) == packet.payload, (
                f"{channel.name} packet {number}: libzstd {ZSTDPAGES.version()} re-encodes QEMU's pages differently"
            )


class _Buffer(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


@functools.cache
def system_libzstd() -> ctypes.CDLL:
    """The system's libzstd, the one the compiled streams link, with the prototypes the reference uses."""
    lib = ctypes.CDLL(ctypes.util.find_library("zstd") or "libzstd.so.1")
    lib.ZSTD_createDCtx.restype = ctypes.c_void_p
    lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
    lib.ZSTD_DCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.ZSTD_DCtx_setParameter.restype = ctypes.c_size_t
    lib.ZSTD_decompressStream.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Buffer), ctypes.POINTER(_Buffer)]
    lib.ZSTD_decompressStream.restype = ctypes.c_size_t
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
    lib.ZSTD_getErrorName.restype = ctypes.c_char_p
    return lib


class SystemReference:
    """The reference's decoding loop (python-zstandard's stream writer, codec.py's sink) on the system's libzstd.

    python-zstandard carries its own libzstd, of another version: on a
    corrupted payload that both versions accept they may decode different
    bytes. Driven through ctypes on the very library the compiled streams
    link, the reference's loop tells the compiled glue's mistakes from the
    libraries' differences.
    """

    def __init__(self) -> None:
        self.lib = system_libzstd()
        self.dctx = self.lib.ZSTD_createDCtx()
        self.lib.ZSTD_DCtx_setParameter(self.dctx, 100, MAX_WINDOW.bit_length() - 1)  # ZSTD_d_windowLogMax
        self.output = ctypes.create_string_buffer(MULTIFD_PACKET_SIZE + 1)
        self.broken = False

    def close(self) -> None:
        self.lib.ZSTD_freeDCtx(self.dctx)

    def decode(self, data: bytes, pages: int, scattered: bool, number: int) -> tuple[str, bytes]:
        """What ZstdMethods.recv makes of the packet, message for message."""
        name = f"zstd payload of packet {number} (pages: {pages} × {PAGE_SIZE} bytes)"
        if self.broken:
            return "CodecError: the zstd stream of channel 0 is closed (cleaned up, or an earlier packet failed)", b""
        self.broken = True
        if number and data[:4] == FRAME_MAGIC:
            return f"CodecError: {name} starts a new zstd frame, but QEMU keeps one open frame per channel", b""
        limit = pages * PAGE_SIZE
        source = ctypes.create_string_buffer(data, len(data))
        inp = _Buffer(ctypes.cast(source, ctypes.c_void_p), len(data), 0)
        out = _Buffer(ctypes.cast(self.output, ctypes.c_void_p), len(self.output), 0)
        decoded = bytearray()
        while inp.pos < inp.size:
            rc = self.lib.ZSTD_decompressStream(self.dctx, ctypes.byref(out), ctypes.byref(inp))
            if self.lib.ZSTD_isError(rc):
                error = self.lib.ZSTD_getErrorName(rc).decode()
                return f"CodecError: {name} is corrupt or unsupported: zstd decompress error: {error}", b""
            decoded += self.output.raw[: out.pos]
            out.pos = 0
            if len(decoded) > limit:
                return f"CodecError: {name} decodes to more than {limit} bytes", b""
        if len(decoded) != limit:
            return f"CodecError: {name} decodes to {len(decoded)} bytes, short of {limit}", b""
        self.broken = False
        return "ok", bytes(decoded)


def differential(channel: Channel, index: int, ops: Sequence[Op], scattered: bool) -> None:
    """The channel's packets before ``index``, the mutated one and the next, through every decoder.

    The compiled streams must end each packet exactly as the reference's loop
    on the same libzstd does; python-zstandard, on its own libzstd, must agree
    with them wherever the two libraries do.
    """
    outcomes: dict[str, list[tuple[str, bytes]]] = {}
    others = [p.payload for p in channel.packets]
    inputs = []
    for number, packet in enumerate(channel.packets[: index + 2]):
        data, pages = (packet.payload, packet.pages)
        if number == index:
            data, pages = mutate_payload(packet.payload, packet.pages, ops, others)
        inputs.append((data, pages))
    for impl in IMPLS:
        method = receiver(impl)
        outcomes[impl] = [decode(method, d, p, scattered, n) for n, (d, p) in enumerate(inputs)]
        method.recv_cleanup()
    system = SystemReference()
    try:
        outcomes["system"] = [system.decode(d, p, scattered, n) for n, (d, p) in enumerate(inputs)]
    finally:
        system.close()
    what = f"{channel.name} packet {index} {list(ops)}"
    assert outcomes[LIBZSTD] == outcomes["system"], f"{what}: the compiled glue differs from the reference loop"
    for number, (mine, theirs) in enumerate(zip(outcomes[LIBZSTD], outcomes[PYTHON_ZSTANDARD], strict=True)):
        if mine != theirs:
            # From the mutated packet on, the two libraries may part: seen are other error names for one
            # corruption, and zeroed sequence bytes that both accept but decode to different pages.
            assert number >= index, f"{what}: packet {number}, before the mutation: {mine[0]} / {theirs[0]}"


def channels() -> list[Channel]:
    return [own_channel("zstd", ZstdCodec(impl=impl), seed) for impl in IMPLS for seed in (0, 1)] + capture_channels(
        "zstd"
    )


@fuzz_settings(200)
@given(
    which=st.integers(0, 100),
    index=st.integers(0, PACKETS_PER_CHANNEL - 1),
    ops=ops_lists(("flip", "byte", "u32", "insert", "delete", "truncate", "extend", "swap", "zero", "pages"), 3),
    scattered=st.booleans(),
)
def test_mutated_channels_end_alike_in_both(which: int, index: int, ops: list[Op], scattered: bool) -> None:
    found = channels()
    differential(found[which % len(found)], index, ops, scattered)


@pytest.mark.parametrize("make", [zstd_bomb, zstd_huge_window])
@pytest.mark.parametrize("pages", [1, 128])
def test_bombs_and_huge_windows_are_refused_alike(make: object, pages: int) -> None:
    assert callable(make)
    data = make()
    verdicts = {impl: decode(receiver(impl), data, pages, False) for impl in IMPLS}
    assert verdicts[LIBZSTD] == verdicts[PYTHON_ZSTANDARD]
    assert verdicts[LIBZSTD][0] != "ok"


@pytest.mark.parametrize("cut", ["exact", "one byte more", "one byte less", "a block more"])
def test_payloads_decoding_near_the_pages_size_end_alike(cut: str) -> None:
    """At the edge the reference judges by its output buffer (pages + scratch): short, exact, too much."""
    pages = guest_ram()[: 128 * PAGE_SIZE]
    extra = {"exact": b"", "one byte more": b"x", "one byte less": b"", "a block more": bytes(200_000)}[cut]
    body = pages[:-1] if cut == "one byte less" else pages + extra
    # One stream writes the whole body in one packet; the receiver is told it holds 128 pages.
    source = ZSTDPAGES.CStream(1) if ZSTDPAGES else None
    assert source is not None
    data = bytes(source.compress([body]))
    verdicts = {impl: decode(receiver(impl), data, 128, False) for impl in IMPLS}
    assert verdicts[LIBZSTD] == verdicts[PYTHON_ZSTANDARD]
    assert (verdicts[LIBZSTD][0] == "ok") == (cut == "exact")


def test_a_held_payload_is_never_overwritten() -> None:
    """compress() returns a view of its buffer; a later packet writes elsewhere while that view lives."""
    assert ZSTDPAGES is not None
    stream = ZSTDPAGES.CStream(1)
    first = stream.compress([random.Random(1).randbytes(1 << 16)])
    kept = bytes(first)
    second = stream.compress([random.Random(2).randbytes(1 << 16)])
    assert bytes(first) == kept
    assert first.readonly and second.readonly
    assert first.obj is not second.obj
    owner = second.obj
    del first, second
    third = stream.compress([bytes(1 << 16)])
    assert third.obj is owner, "the buffer is reused once no view of it is left"


def test_spans_must_leave_room_for_the_scratch() -> None:
    assert ZSTDPAGES is not None
    stream = ZSTDPAGES.DStream(19, MULTIFD_PACKET_SIZE + 1)
    with pytest.raises(ValueError, match="not less than the output size"):
        stream.decompress_into(b"", [bytearray(MULTIFD_PACKET_SIZE + 1)])
    with pytest.raises(BufferError):
        stream.decompress_into(b"", [b"read-only"])

"""The compiled receive loop (mfdcomp/_recvloop.c, mfdcomp.engine.fastrecv) against the Python loop.

Each input (a real QEMU channel or mfdcomp's own, mutated as test_fuzz_wire mutates them) goes through a
real destination channel thread over a real socket twice: with the compiled loop and with the Python loop
alone. Both must end the same way (no error, or the same error type and message) and leave the same target
bytes, received flags, page digests and counters. Codecs: nocomp, and zstd on its compiled streams, whose
packet_decompressor the compiled loop calls where the Python loop calls recv. Transports: a plain socket,
which the compiled loop reads itself; TLS, whose session it reads itself through OpenSSL (mfdcomp/_tlsdirect.c);
and TLS where OpenSSL is not bound, read through the stream's read_some (the bytes of a packet it leaves
handed back with unread): the same inputs, and one whose TLS breaks mid-stream.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mfdcomp_zstd import ZstdCodec
from mfdcomp_zstd.codec import LIBZSTD
from test_fuzz_wire import (
    FUZZ,
    TIME_BOUND,
    FreeBarrier,
    GuardedBlock,
    Op,
    Seed,
    _without_init,
    all_seeds,
    fuzz_settings,
    mutate,
    ops_strategy,
)
from tls_ends import tls_ends

from mfdcomp import speedups
from mfdcomp.clients.ram import RamClient
from mfdcomp.engine.destination import RecvChannel, TargetMemory
from mfdcomp.engine.state import RunState
from mfdcomp.errors import ChannelError, NoSpaceError
from mfdcomp.methods import Codec, PageViews
from mfdcomp.methods.nocomp import Nocomp
from mfdcomp.transport.base import Stream
from mfdcomp.transport.sockets import SocketStream
from mfdcomp.transport.tls import TlsStream
from mfdcomp.wire import ReceiverLimits, ram_packet_size

pytestmark = pytest.mark.skipif(speedups.compiled() is None, reason="mfdcomp._speedups is not built here")

COMPILED_ZSTD = ZstdCodec(impl=LIBZSTD).implementation is not None
CODECS = ["none", pytest.param("zstd", marks=pytest.mark.skipif(not COMPILED_ZSTD, reason="no compiled zstd here"))]
TRANSPORTS = ["socket", "tls", "tls-read-some"]
TLS_TRANSPORTS = ["tls", "tls-read-some"]


def codec_of(name: str) -> Codec:
    """nocomp, or zstd on its compiled streams (the only zstd with a compiled decompressor)."""
    return Nocomp() if name == "none" else ZstdCodec(impl=LIBZSTD)


def seeds_of(codec: str) -> list[Seed]:
    seeds = [s for s in all_seeds() if s.codec == codec]
    assert any(not s.name.startswith("mfdcomp/") for s in seeds), f"no QEMU {codec} capture"
    return seeds


def nocomp_seeds() -> list[Seed]:
    return seeds_of("none")


@dataclass
class Outcome:
    error: tuple[str, str] | None
    blocks: dict[str, bytes]
    received: dict[str, bytes]
    digests: dict[str, bytes]
    stats: dict[str, Any]
    syncs: int
    guards: bool


class CountingCompiled:
    """The compiled module, counting the packets its receive loop took whole."""

    def __init__(self) -> None:
        module = speedups.compiled()
        assert module is not None
        self._module = module
        self.packets = 0

        self.direct_calls = 0  # of them, those that read a TLS session themselves

    def recv_packets(self, *args: Any) -> tuple[int, ...]:
        result: tuple[int, ...] = self._module.recv_packets(*args)
        self.packets += result[3]
        self.direct_calls += len(args) > 12 and args[12] is not None
        return result


def _feed(data: bytes) -> tuple[Stream, threading.Thread]:
    """A real socket whose peer writes ``data`` and ends the stream."""
    ours, theirs = socket.socketpair()

    def write() -> None:
        try:
            theirs.sendall(data)
        except OSError:
            pass  # the reader stopped at an error: the rest is not wanted
        finally:
            theirs.close()

    writer = threading.Thread(target=write)
    writer.start()
    return SocketStream(ours, "fuzz"), writer


def _feed_tls(data: bytes, garbage_at: int | None = None) -> tuple[Stream, threading.Thread]:
    """A TLS stream whose peer sends ``data`` and ends with close_notify; with ``garbage_at``, it sends that
    much of ``data``, then bytes that are no TLS record, on the socket under the session."""
    ours, theirs = socket.socketpair()
    server, client = tls_ends()

    def write() -> None:
        peer: TlsStream | None = None
        try:
            peer = client.wrap(SocketStream(theirs, "peer"))
            if garbage_at is None:
                peer.send_all([data])
            else:
                peer.send_all([data[:garbage_at]])
                socket.socket.sendall(peer.conn.sock, b"\x17\x03\x03\x00\x20" + bytes(range(32)))
        except (OSError, ChannelError):
            pass  # the reader stopped at an error: the rest is not wanted
        finally:
            if peer is not None:
                peer.close()
            theirs.close()

    writer = threading.Thread(target=write)
    writer.start()
    stream = server.wrap(SocketStream(ours, "fuzz"))
    stream.accept_handshake(time.monotonic() + TIME_BOUND)
    return stream, writer


def run_channel(
    data: bytes,
    limits: ReceiverLimits,
    memory: TargetMemory,
    *,
    fast: bool,
    codec: str = "none",
    transport: str = "socket",
    garbage_at: int | None = None,
) -> RecvChannel:
    """A real destination channel thread reads ``data`` from a real socket into ``memory``, to its end."""
    stream, writer = _feed(data) if transport == "socket" else _feed_tls(data, garbage_at)
    with pytest.MonkeyPatch.context() as patch:
        if transport == "tls-read-some":  # as where the OpenSSL of Python's ssl can't be bound
            patch.setattr(speedups, "bind_tls", lambda: "not bound in this test")
        return _run(stream, writer, limits, memory, fast, codec)


def _run(
    stream: Stream, writer: threading.Thread, limits: ReceiverLimits, memory: TargetMemory, fast: bool, codec: str
) -> RecvChannel:
    channel = RecvChannel(
        0,
        stream,
        codec_of(codec).methods(limits.page_size, None),
        limits=limits,
        memory=memory,
        barrier=FreeBarrier(RunState(), 1),
        fast=fast,
    )
    channel.start()
    channel.thread.join(TIME_BOUND * 4)
    assert not channel.thread.is_alive(), "the channel thread is still running"
    stream.close()
    writer.join()
    return channel


def receive(
    data: bytes,
    limits: ReceiverLimits,
    *,
    fast: bool,
    codec: str = "none",
    transport: str = "socket",
    garbage_at: int | None = None,
) -> Outcome:
    assert limits.ramblocks is not None
    blocks = {name: GuardedBlock.make(name, size) for name, size in limits.ramblocks.items()}
    memory = TargetMemory(blocks, limits.page_size, hash_pages=True)
    channel = run_channel(data, limits, memory, fast=fast, codec=codec, transport=transport, garbage_at=garbage_at)
    error = channel.barrier.state.error
    assert isinstance(channel.barrier, FreeBarrier)
    barrier = channel.barrier
    assert memory.page_digests is not None
    return Outcome(
        error=None if error is None else (type(error).__name__, str(error)),
        blocks={name: bytes(block.memory) for name, block in blocks.items()},
        received={name: flags.tobytes() for name, flags in memory.received.items()},
        digests={name: table.tobytes() for name, table in memory.page_digests.tables.items()},
        stats=channel.stats.as_dict(),
        syncs=barrier.arrived,
        guards=all(block.guards_intact() for block in blocks.values()),
    )


def assert_same(
    data: bytes,
    limits: ReceiverLimits,
    what: str,
    codec: str = "none",
    transport: str = "socket",
    garbage_at: int | None = None,
) -> Outcome:
    compiled = receive(data, limits, fast=True, codec=codec, transport=transport, garbage_at=garbage_at)
    pure = receive(data, limits, fast=False, codec=codec, transport=transport, garbage_at=garbage_at)
    assert compiled.guards and pure.guards, f"{what}: bytes written outside the target"
    assert compiled.error == pure.error, what
    assert compiled.stats == pure.stats, what
    assert compiled.syncs == pure.syncs, what
    assert compiled.received == pure.received, what
    assert compiled.digests == pure.digests, what
    assert compiled.blocks == pure.blocks, what
    return compiled


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingCompiled]:
    proxy = CountingCompiled()
    monkeypatch.setattr(speedups, "compiled", lambda: proxy)  # the module fastrecv asks
    yield proxy


def _seed_cases() -> list[Any]:
    cases: list[Any] = [pytest.param("none", seed, id=seed.name) for seed in nocomp_seeds()]
    if COMPILED_ZSTD:
        cases += [pytest.param("zstd", seed, id=seed.name) for seed in seeds_of("zstd")]
    return cases


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("codec", "seed"), _seed_cases())
def test_a_valid_channel_is_taken_whole_by_the_compiled_loop(
    codec: str, seed: Seed, transport: str, counting: CountingCompiled
) -> None:
    outcome = assert_same(_without_init(seed.data), seed.limits, seed.name, codec, transport)
    assert outcome.error is None
    assert outcome.stats["packets"] == len(seed.bounds) - 2  # records less the init packet
    assert counting.packets == outcome.stats["packets"], "packets left to the Python loop"
    assert outcome.stats["normal_pages"] > 0


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("codec", CODECS)
@FUZZ
@given(index=st.integers(0, 1000), ops=ops_strategy)
def test_mutated_channels_end_the_same_in_both_loops(codec: str, transport: str, index: int, ops: list[Op]) -> None:
    seeds = seeds_of(codec)
    seed = seeds[index % len(seeds)]
    assert_same(_without_init(mutate(seed, ops, seeds)), seed.limits, f"{seed.name} {ops}", codec, transport)


# --- packets built field by field, each field at and around its limits ----------------------------------

PS = 4096
CAPACITY = 128
BLOCKS = {"pc.ram": 24 * PS, "small": PS // 2, "vga.vram": 4 * PS}
LIMITS = ReceiverLimits(page_size=PS, channels=1, ramblocks=BLOCKS, codec_flag=0)
RAM_FIXED = struct.Struct(">IIIIIIQII24x256s")


def _valid_offsets(block: str) -> st.SearchStrategy[int]:
    return st.integers(0, max(0, BLOCKS[block] // PS - 1)).map(lambda k: k * PS)


def _bad_offset(block: str) -> st.SearchStrategy[int]:
    size = BLOCKS[block]
    return st.sampled_from([size, size + PS, size - 1, size - PS + 1, PS // 2, 1, 2**63, 2**64 - PS])


ODD_NAMES = [b"small", b"", b"pc.ra", b"pc.ram\0junk", b"\xff\xfe", b"x" * 255, b"vga.vram"]
DEFECTS = (
    "magic",
    "version",
    "flags",
    "pages_alloc",
    "room",
    "normal",
    "zero",
    "name",
    "unterminated",
    "offset",
    "size",
)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """A valid nocomp packet (or SYNC) of LIMITS' blocks, then up to two defects, each at or near a limit."""
    defects = draw(st.sampled_from([(), (), *((d,) for d in DEFECTS)]) | st.lists(st.sampled_from(DEFECTS), max_size=2))
    block = draw(st.sampled_from(["pc.ram", "pc.ram", "vga.vram"]))
    magic, version = 0x11223344, 1
    flags = draw(st.sampled_from([0, 0, 1]))
    pages_alloc = CAPACITY
    normal = draw(st.sampled_from([0, 1, 2, CAPACITY - 1, CAPACITY]) | st.integers(0, CAPACITY))
    zero = draw(st.sampled_from([0, CAPACITY - normal]) | st.integers(0, CAPACITY - normal))
    name = block.encode().ljust(256, b"\0")
    offsets = draw(st.lists(_valid_offsets(block), min_size=normal + zero, max_size=normal + zero))
    next_size = normal * PS
    for defect in defects:
        if defect == "magic":
            magic = draw(st.sampled_from([0x11223345, 0, 0x44332211]))
        elif defect == "version":
            version = draw(st.sampled_from([0, 2, 2**32 - 1]))
        elif defect == "flags":
            flags = draw(st.sampled_from([2, 3, 0x40, 0x41, 0x80, 0x3E, 0x3F, 0x100, 2**31]))
        elif defect == "pages_alloc":
            pages_alloc = draw(st.sampled_from([CAPACITY + 1, CAPACITY + 5, 2**32 - 1]))
        elif defect == "room":  # one page more than pages_alloc holds, normal or zero
            if normal + zero == 0:
                zero = 1
                offsets.append(0)
            pages_alloc = normal + zero - 1
        elif defect == "normal":
            normal = draw(st.sampled_from([CAPACITY + 1, 2**32 - 1, pages_alloc - zero + 1]))
        elif defect == "zero":
            zero = draw(st.sampled_from([CAPACITY + 1, 2**32 - 1, pages_alloc - normal + 1]))
        elif defect == "size":
            next_size = draw(st.sampled_from([0, 1, 2**32 - 1]))
        elif defect == "name":
            name = draw(st.sampled_from(ODD_NAMES)).ljust(256, b"\0")
        elif defect == "unterminated":
            name = name[:255] + b"x"
        elif offsets:
            offsets[draw(st.integers(0, len(offsets) - 1))] = draw(_bad_offset(block))
    slots = (offsets + [0] * CAPACITY)[:CAPACITY]
    u32 = 2**32  # a defect may push a count past 32 bits: it travels cut to 32, as any sender's would
    fields = (magic, version, flags, pages_alloc % u32, normal % u32, next_size, draw(st.integers(0, 2**64 - 1)),
              zero % u32, draw(st.sampled_from([0, 7])), name)  # fmt: skip
    fixed = RAM_FIXED.pack(*fields)
    payload = bytes([draw(st.integers(0, 255))]) * (min(normal, CAPACITY) * PS)
    return fixed + struct.pack(f">{CAPACITY}Q", *slots) + payload


@pytest.mark.parametrize("transport", TRANSPORTS)
@fuzz_settings(5 * int(os.environ.get("MFDCOMP_FUZZ_EXAMPLES", "100")))  # cheap: ~20 ms an input
@given(stream=st.lists(packets(), min_size=1, max_size=4), cut=st.integers(0, 2**20), whole=st.booleans())
def test_packets_with_fields_at_their_limits_end_the_same_in_both_loops(
    transport: str, stream: list[bytes], cut: int, whole: bool
) -> None:
    data = b"".join(stream)
    if not whole:
        data = data[: cut % (len(data) + 1)]
    assert_same(data, LIMITS, f"{len(stream)} packets, {len(data)} bytes", transport=transport)


def build(
    *,
    magic: int = 0x11223344,
    version: int = 1,
    flags: int = 0,
    pages_alloc: int = CAPACITY,
    normal: int = 3,
    zero: int = 2,
    name: bytes = b"pc.ram",
    offsets: tuple[int, ...] = (0, 5 * PS, 6 * PS, PS, 23 * PS),
    terminated: bool = True,
) -> bytes:
    """One RAM packet, field by field (a nocomp payload of its normal pages follows)."""
    field = name.ljust(256, b"\0")[:256]
    if not terminated:
        field = field[:255] + b"x"
    slots = (list(offsets) + [0] * CAPACITY)[:CAPACITY]
    fixed = RAM_FIXED.pack(magic, version, flags, pages_alloc, normal, normal * PS % 2**32, 9, zero, 0, field)
    return fixed + struct.pack(f">{CAPACITY}Q", *slots) + b"\x5a" * (min(normal, CAPACITY) * PS)


SIZE = BLOCKS["pc.ram"]
ONE_DEFECT = {
    "valid": {},
    "sync": {"flags": 1},
    "sync without pages": {"flags": 1, "normal": 0, "zero": 0, "name": b""},
    "sync named": {"flags": 1, "normal": 0, "zero": 0, "name": b"vga.vram"},
    "sync with an unknown name": {"flags": 1, "normal": 0, "zero": 0, "name": b"nope"},
    "sync unterminated": {"flags": 1, "normal": 0, "zero": 0, "name": b"", "terminated": False},
    "magic": {"magic": 0x11223345},
    "version": {"version": 2},
    "zlib flag": {"flags": 2},
    "device state": {"flags": 0x40},
    "unknown flag": {"flags": 0x80},
    "pages_alloc past capacity": {"pages_alloc": CAPACITY + 1},
    "normal past pages_alloc": {"pages_alloc": 2, "zero": 0},
    "zero past room": {"pages_alloc": 4},
    "counts at pages_alloc": {"pages_alloc": 5},
    "normal huge": {"normal": 2**32 - 1},
    "zero huge": {"zero": 2**32 - 1},
    "unknown block": {"name": b"pc.ra"},
    "block smaller than a page": {"name": b"small"},
    "unterminated": {"terminated": False},
    "not utf-8": {"name": b"\xff\xfe"},
    "offset at the end": {"offsets": (0, SIZE, 6 * PS, PS, 23 * PS)},
    "offset last page": {"offsets": (0, SIZE - PS, 6 * PS, PS, 23 * PS)},
    "offset misaligned": {"offsets": (0, 5 * PS, 6 * PS + 1, PS, 23 * PS)},
    "zero offset at the end": {"offsets": (0, 5 * PS, 6 * PS, PS, SIZE)},
    "zero offset misaligned": {"offsets": (0, 5 * PS, 6 * PS, PS // 2, 23 * PS)},
    "offset huge": {"offsets": (2**64 - PS, 5 * PS, 6 * PS, PS, 23 * PS)},
    "a page twice": {"offsets": (PS, PS, 6 * PS, PS, PS)},
}


@pytest.mark.parametrize("defect", ONE_DEFECT, ids=str)
def test_each_field_at_its_limit_ends_the_same_in_both_loops(defect: str) -> None:
    """One defect in a packet after a valid one (that writes the pages a zero page may clear)."""
    first = build(offsets=(PS, 23 * PS, 2 * PS, 3 * PS, 4 * PS))
    outcome = assert_same(first + build(**ONE_DEFECT[defect]), LIMITS, defect)  # type: ignore[arg-type]
    assert outcome.stats["packets"] >= 1


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("cut", [1, 11, 12, 13, 700, 1343, 1344, 1345, 5000])
def test_a_stream_cut_inside_a_packet_ends_the_same(cut: int, transport: str) -> None:
    seed = next(s for s in nocomp_seeds() if s.name.startswith("mfdcomp/"))
    data = _without_init(seed.data)
    start = seed.bounds[2] - seed.bounds[1]  # the second packet
    outcome = assert_same(data[: start + cut], seed.limits, f"cut at {cut}", transport=transport)
    assert outcome.error is not None and outcome.error[0] == "TruncatedError"


@pytest.mark.parametrize("transport", TLS_TRANSPORTS)
@pytest.mark.parametrize("where", ["start", "first-bytes", "rest-of-header", "payload", "last-byte"])
def test_tls_broken_inside_a_packet_ends_the_same(where: str, transport: str, counting: CountingCompiled) -> None:
    """OpenSSL fails a read of the compiled loop (its own, or the reader's): the same error and counts as the
    Python loop's."""
    seed = next(s for s in nocomp_seeds() if s.name.startswith("mfdcomp/"))
    data = _without_init(seed.data)
    start = seed.bounds[2] - seed.bounds[1]  # the second packet
    length = seed.bounds[3] - seed.bounds[2]
    header = ram_packet_size(seed.limits.page_size)
    assert length > header + 1, "the second packet carries pages"
    cut = {"start": 0, "first-bytes": 5, "rest-of-header": 100, "payload": header + 1, "last-byte": length - 1}[where]
    outcome = assert_same(data, seed.limits, f"garbage at {cut}", transport=transport, garbage_at=start + cut)
    assert outcome.error is not None and outcome.error[0] == "TlsError", outcome.error
    assert "decryption failed or bad record mac" in outcome.error[1], outcome.error
    assert bool(counting.direct_calls) == (transport == "tls"), "the session read by the loop itself, or not"
    # The second packet counts once its header is in, as the Python loop counts it before its payload.
    assert outcome.stats["packets"] == (1 if cut < header else 2)
    assert counting.packets == outcome.stats["packets"], "the compiled loop took the packets"


def _target_path(folder: Path, fast: bool, name: str) -> Path:
    return folder / f"{fast}-{name.replace('/', '_')}.img"


def test_a_file_target_gets_the_same_pages_and_holes(tmp_path: Path) -> None:
    seed = next(s for s in nocomp_seeds() if not s.name.startswith("mfdcomp/"))
    assert seed.limits.ramblocks is not None
    data = _without_init(seed.data)
    results = []
    for fast in (True, False):
        client = RamClient.create_targets(
            list(seed.limits.ramblocks.items()),
            functools.partial(_target_path, tmp_path, fast),
            page_size=seed.limits.page_size,
            staged=True,
            reserve=False,
        )
        memory = TargetMemory(client.blocks, seed.limits.page_size, hash_pages=True)
        assert run_channel(data, seed.limits, memory, fast=fast).barrier.state.error is None
        files = sorted(tmp_path.glob(f"{fast}-*.img"))
        allocated = [os.stat(f).st_blocks for f in files]
        assert memory.page_digests is not None
        results.append(([f.read_bytes() for f in files], allocated, memory.page_digests.hexdigests()))
        client.close()
    assert results[0] == results[1]


def test_a_write_that_fails_is_the_stores_typed_error() -> None:
    """/dev/full takes no byte: the compiled loop raises what TargetMemory.store raises."""
    seed = next(s for s in nocomp_seeds() if s.name.startswith("mfdcomp/"))
    assert seed.limits.ramblocks is not None
    errors = []
    for fast in (True, False):
        fd = os.open("/dev/full", os.O_WRONLY)
        try:
            blocks = {}
            for name, size in seed.limits.ramblocks.items():
                block = GuardedBlock.make(name, size)
                blocks[name] = FdBlock(block.name, block.size, block.memory, fd)
            memory = TargetMemory(blocks, seed.limits.page_size)
            error = run_channel(_without_init(seed.data), seed.limits, memory, fast=fast).barrier.state.error
        finally:
            os.close(fd)
        assert isinstance(error, NoSpaceError)
        errors.append(str(error))
    assert errors[0] == errors[1]


@dataclass
class FdBlock:
    name: str
    size: int
    memory: memoryview
    fd: int | None


def test_recv_packets_refuses_short_buffers() -> None:
    compiled = speedups.compiled()
    assert compiled is not None
    ours, theirs = socket.socketpair()
    with ours, theirs:
        block = (b"pc.ram", 8192, -1, memoryview(bytearray(8192)), np.zeros(2, np.bool_), None)
        args: list[Any] = [ours.fileno(), bytearray(1344), bytearray(128 * 4096), [block], 4096, 128, 8, bytes(16)]
        for index, bad in [(1, bytearray(1343)), (2, bytearray(4096)), (7, bytes(15)), (4, 0), (6, 0)]:
            wrong = list(args)
            wrong[index] = bad
            with pytest.raises(ValueError):
                compiled.recv_packets(*wrong)
        short = (b"pc.ram", 8192, -1, memoryview(bytearray(4096)), np.zeros(2, np.bool_), None)
        with pytest.raises(ValueError, match="too short"):
            compiled.recv_packets(*args[:3], [short], *args[4:])
        with pytest.raises(ValueError, match="a socket"):
            compiled.recv_packets(*args, 0, None, None, lambda view: 0)  # a socket and a reader
        with pytest.raises(ValueError, match="a socket"):
            compiled.recv_packets(-1, *args[1:], 0, None, None, None)  # neither
        with pytest.raises(ValueError, match="a socket"):
            compiled.recv_packets(-1, *args[1:], 0, None, None, lambda view: 0, (None, None, 0, 0))  # both


def test_a_reader_that_misbehaves_ends_the_loop_with_its_error() -> None:
    """The reader's exception comes back as the problem (status 6), and so does a count beyond the view."""
    compiled = speedups.compiled()
    assert compiled is not None
    block = (b"pc.ram", 8192, -1, memoryview(bytearray(8192)), np.zeros(2, np.bool_), None)
    args: list[Any] = [-1, bytearray(1344), bytearray(128 * 4096), [block], 4096, 128, 8, bytes(16), 0, None, None]
    failure = RuntimeError("the stream broke")

    def broken(view: memoryview) -> int:
        raise failure

    status, *_, problem = compiled.recv_packets(*args, broken)
    assert (status, problem) == (6, failure)
    status, *_, problem = compiled.recv_packets(*args, lambda view: view.nbytes + 1)
    assert status == 6 and isinstance(problem, ValueError)
    assert str(problem) == "the reader gave 13 bytes for 12"
    status, back, *_ = compiled.recv_packets(*args, lambda view: 0)  # the end of the stream: the Python loop's
    assert (status, back) == (2, 0)


# --- zstd packets built one by one: every way recv judges a payload -------------------------------------

ZSTD = 0x4
ZSTD_LIMITS = ReceiverLimits(page_size=PS, channels=1, ramblocks=BLOCKS, codec_flag=ZSTD)


def zstd_packet(
    payload: bytes, normal: int, *, zero: int = 0, flags: int = ZSTD, size: int | None = None, number: int = 0
) -> bytes:
    """A zstd RAM packet of pc.ram: ``normal`` pages from page 0 then ``zero`` zero pages, then ``payload``."""
    offsets = [k * PS for k in range(normal + zero)]
    slots = (offsets + [0] * CAPACITY)[:CAPACITY]
    announced = len(payload) if size is None else size
    fixed = RAM_FIXED.pack(
        0x11223344, 1, flags, CAPACITY, normal, announced, number, zero, 0, b"pc.ram".ljust(256, b"\0")
    )
    return fixed + struct.pack(f">{CAPACITY}Q", *slots) + payload


def zstd_pages(count: int, seed: int) -> bytes:
    return b"".join(bytes([seed + k + 1]) * (PS // 2) + bytes(PS // 2) for k in range(count))


def zstd_stream(cases: list[tuple[int, int]]) -> list[bytes]:
    """Payloads of one compiled stream: (pages it holds, seed) for each."""
    assert COMPILED_ZSTD
    stream = ZstdCodec(impl=LIBZSTD).methods(PS, 1)
    stream.send_setup(0)
    out = []
    for count, seed in cases:
        pages = zstd_pages(count, seed)
        sent = stream.send_prepare(PageViews(memoryview(pages), [k * PS for k in range(count)], PS))
        out.append(b"".join(bytes(b) for b in sent.buffers))
    return out


def zstd_channel(case: str) -> bytes:
    one, two, three = zstd_stream([(4, 0), (4, 1), (5, 2)])
    first = zstd_packet(one, 4, number=1)
    sync = zstd_packet(b"", 0, flags=1, number=2)[: ram_header_size()]
    later = {
        "valid": zstd_packet(two, 4, zero=2, number=3),
        "decodes to too much": zstd_packet(three, 4, number=3),
        "decodes short": zstd_packet(three, 6, number=3),
        "a new frame": zstd_packet(zstd_stream([(4, 7)])[0], 4, number=3),
        "garbage": zstd_packet(b"\x06" + bytes(range(1, 200)), 4, number=3),
        "empty payload": zstd_packet(b"", 4, number=3),
        "zero pages only": zstd_packet(b"", 0, zero=3, number=3),
        "zero pages only, with a payload": zstd_packet(b"xyz", 0, zero=3, number=3),
        "payload past the bound": zstd_packet(bytes(ZSTD_LIMITS.max_payload + 1), 4, number=3),
        "nocomp flag": zstd_packet(two, 4, flags=0, number=3),
        "cut in the payload": zstd_packet(two, 4, number=3)[: ram_header_size() + len(two) // 2],
    }[case]
    end = b"" if case.startswith("cut") else zstd_packet(b"", 0, flags=1, number=4)[: ram_header_size()]
    return first + sync + later + end


def ram_header_size() -> int:
    return RAM_FIXED.size + 8 * CAPACITY


ZSTD_CASES = {  # the case, and the error it ends in ("" for none)
    "valid": "",
    "decodes to too much": "CodecError",
    "decodes short": "CodecError",
    "a new frame": "CodecError",
    "garbage": "CodecError",
    "empty payload": "CodecError",
    "zero pages only": "",
    "zero pages only, with a payload": "WireError",
    "payload past the bound": "WireError",
    "nocomp flag": "WireError",
    "cut in the payload": "TruncatedError",
}


@pytest.mark.skipif(not COMPILED_ZSTD, reason="no compiled zstd here")
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", ZSTD_CASES)
def test_each_zstd_payload_ends_the_same_in_both_loops(case: str, transport: str, counting: CountingCompiled) -> None:
    outcome = assert_same(zstd_channel(case), ZSTD_LIMITS, case, "zstd", transport)
    assert (outcome.error or ("",))[0] == ZSTD_CASES[case], outcome.error
    assert counting.packets >= 1 + (case == "valid"), "the compiled loop took the channel's packets"

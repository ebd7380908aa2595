"""The compiled send path (mfdcomp/_sendloop.c, mfdcomp.engine.fastsend) against the Python path.

The same batches of pages go through a real source engine over a real socket twice, with the compiled
path and with the Python path alone; the bytes on the wire (init, RAM and SYNC packets, their headers
with the offsets in the order sent: QEMU's partition), the page digests and the counters must be equal.
Codecs: nocomp, and zstd on its compiled streams, whose packet_compressor the compiled path calls instead
of send_prepare. Transports: a plain socket, which the compiled path writes itself; TLS, whose session it
writes itself through OpenSSL (mfdcomp/_tlsdirect.c); and TLS where OpenSSL is not bound, which gets the
packets packed and sends them whole. send_packets itself: the same as a send_packet per batch.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mfdcomp_zstd import ZstdCodec
from mfdcomp_zstd.codec import LIBZSTD, PYTHON_ZSTANDARD
from tls_ends import tls_ends

from mfdcomp import speedups
from mfdcomp.engine.source import SourceEngine
from mfdcomp.errors import ChannelError
from mfdcomp.methods import Codec
from mfdcomp.methods.nocomp import Nocomp
from mfdcomp.pagedigest import PageDigests
from mfdcomp.transport.base import Stream
from mfdcomp.transport.sockets import SocketStream
from mfdcomp.wire import INIT_SIZE

pytestmark = pytest.mark.skipif(speedups.compiled() is None, reason="mfdcomp._speedups is not built here")

PS = 4096
PAGES = 300
UUID = bytes(range(16))


def codec_named(name: str) -> Codec:
    """nocomp, or zstd on one implementation (only the compiled one offers the compiled path a compressor)."""
    if name == "none":
        return Nocomp()
    return ZstdCodec(impl=name.split(":")[1])


CODECS = [
    "none",
    pytest.param(
        f"zstd:{LIBZSTD}",
        marks=pytest.mark.skipif(
            ZstdCodec(impl=LIBZSTD).implementation is None, reason="mfdcomp_zstd._zstdpages is not built here"
        ),
    ),
]


@dataclass
class Block:
    name: str
    memory: memoryview


@dataclass
class Sent:
    wire: bytes
    digests: dict[str, str]
    stats: dict[str, Any]
    error: tuple[str, str] | None
    cause: str | None = None  # the type of the channel's own error, when one failed


def make_block(kinds: list[int]) -> Block:
    """Page k: 0 zero, 1 a byte set at its end (the scan's last word), 2 at its start, 3 filled."""
    memory = bytearray(PAGES * PS)
    for k, kind in enumerate(kinds):
        if kind == 1:
            memory[(k + 1) * PS - 1] = 7
        elif kind == 2:
            memory[k * PS] = 9
        elif kind == 3:
            memory[k * PS : (k + 1) * PS] = bytes([k % 251 + 1]) * PS
    return Block("pc.ram", memoryview(memory))


def send(
    block: Block,
    batches: list[list[int]],
    *,
    fast: bool,
    detect: bool,
    hashing: bool,
    again: bool = False,
    codec: str = "none",
    taken: list[bool] | None = None,
    transport: str = "socket",
) -> Sent:
    """``batches`` in one round; with ``again``, a second round of them after every page turned zero."""
    ours, theirs = socket.socketpair()
    received = bytearray()
    tls_server, tls_client = tls_ends()

    def read() -> None:
        if transport == "socket":
            while chunk := theirs.recv(1 << 20):
                received.extend(chunk)
            return
        server = tls_server.wrap(SocketStream(theirs, "peer"))
        server.accept_handshake(time.monotonic() + 30)
        buf = memoryview(bytearray(1 << 20))
        while n := server.read_some(buf):
            received.extend(buf[:n])

    reader = threading.Thread(target=read)
    reader.start()
    stream: Stream = SocketStream(ours, "fast")
    if transport != "socket":
        stream = tls_client.wrap(SocketStream(ours, "fast"))
    with pytest.MonkeyPatch.context() as patch:
        if transport == "tls-packed":  # as where the OpenSSL of Python's ssl can't be bound
            patch.setattr(speedups, "bind_tls", lambda: "not bound in this test")
        return _send_on(stream, block, batches, fast, detect, hashing, again, codec, taken, reader, theirs, received)


def _send_on(
    stream: Stream,
    block: Block,
    batches: list[list[int]],
    fast: bool,
    detect: bool,
    hashing: bool,
    again: bool,
    codec: str,
    taken: list[bool] | None,
    reader: threading.Thread,
    theirs: socket.socket,
    received: bytearray,
) -> Sent:
    digests = PageDigests({block.name: block.memory.nbytes}, PS) if hashing else None
    engine = SourceEngine(
        [stream],
        codec_named(codec),
        level=None,
        page_size=PS,
        uuid=UUID,
        detect_zero_pages=detect,
        page_digests=digests,
    )
    engine.fast = fast
    mine = [list(b) for b in batches]
    error = None
    try:
        engine.start()
        engine.send_round([(block, b) for b in mine])
        if taken is not None:
            taken.append(engine.channels[0].fast is not None)
        if again:
            block.memory[:] = bytes(block.memory.nbytes)
            mine += [list(b) for b in batches]
            engine.send_round([(block, b) for b in mine[len(batches) :]])
        engine.finish()
    except ChannelError as exc:
        error = (type(exc).__name__, str(exc))
    finally:
        engine.close()
        reader.join()
        theirs.close()
    return Sent(
        bytes(received),
        digests.hexdigests() if digests is not None else {},
        engine.stats()[0].as_dict(),
        error,
        None if engine.state.error is None else type(engine.state.error).__name__,
    )


page_kinds = st.lists(st.integers(0, 3), min_size=PAGES, max_size=PAGES)
batch = st.lists(st.integers(0, PAGES - 1).map(lambda k: k * PS), max_size=128) | st.integers(0, PAGES - 128).map(
    lambda first: [(first + k) * PS for k in range(128)]
)


@pytest.mark.parametrize("transport", ["socket", "tls", "tls-packed"])
@pytest.mark.parametrize("codec", CODECS)
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    kinds=page_kinds,
    batches=st.lists(batch, min_size=1, max_size=5),
    detect=st.booleans(),
    hashing=st.booleans(),
    again=st.booleans(),
)
def test_both_paths_put_the_same_bytes_on_the_wire(
    codec: str, transport: str, kinds: list[int], batches: list[list[int]], detect: bool, hashing: bool, again: bool
) -> None:
    taken: list[bool] = []
    args = {"detect": detect, "hashing": hashing, "again": again, "codec": codec, "transport": transport}
    compiled = send(make_block(kinds), batches, fast=True, taken=taken, **args)  # type: ignore[arg-type]
    pure = send(make_block(kinds), batches, fast=False, **args)  # type: ignore[arg-type]
    assert taken == [True]
    assert compiled.error is None and pure.error is None
    assert compiled.stats == pure.stats
    assert compiled.digests == pure.digests
    assert compiled.wire == pure.wire


@pytest.mark.parametrize("transport", ["socket", "tls", "tls-packed"])
@pytest.mark.parametrize("codec", CODECS)
def test_the_compiled_path_is_taken(monkeypatch: pytest.MonkeyPatch, codec: str, transport: str) -> None:
    module = speedups.compiled()
    assert module is not None
    calls = []

    class Counting:
        def send_packets(self, *args: Any) -> Any:
            fd, out, tls = args[0], args[12], args[13]
            how = "fd" if fd >= 0 else "tls" if tls is not None else "packed" if out is not None else "?"
            calls.append(([len(batch) for batch in args[2]], args[10], args[11] is not None, how))
            assert module is not None
            return module.send_packets(*args)

    monkeypatch.setattr(speedups, "compiled", lambda: Counting())  # the module fastsend asks
    block = make_block([k % 4 for k in range(PAGES)])
    batches = [[k * PS for k in range(128)], [PS, 0]]
    sent = send(block, batches, fast=True, detect=True, hashing=True, codec=codec, transport=transport)
    assert sent.error is None
    compressing = codec != "none"
    how = {"socket": "fd", "tls": "tls", "tls-packed": "packed"}[transport]
    assert calls[0] == ([128, 2], 4 * compressing, compressing, how)
    # Both batches in one call, but where a packing buffer fills first (it holds a few packets).
    assert len(calls) == 1 or how == "packed"


def test_zstd_on_python_zstandard_stays_on_the_python_path() -> None:
    """python-zstandard has no compiled compressor to offer: its packets go through send_prepare."""
    taken: list[bool] = []
    block = make_block([k % 4 for k in range(PAGES)])
    sent = send(block, [[0, PS]], fast=True, detect=True, hashing=False, codec=f"zstd:{PYTHON_ZSTANDARD}", taken=taken)
    assert sent.error is None
    assert taken == [False]


def test_a_peer_gone_is_the_same_error_on_both_paths() -> None:
    block = make_block([3] * PAGES)
    errors = []
    for fast in (True, False):
        ours, theirs = socket.socketpair()
        engine = SourceEngine(
            [SocketStream(ours, "gone")], Nocomp(), level=None, page_size=PS, uuid=UUID, detect_zero_pages=True
        )
        engine.fast = fast
        with pytest.raises(ChannelError):
            engine.start()
            assert len(theirs.recv(INIT_SIZE, socket.MSG_WAITALL)) == INIT_SIZE  # the init packet went out
            theirs.close()  # then the peer goes: the RAM packet's write fails
            engine.send_round([(block, [0, PS])])
            engine.finish()
        engine.close()
        # The channel's own error (where the caller noticed it, "send" or "sync", is timing).
        error = engine.state.error
        errors.append((type(error).__name__, str(error), engine.stats()[0].as_dict()))
    assert errors[0] == errors[1]


def test_send_packet_refuses_bad_arguments() -> None:
    module = speedups.compiled()
    assert module is not None
    ours, theirs = socket.socketpair()
    with ours, theirs:
        memory = bytes(4 * PS)
        name = b"pc.ram".ljust(256, b"\0")
        args: list[Any] = [ours.fileno(), memory, [0, PS], PS, 128, True, 1, name, None, bytes(16)]
        for index, bad in [(2, [4 * PS]), (2, [-1]), (3, 0), (3, 12), (4, 0), (7, b"short"), (9, bytes(15))]:
            wrong = list(args)
            wrong[index] = bad
            with pytest.raises(ValueError):
                module.send_packet(*wrong)
        with pytest.raises(ValueError, match="at most 1 pages"):
            module.send_packet(*args[:4], 1, *args[5:])
        with pytest.raises(ValueError, match="no slot for its page in a 16-byte digest table"):
            module.send_packet(*args[:8], bytearray(16), *args[9:])
        with pytest.raises(ValueError, match="or flags"):
            module.send_packet(*args, 0x1)  # SYNC is never a data packet's
        with pytest.raises(ValueError, match="PyCapsule"):
            module.send_packet(*args, 0x4, object())  # not a compressor capsule
        with pytest.raises(ValueError, match=r"fd \(or out\)"):
            module.send_packet(-1, *args[1:])  # no socket and nowhere to pack
        with pytest.raises(ValueError, match=r"fd \(or out\)"):
            module.send_packet(*args, 0, None, bytearray(1 << 20))  # a socket and a packing buffer
        # Packed: the header and the payload one after the other; a buffer too small: nothing packed, EMSGSIZE.
        header = 1344
        sizes = module.send_packet(-1, *args[1:], 0, None, bytearray(header + PS))
        assert (sizes[0], sizes[1], sizes[2], sizes[3], sizes[5], sizes[6]) == (0, 2, header, 0, 0, None)
        full = bytes([1]) * (4 * PS)
        sizes = module.send_packet(-1, full, *args[2:], 0, None, bytearray(header + PS))
        assert (sizes[0], sizes[2], sizes[3], sizes[6]) == (2, 0, errno.EMSGSIZE, None)
        out = bytearray(header + 2 * PS)
        sizes = module.send_packet(-1, full, *args[2:], 0, None, out)
        assert (sizes[0], sizes[2], sizes[3], sizes[5]) == (2, header + 2 * PS, 0, 2 * PS)
        assert out[header:] == full[: 2 * PS]


def _drain(sock: socket.socket, into: bytearray) -> None:
    """Everything the peer sends, until it ends."""
    while chunk := sock.recv(1 << 20):
        into.extend(chunk)


def _mixed_memory() -> bytes:
    return bytes(make_block([k % 4 for k in range(PAGES)]).memory)


def _one_by_one(module: Any, fd: int, memory: bytes, batches: list[list[int]], first: int, **kw: Any) -> tuple:
    """send_packet for each batch in turn: what send_packets must come to."""
    table = kw.get("table")
    sums = [0, 0, 0, 0, 0, 0]
    out = kw.get("out")
    packed = b""
    for k, offsets in enumerate(batches):
        normal, zero, written, err, _, payload, problem = module.send_packet(
            fd, memory, offsets, PS, 128, True, first + k, NAME, table, bytes(16), 0, None, out
        )
        assert err == 0 and problem is None
        if out is not None:
            packed += bytes(out[:written])
        for i, value in enumerate((1, 1 if normal else 0, normal, zero, written, payload)):
            sums[i] += value
    return tuple(sums), packed


NAME = b"pc.ram".ljust(256, b"\0")
BATCHES = [[k * PS for k in range(128)], [5 * PS, 0, 9 * PS], [(200 + k) * PS for k in range(40)]]


@pytest.mark.parametrize("packing", [False, True], ids=["socket", "packed"])
def test_send_packets_is_send_packet_for_each_batch(packing: bool) -> None:
    """One call for several batches: the same bytes, digests and counts as a send_packet per batch, numbered on."""
    module = speedups.compiled()
    assert module is not None
    memory = _mixed_memory()
    results = []
    for grouped in (True, False):
        table = bytearray(PAGES * 16)
        ours, theirs = socket.socketpair()
        received = bytearray()
        reader = threading.Thread(target=_drain, args=(theirs, received))
        reader.start()
        with ours, theirs:
            out = bytearray(3 * (1344 + 128 * PS) + 128 * PS) if packing else None
            fd = -1 if packing else ours.fileno()
            if grouped:
                *counts, err, problem = module.send_packets(
                    fd, memory, BATCHES, PS, 128, True, 7, NAME, table, bytes(16), 0, None, out
                )
                assert (err, problem) == (0, None)
                sums, wire = tuple(counts), bytes(out[: counts[4]]) if out is not None else b""
            else:
                sums, wire = _one_by_one(module, fd, memory, BATCHES, 7, table=table, out=out)
            ours.shutdown(socket.SHUT_WR)
            reader.join()
        results.append((sums, wire + bytes(received), bytes(table)))
    assert results[0] == results[1]
    # Every fourth page is zero: 32 of the first batch's, page 0 of the second's, 10 of the third's.
    assert results[0][0][:4] == (3, 3, 96 + 2 + 30, 32 + 1 + 10)


def test_send_packets_packs_what_fits_and_leaves_the_rest() -> None:
    """Packing, a packet after the first goes in only if its bound fits behind the others: the call stops
    before it (errno 0), its codec not fed; the first alone not fitting is EMSGSIZE, nothing packed."""
    module = speedups.compiled()
    assert module is not None
    memory = _mixed_memory()
    full = [[k * PS for k in range(128)]] * 3
    one = 1344 + 128 * PS
    packets, _, normal, _, written, payload, err, problem = module.send_packets(
        -1, memory, full, PS, 128, True, 0, NAME, None, bytes(16), 0, None, bytearray(one + one // 2)
    )
    assert (packets, err, problem) == (1, 0, None)
    assert written == 1344 + normal * PS and payload == normal * PS
    packets, *_, written, payload, err, problem = module.send_packets(
        -1, memory, full, PS, 128, True, 0, NAME, None, bytes(16), 0, None, bytearray(1344 + PS)
    )
    assert (packets, written, err, problem) == (0, 0, errno.EMSGSIZE, None)


def test_send_packets_checks_every_batch_before_sending_any() -> None:
    module = speedups.compiled()
    assert module is not None
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with pytest.raises(ValueError, match="page offsets must lie"):
            module.send_packets(
                ours.fileno(), _mixed_memory(), [[0], [PAGES * PS]], PS, 128, True, 0, NAME, None, bytes(16)
            )
        over = list(range(0, 129 * PS, PS))
        with pytest.raises(ValueError, match="at most 128 pages"):
            module.send_packets(ours.fileno(), _mixed_memory(), [[0], over], PS, 128, True, 0, NAME, None, bytes(16))
        theirs.setblocking(False)
        with pytest.raises(BlockingIOError):
            theirs.recv(1)  # nothing went out


def test_send_packets_stops_at_a_failed_write_with_its_errno() -> None:
    module = speedups.compiled()
    assert module is not None
    ours, theirs = socket.socketpair()
    theirs.close()
    with ours:
        packets, pages_packets, *_, written, _, err, problem = module.send_packets(
            ours.fileno(), _mixed_memory(), BATCHES, PS, 128, True, 0, NAME, None, bytes(16)
        )
    assert (packets, pages_packets, written, err, problem) == (0, 0, 0, errno.EPIPE, None)


def test_a_channel_takes_its_batches_by_the_group_and_never_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled path sends up to GROUP batches of one block a call; another block's batch starts the next."""
    from mfdcomp.engine.fastsend import GROUP

    module = speedups.compiled()
    assert module is not None
    calls: list[tuple[str, list[int]]] = []

    class Counting:
        def send_packets(self, *args: Any) -> Any:
            calls.append((bytes(args[7]).rstrip(b"\0").decode(), [len(batch) for batch in args[2]]))
            assert module is not None
            return module.send_packets(*args)

    monkeypatch.setattr(speedups, "compiled", lambda: Counting())
    first, second = make_block([3] * PAGES), Block("vga", make_block([2] * PAGES).memory)
    ours, theirs = socket.socketpair()
    drained = threading.Thread(target=_drain, args=(theirs, bytearray()))
    drained.start()
    engine = SourceEngine([SocketStream(ours, "grouped")], Nocomp(), level=None, page_size=PS, uuid=UUID,
                          detect_zero_pages=True)  # fmt: skip
    try:
        engine.start()
        batches = [(first, [k * PS]) for k in range(GROUP + 2)] + [(second, [k * PS]) for k in range(3)]
        engine.send_round([*batches, (first, [PS])])
        engine.finish()
    finally:
        engine.close()
        drained.join()
        theirs.close()
    assert calls == [("pc.ram", [1] * GROUP), ("pc.ram", [1, 1]), ("vga", [1, 1, 1]), ("pc.ram", [1])]
    assert engine.stats()[0].packets == GROUP + 6 + 1  # and the SYNC


# --- the compressor contract itself: a compressor that refuses ------------------------------------------

_COMPRESS = ctypes.CFUNCTYPE(
    ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t
)


class _Compressor(ctypes.Structure):
    """mfdcomp_compressor of mfdcomp/_speedups.h."""

    _fields_ = [("ctx", ctypes.c_void_p), ("compress", _COMPRESS)]


REFUSAL = "test compressor: this packet is refused"


@_COMPRESS
def _refuse(ctx: int, pages: int, count: int, out: int, error: int, size: int) -> int:
    message = REFUSAL.encode() + b"\0"
    ctypes.memmove(error, message, min(len(message), size))
    return -1


_REFUSING = _Compressor(None, _refuse)
_CAPSULE_NAME = ctypes.create_string_buffer(b"mfdcomp.compressor.v1")  # the capsule keeps a pointer to it


def _refusing_capsule() -> object:
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return new(ctypes.addressof(_REFUSING), ctypes.addressof(_CAPSULE_NAME), None)


def test_a_compressor_that_refuses_ends_the_channel_with_its_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """A codec's compiled compressor (any codec's, here one made with ctypes) that fails: nothing of the packet
    is written, and the channel fails with the compressor's own message as a CodecError."""
    from mfdcomp_zstd.codec import ZstdMethods

    from mfdcomp.methods import CodecPath, PacketCompressor

    monkeypatch.setattr(
        ZstdMethods, "packet_compressor", lambda self: PacketCompressor(_refusing_capsule(), CodecPath.SOFTWARE)
    )
    block = make_block([3] * PAGES)
    sent = send(block, [[0, PS]], fast=True, detect=True, hashing=True, codec=f"zstd:{PYTHON_ZSTANDARD}")
    assert sent.error is not None
    assert REFUSAL in sent.error[1], sent.error
    assert sent.cause == "CodecError"
    assert sent.stats["packets"] == 0, "no data packet was counted"
    assert len(sent.wire) == INIT_SIZE, "nothing but the init packet went out"

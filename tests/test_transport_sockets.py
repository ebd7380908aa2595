"""Tests for mfdcomp.transport.address and mfdcomp.transport.sockets over tcp4, tcp6, unix, fd and vsock.

Every blocking call is bounded: accept() gets a timeout, helper threads are
joined with a timeout, and a watchdog shuts every stream of a test down if the
test runs too long, so a hang becomes a failure instead.
"""

from __future__ import annotations

import array
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typing_extensions import Buffer

from mfdcomp.errors import ChannelError, TruncatedError
from mfdcomp.transport.address import Address, parse_address, vsock_available
from mfdcomp.transport.base import Listener, Stream
from mfdcomp.transport.sockets import (
    IOV_MAX,
    FdPassingConnector,
    FdPassingListener,
    SocketStream,
    connect,
    listen,
)

WATCHDOG_S = 30.0  # a whole test; the individual waits below are much shorter
JOIN_S = 10.0
TRANSPORTS = ["tcp4", "tcp6", "unix", "fd", "vsock"]


def ipv6_loopback() -> tuple[bool, str]:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError as exc:
        return False, f"cannot bind [::1]: {exc}"
    return True, ""


# --- helpers ----------------------------------------------------------------


class Worker:
    """Runs ``fn`` in a thread; ``result()`` joins with a timeout and re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.started = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            self.started.set()
            try:
                self._value = fn()
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self, timeout: float = JOIN_S) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"worker still running after {timeout} s"
        if self._error is not None:
            raise self._error
        return self._value

    def error(self, timeout: float = JOIN_S) -> BaseException:
        """What the worker raised (it must raise) within ``timeout`` seconds."""
        with pytest.raises(BaseException) as info:
            self.result(timeout)
        return info.value


@dataclass
class Net:
    """One transport under test: a listener and a way to connect to it, with cleanup."""

    kind: str
    listener: Listener
    connect: Callable[[], Stream]
    streams: list[Stream] = field(default_factory=list)

    def dial(self) -> Stream:
        stream = self.connect()
        self.streams.append(stream)
        return stream

    def accept(self) -> Stream:
        stream = self.listener.accept(timeout=JOIN_S)
        self.streams.append(stream)
        return stream

    def pair(self) -> tuple[Stream, Stream]:
        """(client, server) ends of one connection."""
        client = self.dial()
        return client, self.accept()

    def abort(self) -> None:
        """Wake everything the test may be blocked in (the watchdog)."""
        for stream in list(self.streams):
            stream.shutdown()
        self.listener.close()


@pytest.fixture
def short_dir() -> Iterator[str]:
    # pytest's tmp_path can exceed the 108-byte limit of a unix socket path.
    path = tempfile.mkdtemp(prefix="mfdt", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_net(kind: str, short_dir: str, cleanup: list[Callable[[], None]]) -> Net:
    if kind == "tcp6":
        ok, why = ipv6_loopback()
        if not ok:
            pytest.skip(f"IPv6 loopback not available here: {why}")
    if kind == "vsock":
        ok, why = vsock_available()
        if not ok:
            pytest.skip(f"vsock not available here: {why}")
    if kind == "fd":
        near, far = socket.socketpair()
        cleanup.extend([near.close, far.close])
        fd_listener = listen(Address(kind="fd", fd=near.fileno()))
        return Net(kind, fd_listener, lambda: connect(Address(kind="fd", fd=far.fileno())))
    text = {
        "tcp4": "tcp:127.0.0.1:0",
        "tcp6": "tcp:[::1]:0",
        "unix": f"unix:{short_dir}/l.sock",
        "vsock": f"vsock:1:{socket.VMADDR_PORT_ANY}",
    }[kind]
    listener = listen(parse_address(text))
    target = parse_address(listener.address)
    return Net(kind, listener, lambda: connect(target, timeout=JOIN_S))


@pytest.fixture(params=TRANSPORTS)
def net(request: pytest.FixtureRequest, short_dir: str) -> Iterator[Net]:
    cleanup: list[Callable[[], None]] = []
    result = make_net(request.param, short_dir, cleanup)
    watchdog = threading.Timer(WATCHDOG_S, result.abort)
    watchdog.start()
    try:
        yield result
    finally:
        watchdog.cancel()
        for stream in result.streams:
            stream.close()
        result.listener.close()
        for undo in cleanup:
            undo()


def pattern(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def read_exact(stream: Stream, size: int) -> bytes:
    buf = bytearray(size)
    assert stream.recv_exact_into(memoryview(buf)) == size
    return bytes(buf)


def reset(stream: Stream) -> None:
    """Close ``stream`` abortively: an RST on tcp (SO_LINGER 0); plain close elsewhere."""
    assert isinstance(stream, SocketStream)
    sock: socket.socket = stream._sock
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.close()


# --- connect / accept ---------------------------------------------------------


def test_connect_accept_both_directions(net: Net) -> None:
    client, server = net.pair()
    client.send_all([b"hello ", bytearray(b"server")])
    assert read_exact(server, 12) == b"hello server"
    server.send_all([memoryview(b"hi client")])
    assert read_exact(client, 9) == b"hi client"
    assert client.name and server.name


def test_several_connections_stay_apart(net: Net) -> None:
    pairs = [net.pair() for _ in range(4)]
    for i, (client, _) in enumerate(pairs):
        client.send_all([bytes([i]) * 1000])
    for i, (_, server) in enumerate(pairs):
        assert read_exact(server, 1000) == bytes([i]) * 1000


# --- bulk data ----------------------------------------------------------------


def odd_sizes(total: int, seed: int, largest: int = 9000) -> list[int]:
    rng = random.Random(seed)
    sizes = []
    while total > 0:
        size = min(total, rng.choice([0, 1, 3, rng.randrange(1, largest)]))
        sizes.append(size)
        total -= size
    return sizes


def slices(data: Buffer, sizes: list[int]) -> list[memoryview]:
    view = memoryview(data)
    out, offset = [], 0
    for size in sizes:
        out.append(view[offset : offset + size])
        offset += size
    return out


def test_many_buffers_arrive_exactly(net: Net) -> None:
    client, server = net.pair()
    total = 6 * 1024 * 1024 + 12345
    data = pattern(total, seed=1)
    send_sizes = odd_sizes(total, seed=2)
    assert len(send_sizes) > IOV_MAX  # beyond one sendmsg
    sender = Worker(lambda: client.send_all(slices(data, send_sizes)))
    received = bytearray(total)
    head = 100_003
    assert server.recv_exact_into(memoryview(received)[:head]) == head
    rest = memoryview(received)[head:]
    recv_views = [rest[0:0], *slices(rest, odd_sizes(total - head, seed=3))]
    assert len(recv_views) > IOV_MAX  # beyond one recvmsg
    server.recv_into_all(recv_views)
    sender.result()
    assert received == data


def test_multi_megabyte_pages_and_non_byte_buffers(net: Net) -> None:
    client, server = net.pair()
    header = pattern(1344, seed=4)
    pages = memoryview(bytearray(pattern(128 * 4096 * 8, seed=5)))
    words = array.array("I", range(1000))  # itemsize 4: len() is not its size in bytes
    grid = memoryview(bytearray(pattern(64 * 64, seed=6))).cast("B", (64, 64))  # 2-D
    buffers: list[Any] = [header, *(pages[i * 4096 : (i + 1) * 4096] for i in range(128 * 8)), words, grid]
    expected = header + bytes(pages) + words.tobytes() + grid.tobytes()
    sender = Worker(lambda: client.send_all(buffers))
    received = bytearray(len(expected))
    views = [memoryview(received)[i : i + 4096] for i in range(0, len(received), 4096)]
    server.recv_into_all(views)
    sender.result()
    assert received == expected


def test_recv_into_all_accepts_non_byte_views(net: Net) -> None:
    client, server = net.pair()
    data = pattern(4096 + 16, seed=7)
    client.send_all([data])
    words = memoryview(bytearray(4096)).cast("I")
    rest = memoryview(bytearray(16)).cast("B", (4, 4))
    server.recv_into_all([words, rest])
    assert words.tobytes() + rest.tobytes() == data


class Trickle:
    """A socket stand-in that moves at most a few random bytes per call, to force partial reads and writes.

    It records the objects behind every buffer sendmsg() got, to check that resuming never copies them.
    """

    family = socket.AF_UNIX

    def __init__(self, sock: socket.socket, seed: int) -> None:
        self._sock = sock
        self._rng = random.Random(seed)
        self.sent_from: set[int] = set()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self._sock.setsockopt(level, option, value)

    def _limit(self) -> int:
        return self._rng.choice([1, 7, 4095, 4097, 70_000])

    def sendmsg(self, buffers: list[Buffer], ancdata: Any, flags: int) -> int:
        views = [memoryview(b) for b in buffers]
        self.sent_from.update(id(v.obj) for v in views)
        data = b"".join(views)[: self._limit()]
        return self._sock.send(data, flags)

    def recv_into(self, view: memoryview, nbytes: int, flags: int) -> int:
        return self._sock.recv_into(view[: self._limit()])

    def recvmsg_into(self, views: list[memoryview], ancbufsize: int, flags: int) -> tuple[int, list[Any], int, Any]:
        data = self._sock.recv(min(self._limit(), sum(v.nbytes for v in views)))
        offset = 0
        for view in views:
            part = data[offset : offset + view.nbytes]
            view.cast("B")[: len(part)] = part
            offset += len(part)
        return len(data), [], 0, None

    def recv(self, size: int) -> bytes:
        return self._sock.recv(min(size, self._limit()))

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()


def test_partial_writes_and_reads_resume_without_copies() -> None:
    a, b = socket.socketpair()
    sender_sock, receiver_sock = Trickle(a, seed=8), Trickle(b, seed=9)
    client = SocketStream(cast(socket.socket, sender_sock), "trickle:client")
    server = SocketStream(cast(socket.socket, receiver_sock), "trickle:server")
    try:
        header = pattern(1344, seed=10)
        pages = bytearray(pattern(300 * 4096, seed=11))
        buffers: list[Buffer] = [header, *(memoryview(pages)[i : i + 4096] for i in range(0, len(pages), 4096))]
        buffers += [array.array("H", range(2000))]  # resumed in the middle of a 2-byte item
        expected = b"".join(memoryview(x) for x in buffers)
        sender = Worker(lambda: client.send_all(buffers))
        assert server.peek(5) == expected[:5]
        received = bytearray(len(expected))
        view = memoryview(received)
        assert server.recv_exact_into(view[:3000]) == 3000
        server.recv_into_all(slices(view[3000:], odd_sizes(len(expected) - 3000, seed=12)))
        sender.result()
        assert received == expected
        assert sender_sock.sent_from <= {id(header), id(pages), id(buffers[-1])}
    finally:
        client.close()
        server.close()


# --- peek ---------------------------------------------------------------------


def test_peek_does_not_consume(net: Net) -> None:
    client, server = net.pair()
    client.send_all([b"QEMU"])
    peeker = Worker(lambda: server.peek(8))
    peeker.started.wait(JOIN_S)
    client.send_all([b"-rest-of-it"])  # peek(8) must wait for these, not return the first 4
    assert peeker.result() == b"QEMU-res"
    assert server.peek(2) == b"QE"
    first = memoryview(bytearray(3))
    assert server.recv_exact_into(first) == 3
    assert bytes(first) == b"QEM"
    a, b = memoryview(bytearray(2)), memoryview(bytearray(10))  # spans the kept bytes and the socket's
    server.recv_into_all([a, b])
    assert bytes(a) + bytes(b) == b"U-rest-of-it"


def test_peek_at_end_returns_fewer(net: Net) -> None:
    client, server = net.pair()
    client.send_all([b"xy"])
    client.close()
    assert server.peek(4) == b"xy"
    with pytest.raises(TruncatedError):
        server.recv_exact_into(memoryview(bytearray(4)))


# --- ends of stream -------------------------------------------------------------


def test_clean_end_returns_zero(net: Net) -> None:
    client, server = net.pair()
    client.send_all([b"last"])
    client.close()
    assert read_exact(server, 4) == b"last"
    assert server.recv_exact_into(memoryview(bytearray(16))) == 0
    assert server.recv_exact_into(memoryview(bytearray(0))) == 0


def test_end_in_the_middle_is_truncation(net: Net) -> None:
    client, server = net.pair()
    client.send_all([b"0123456789"])
    client.close()
    with pytest.raises(TruncatedError, match="10 of 100"):
        server.recv_exact_into(memoryview(bytearray(100)))


def test_recv_into_all_raises_at_any_end(net: Net) -> None:
    client, server = net.pair()
    client.send_all([b"abc"])
    client.close()
    with pytest.raises(TruncatedError):
        server.recv_into_all([memoryview(bytearray(2)), memoryview(bytearray(2))])
    with pytest.raises(TruncatedError):
        server.recv_into_all([memoryview(bytearray(1))])


def test_peer_reset_while_reading(net: Net) -> None:
    client, server = net.pair()
    server.send_all([b"unread"])  # left in the client's queue: closing it is then a reset on unix too
    reader = Worker(lambda: server.recv_exact_into(memoryview(bytearray(1 << 20))))
    reader.started.wait(JOIN_S)
    client.send_all([b"part of a message"])
    reset(client)
    error = reader.error(timeout=5)
    assert isinstance(error, (ChannelError, TruncatedError)), error
    assert server.name in str(error)


def test_peer_gone_while_writing(net: Net) -> None:
    client, server = net.pair()
    chunk = [bytes(1 << 20)]

    def flood() -> None:
        while True:
            server.send_all(chunk)

    writer = Worker(flood)
    client.recv_exact_into(memoryview(bytearray(4096)))  # the writer is running
    reset(client)
    error = writer.error(timeout=5)
    assert isinstance(error, ChannelError), error
    assert str(error).startswith(server.name + ": ")


# --- shutdown and close from another thread -------------------------------------


def test_shutdown_wakes_blocked_reader(net: Net) -> None:
    client, server = net.pair()
    reader = Worker(lambda: server.recv_exact_into(memoryview(bytearray(64))))
    reader.started.wait(JOIN_S)
    started = time.monotonic()
    server.shutdown()
    error = reader.error(timeout=2)
    assert time.monotonic() - started < 2
    assert isinstance(error, ChannelError), error
    assert "shut down" in str(error)
    with pytest.raises(ChannelError, match="shut down"):
        server.send_all([b"x"])
    with pytest.raises(ChannelError, match="shut down"):
        server.recv_into_all([memoryview(bytearray(1))])
    with pytest.raises(ChannelError, match="shut down"):
        server.peek(1)
    server.shutdown()  # again: harmless
    assert client.recv_exact_into(memoryview(bytearray(1))) == 0  # the peer sees a clean end


def test_shutdown_wakes_blocked_writer(net: Net) -> None:
    client, server = net.pair()
    chunk = [bytes(1 << 20)]

    def flood() -> None:
        while True:
            client.send_all(chunk)  # nobody reads: blocks once the socket buffers are full

    writer = Worker(flood)
    writer.started.wait(JOIN_S)
    server.peek(1)  # data is flowing
    client.shutdown()
    error = writer.error(timeout=2)
    assert isinstance(error, ChannelError) and "shut down" in str(error), error


def test_shutdown_after_reset_and_close_is_harmless(net: Net) -> None:
    client, server = net.pair()
    client.close()
    assert server.recv_exact_into(memoryview(bytearray(1))) == 0
    server.shutdown()
    client.shutdown()


def test_close_wakes_blocked_accept(net: Net) -> None:
    acceptor = Worker(lambda: net.listener.accept())
    acceptor.started.wait(JOIN_S)
    started = time.monotonic()
    net.listener.close()
    error = acceptor.error(timeout=2)
    assert time.monotonic() - started < 2
    assert isinstance(error, ChannelError) and "closed" in str(error), error
    with pytest.raises(ChannelError, match="closed"):
        net.listener.accept(timeout=1)
    net.listener.close()


def test_accept_timeout(net: Net) -> None:
    started = time.monotonic()
    with pytest.raises(ChannelError, match="no connection within"):
        net.listener.accept(timeout=0.2)
    assert 0.15 < time.monotonic() - started < 2


# --- tcp, unix specifics --------------------------------------------------------


def test_tcp_port_zero_shows_the_real_port() -> None:
    listener = listen(parse_address("tcp:127.0.0.1:0"))
    try:
        address = parse_address(listener.address)
        assert address.host == "127.0.0.1" and address.port not in (None, 0)
    finally:
        listener.close()


def closed_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_connect_refused_names_the_address() -> None:
    text = f"tcp:127.0.0.1:{closed_tcp_port()}"
    with pytest.raises(ChannelError, match=f"^{re.escape(text)}: connection refused$") as info:
        connect(parse_address(text), timeout=5)
    assert isinstance(info.value.__cause__, OSError)


def test_connect_to_missing_unix_socket(short_dir: str) -> None:
    text = f"unix:{short_dir}/nobody.sock"
    with pytest.raises(ChannelError, match=f"^{re.escape(text)}: no such file or directory$"):
        connect(parse_address(text), timeout=5)


def test_connect_to_unused_vsock_port() -> None:
    ok, why = vsock_available()
    if not ok:
        pytest.skip(f"vsock not available here: {why}")
    with pytest.raises(ChannelError, match=r"^vsock:1:"):
        connect(Address(kind="vsock", cid=1, port=closed_tcp_port()), timeout=5)


def test_vsock_listener_on_any_cid() -> None:
    # Needs only AF_VSOCK (not the loopback transport): covers the vsock listener where loopback is missing.
    try:
        listener = listen(Address(kind="vsock", cid=socket.VMADDR_CID_ANY, port=socket.VMADDR_PORT_ANY))
    except ChannelError as exc:
        pytest.skip(f"vsock not available here: {exc}")
    try:
        address = parse_address(listener.address)
        assert address.kind == "vsock" and address.port != socket.VMADDR_PORT_ANY
        with pytest.raises(ChannelError, match="no connection within"):
            listener.accept(timeout=0.1)
        acceptor = Worker(lambda: listener.accept(timeout=JOIN_S))
        acceptor.started.wait(JOIN_S)
        listener.close()
        assert isinstance(acceptor.error(timeout=2), ChannelError)
    finally:
        listener.close()


def test_unknown_host_is_a_channel_error() -> None:
    with pytest.raises(ChannelError, match=r"^tcp:no-such-host\.invalid:1: "):
        connect(parse_address("tcp:no-such-host.invalid:1"), timeout=5)


def test_unix_stale_socket_file_is_replaced(short_dir: str) -> None:
    path = f"{short_dir}/stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # leaves a socket file nobody listens on
    listener = listen(parse_address(f"unix:{path}"))
    try:
        with pytest.raises(ChannelError, match="another process is listening"):
            listen(parse_address(f"unix:{path}"))
        stream = connect(parse_address(f"unix:{path}"))
        stream.close()
    finally:
        listener.close()
    assert not os.path.exists(path)  # close() removes its own socket file


def test_unix_path_that_is_not_a_socket_is_kept(short_dir: str) -> None:
    path = f"{short_dir}/file"
    with open(path, "w") as f:
        f.write("mine")
    with pytest.raises(ChannelError, match="address already in use"):
        listen(parse_address(f"unix:{path}"))
    assert os.path.exists(path)


def test_file_address_is_not_a_connection(short_dir: str) -> None:
    address = parse_address(f"file:{short_dir}/x")
    with pytest.raises(ChannelError, match="not connections"):
        listen(address)
    with pytest.raises(ChannelError, match="not connections"):
        connect(address)


def test_tcp_streams_have_nodelay() -> None:
    listener = listen(parse_address("tcp:127.0.0.1:0"))
    try:
        client = connect(parse_address(listener.address))
        server = listener.accept(timeout=JOIN_S)
        for stream in (client, server):
            assert isinstance(stream, SocketStream)
            assert stream._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert client.name == listener.address
        assert server.name.startswith("tcp:127.0.0.1:")
        client.close()
        server.close()
    finally:
        listener.close()


# --- fd passing -------------------------------------------------------------------


def test_fd_passing_in_one_process() -> None:
    near, far = socket.socketpair()
    listener = FdPassingListener(near.detach())
    connector = FdPassingConnector(far.detach(), name="fd:test")
    try:
        client = connector.connect()
        server = listener.accept(timeout=JOIN_S)
        client.send_all([b"over a passed fd"])
        assert read_exact(server, 16) == b"over a passed fd"
        assert client.name.startswith("fd:test#")
        client.close()
        server.close()
        connector.close()  # the far end goes away: accept reports it
        with pytest.raises(ChannelError, match="closed the socket"):
            listener.accept(timeout=JOIN_S)
    finally:
        listener.close()


def test_fd_listener_rejects_what_is_not_a_stream_socket(short_dir: str) -> None:
    path = f"{short_dir}/plain"
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    with pytest.raises(ChannelError, match="not a usable socket"):
        FdPassingListener(fd)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed, as promised
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.close()
    with pytest.raises(ChannelError, match="not an AF_UNIX stream socket"):
        FdPassingConnector(a.detach())


def test_fd_listener_rejects_a_message_without_fd() -> None:
    near, far = socket.socketpair()
    listener = FdPassingListener(near.detach())
    try:
        far.sendall(b"C")
        with pytest.raises(ChannelError, match="expected one file descriptor"):
            listener.accept(timeout=JOIN_S)
    finally:
        far.close()
        listener.close()


def test_fd_address_stays_usable_after_close() -> None:
    near, far = socket.socketpair()
    try:
        for _ in range(2):  # listen() and connect() work on copies of the inherited fd
            listener = listen(Address(kind="fd", fd=near.fileno()))
            client = connect(Address(kind="fd", fd=far.fileno()))
            server = listener.accept(timeout=JOIN_S)
            client.send_all([b"ok"])
            assert read_exact(server, 2) == b"ok"
            for closable in (client, server, listener):
                closable.close()
        os.fstat(near.fileno())
    finally:
        near.close()
        far.close()


def test_fd_bad_number_is_a_channel_error() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)  # a number that is surely not open
    with pytest.raises(ChannelError, match=f"^fd:{fd}: bad file descriptor$"):
        connect(Address(kind="fd", fd=fd))


CHILD = textwrap.dedent(
    """
    import sys
    from mfdcomp.transport.address import parse_address
    from mfdcomp.transport.sockets import connect, listen

    address = parse_address(sys.argv[1])
    streams = [connect(address) for _ in range(3)]
    for i, stream in enumerate(streams):
        stream.send_all([bytes([65 + i]) * 100_000])
    back = listen(address).accept(timeout=10)  # the parent may connect the other way, too
    back.send_all([b"child accepted"])
    for stream in streams:
        assert stream.recv_exact_into(memoryview(bytearray(1))) == 1  # the parent's ack
        stream.close()
    back.close()
    """
)


def test_fd_passing_between_processes() -> None:
    near, far = socket.socketpair()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, f"fd:{far.fileno()}"], pass_fds=[far.fileno()], stderr=subprocess.PIPE
    )
    far.close()
    listener = listen(Address(kind="fd", fd=near.fileno()))
    try:
        streams = [listener.accept(timeout=JOIN_S) for _ in range(3)]
        got = sorted(read_exact(s, 100_000) for s in streams)
        assert got == [bytes([65 + i]) * 100_000 for i in range(3)]
        listener.close()
        back = connect(Address(kind="fd", fd=near.fileno()))
        assert read_exact(back, 14) == b"child accepted"
        for stream in streams:
            stream.send_all([b"!"])
        _, err = child.communicate(timeout=JOIN_S)
        assert child.returncode == 0, err.decode()
        for stream in [*streams, back]:
            stream.close()
    finally:
        listener.close()
        if child.poll() is None:
            child.kill()
            child.wait()
        near.close()


# --- vsock availability -------------------------------------------------------------


def test_vsock_available_reports_a_reason() -> None:
    ok, why = vsock_available()
    assert isinstance(ok, bool) and why
    assert vsock_available() is vsock_available()  # cached: probed once per process


# --- addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp:127.0.0.1:4444", Address(kind="tcp", host="127.0.0.1", port=4444)),
        ("tcp:localhost:0", Address(kind="tcp", host="localhost", port=0)),
        ("tcp:my-host.example.org:65535", Address(kind="tcp", host="my-host.example.org", port=65535)),
        ("tcp:[::1]:4444", Address(kind="tcp", host="::1", port=4444)),
        ("tcp:[fe80::1%eth0]:1", Address(kind="tcp", host="fe80::1%eth0", port=1)),
        ("unix:/run/mfd.sock", Address(kind="unix", path="/run/mfd.sock")),
        ("unix:relative/with:colon", Address(kind="unix", path="relative/with:colon")),
        ("vsock:2:1234", Address(kind="vsock", cid=2, port=1234)),
        ("vsock:4294967295:4294967295", Address(kind="vsock", cid=2**32 - 1, port=2**32 - 1)),
        ("fd:3", Address(kind="fd", fd=3)),
        ("file:/tmp/stream.bin", Address(kind="file", path="/tmp/stream.bin")),
    ],
)
def test_parse_good_addresses(text: str, expected: Address) -> None:
    assert parse_address(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "4444",
        "127.0.0.1:4444",
        "udp:127.0.0.1:4444",
        "TCP:127.0.0.1:4444",
        "tcp:127.0.0.1",
        "tcp::4444",
        "tcp:127.0.0.1:",
        "tcp:127.0.0.1:65536",
        "tcp:127.0.0.1:-1",
        "tcp:127.0.0.1:+1",
        "tcp:127.0.0.1: 1",
        "tcp:127.0.0.1:1_0",
        "tcp:127.0.0.1:٣",
        "tcp:::1:4444",
        "tcp:[::1]4444",
        "tcp:[::1]:",
        "tcp:[not-v6]:1",
        "tcp:[127.0.0.1]:1",
        "tcp:host name:1",
        "tcp:-host:1",
        "unix:",
        "unix:/a\0b",
        "file:",
        "vsock:2",
        "vsock:x:1",
        "vsock:2:4294967296",
        "vsock:-1:5",
        "fd:",
        "fd:x",
        "fd:-1",
        "fd:2147483648",
    ],
)
def test_parse_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="accepted forms: tcp:HOST:PORT, tcp:\\[IPV6\\]:PORT, unix:PATH") as info:
        parse_address(text)
    assert repr(text) in str(info.value)


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True),
)
addresses = st.one_of(
    st.builds(Address, kind=st.just("tcp"), host=hosts, port=st.integers(0, 65535)),
    st.builds(Address, kind=st.just("unix"), path=st.text(min_size=1).filter(lambda p: "\0" not in p)),
    st.builds(Address, kind=st.just("file"), path=st.text(min_size=1).filter(lambda p: "\0" not in p)),
    st.builds(Address, kind=st.just("vsock"), cid=st.integers(0, 2**32 - 1), port=st.integers(0, 2**32 - 1)),
    st.builds(Address, kind=st.just("fd"), fd=st.integers(0, 2**31 - 1)),
)


@given(addresses)
def test_address_text_round_trips(address: Address) -> None:
    assert parse_address(str(address)) == address

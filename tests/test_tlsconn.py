"""Both TLS session kinds (mfdcomp.transport.tlsconn), alone and against each other, on real sockets.

OpenSSL on the socket itself (mfdcomp's own channels) and on memory BIOs (the tap's) must move the same
bytes, interoperate in either role, take a reader and a writer at once, wake on shutdown() from
another thread, bound their waits, and refuse a bad handshake with the same words. Only the memory
kind reads on after its own close_notify (the tap's half-close); the socket kind's limit is checked
too, so the module's text stays true.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest

from mfdcomp.errors import ChannelError
from mfdcomp.transport.address import parse_address
from mfdcomp.transport.sockets import SocketStream
from mfdcomp.transport.tls import TlsClient, TlsServer, TlsStream
from mfdcomp.transport.tlsconn import SocketTlsConnection, TlsConnection, TlsError, TlsSession
from mfdcomp.transport.tlscreds import make_creds

KINDS = ["socket", "memory"]
DEADLINE = 20.0


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tlsconn")
    return {"good": make_creds(root / "good"), "other-ca": make_creds(root / "other-ca")}


def session(
    kind: str,
    sock: socket.socket,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    recv_timeout: float | None = None,
) -> TlsSession:
    name = "server" if server_side else "client"
    hostname = None if server_side else "localhost"
    if kind == "socket":
        return SocketTlsConnection(
            sock, name, context, server_side=server_side, hostname=hostname, recv_timeout=recv_timeout
        )
    if recv_timeout is not None:
        sock.settimeout(recv_timeout)
    return TlsConnection(sock, name, context, server_side=server_side, hostname=hostname)


@contextlib.contextmanager
def pair(
    creds: Path, client_kind: str, server_kind: str, *, recv_timeout: float | None = None
) -> Iterator[tuple[TlsSession, TlsSession]]:
    """A client and a server session over TCP loopback, hands shaken."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw_client = socket.create_connection(listener.getsockname())
        raw_server, _ = listener.accept()
    client = session(
        client_kind, raw_client, TlsClient.load(creds).context, server_side=False, recv_timeout=recv_timeout
    )
    server = session(
        server_kind, raw_server, TlsServer.load(creds).context, server_side=True, recv_timeout=recv_timeout
    )
    try:
        with ThreadPoolExecutor(1) as pool:
            accepted = pool.submit(server.handshake, time.monotonic() + DEADLINE)
            client.handshake(time.monotonic() + DEADLINE)
            accepted.result(DEADLINE)
        yield client, server
    finally:
        for end in (client, server):
            end.shutdown()
            end.close()


def read_exactly(conn: TlsSession, size: int) -> bytes:
    out = bytearray()
    buf = memoryview(bytearray(1 << 20))
    while len(out) < size:
        n = conn.recv_into(buf[: min(buf.nbytes, size - len(out))])
        if n == 0:
            break
        out += buf[:n]
    return bytes(out)


def read_to_end(read: Callable[[memoryview], int]) -> bytes:
    """Everything ``read`` (a session's recv_into or recv_alone) gives until it gives 0."""
    out = bytearray()
    buf = memoryview(bytearray(1 << 16))
    while n := read(buf):
        out += buf[:n]
    return bytes(out)


def send_in_pieces(writer: TlsSession, data: bytes, piece: int) -> None:
    for at in range(0, len(data), piece):
        writer.sendall(data[at : at + piece])


@pytest.mark.parametrize("client_kind", KINDS)
@pytest.mark.parametrize("server_kind", KINDS)
def test_both_kinds_move_the_same_bytes_either_way(creds: dict[str, Path], client_kind: str, server_kind: str) -> None:
    data = os.urandom(3 << 20) + b"end"
    with pair(creds["good"], client_kind, server_kind) as (client, server):
        assert client.version == server.version == "TLSv1.3"
        assert client.cipher == server.cipher
        for writer, reader in ((client, server), (server, client)):
            with ThreadPoolExecutor(1) as pool:
                # Sent in pieces of odd sizes: records never line up with the writes.
                sent = pool.submit(send_in_pieces, writer, data, 77777)
                got = read_exactly(reader, len(data))
                sent.result(DEADLINE)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


class PublicMethodsOnly:
    """An SSLSocket seen without CPython's private SSL object: its public recv_into (and fileno, to wait)."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.recv_into = tls.recv_into
        self.fileno = tls.fileno


def test_the_socket_kind_reads_through_the_public_method_without_the_ssl_object(creds: dict[str, Path]) -> None:
    data = os.urandom(1 << 20)
    with pair(creds["good"], "memory", "socket") as (client, server):
        assert isinstance(server, SocketTlsConnection) and server._ssl is not None
        real, server._ssl = server._ssl, cast(ssl.SSLSocket, PublicMethodsOnly(server._ssl))
        try:
            with ThreadPoolExecutor(1) as pool:
                sent = pool.submit(send_in_pieces, client, data, 50000)
                got = read_exactly(server, len(data))
                sent.result(DEADLINE)
        finally:
            server._ssl = real
    assert got == data


@pytest.mark.parametrize("kind", KINDS)
def test_a_reader_and_a_writer_share_one_session(creds: dict[str, Path], kind: str) -> None:
    """A main channel's case: one thread reads while another writes, on both ends at once."""
    size = 8 << 20
    with pair(creds["good"], kind, kind) as (client, server), ThreadPoolExecutor(4) as pool:
        sends = [pool.submit(client.sendall, b"c" * size), pool.submit(server.sendall, b"s" * size)]
        at_server = pool.submit(read_exactly, server, size)
        at_client = pool.submit(read_exactly, client, size)
        for sent in sends:
            sent.result(DEADLINE)
        assert at_server.result(DEADLINE) == b"c" * size
        assert at_client.result(DEADLINE) == b"s" * size


@pytest.mark.parametrize("kind", KINDS)
def test_shutdown_from_another_thread_wakes_a_blocked_reader(creds: dict[str, Path], kind: str) -> None:
    with pair(creds["good"], kind, kind) as (_, server), ThreadPoolExecutor(1) as pool:
        reading = pool.submit(server.recv_into, memoryview(bytearray(100)))
        time.sleep(0.2)  # the reader is waiting for a record that never comes
        assert not reading.done()
        server.shutdown()
        assert reading.result(DEADLINE) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_silent_peer_ends_a_read_at_the_idle_timeout_as_the_stream_says(creds: dict[str, Path], kind: str) -> None:
    with pair(creds["good"], kind, kind, recv_timeout=0.3) as (_, server):
        stream = TlsStream(server, idle_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(ChannelError, match=r"nothing received for 0.3 s: the peer stalled \(idle timeout\)"):
            stream.recv_exact_into(memoryview(bytearray(10)))
        assert 0.25 < time.monotonic() - started < 5


@pytest.mark.parametrize("client_kind", KINDS)
def test_a_lone_reader_gets_every_byte_and_the_end(creds: dict[str, Path], client_kind: str) -> None:
    """recv_alone (a destination's multifd channel): OpenSSL waits for the socket itself."""
    data = os.urandom(3 << 20) + b"end"
    with pair(creds["good"], client_kind, "socket") as (client, server), ThreadPoolExecutor(1) as pool:
        assert isinstance(server, SocketTlsConnection)
        # Sent in odd pieces and ended with close_notify while the reader waits in OpenSSL.
        sent = pool.submit(lambda: (send_in_pieces(client, data, 77777), client.close_notify()))
        got = read_to_end(server.recv_alone)
        sent.result(DEADLINE)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("idle", [0.3, None])
def test_a_lone_reader_ends_at_the_idle_timeout_or_at_shutdown(creds: dict[str, Path], idle: float | None) -> None:
    with pair(creds["good"], "socket", "socket", recv_timeout=idle) as (_, server), ThreadPoolExecutor(1) as pool:
        assert isinstance(server, SocketTlsConnection)
        started = time.monotonic()
        if idle is not None:  # the socket's own timeout, in the words recv_into uses
            with pytest.raises(TimeoutError, match=r"^server: nothing received for 0.3 s$"):
                server.recv_alone(memoryview(bytearray(10)))
            assert 0.25 < time.monotonic() - started < 5
            return
        reading = pool.submit(server.recv_alone, memoryview(bytearray(10)))
        time.sleep(0.2)  # the reader is waiting in OpenSSL for a record that never comes
        assert not reading.done()
        # close_notify without waiting gives up on the lock the reader holds: it neither hangs nor wakes it.
        server.close_notify(wait=False)
        assert time.monotonic() - started < 5 and not reading.done()
        server.shutdown()
        assert reading.result(DEADLINE) == 0


def test_a_lone_reader_fills_its_view_across_records_and_keeps_what_came_before_a_stall(
    creds: dict[str, Path],
) -> None:
    """recv_alone reads every record a view spans in one call; bytes that came before a stall are returned,
    and the next call is the idle timeout."""
    data = os.urandom(100_000)  # seven 16 KiB records
    with pair(creds["good"], "socket", "socket", recv_timeout=0.3) as (client, server):
        assert isinstance(server, SocketTlsConnection)
        client.sendall(data)
        view = memoryview(bytearray(len(data)))
        assert server.recv_alone(view) == len(data) and bytes(view) == data
        client.sendall(b"0123456789")
        view = memoryview(bytearray(100))
        assert server.recv_alone(view) == 10 and bytes(view[:10]) == b"0123456789"
        with pytest.raises(TimeoutError, match=r"^server: nothing received for 0.3 s$"):
            server.recv_alone(view)


def test_a_stream_read_by_the_compiled_loop_says_its_idle_timeout(creds: dict[str, Path]) -> None:
    """TlsStream.read_some reads a socket-kind session alone; a stall is the stream's idle-timeout error."""
    with pair(creds["good"], "socket", "socket", recv_timeout=0.3) as (client, server):
        stream = TlsStream(server, idle_timeout=0.3)
        client.sendall(b"abc")
        started = time.monotonic()
        with pytest.raises(ChannelError, match=r"nothing received for 0.3 s: the peer stalled \(idle timeout\)"):
            stream.read_some(memoryview(bytearray(10)))
        assert 0.25 < time.monotonic() - started < 5
        stream.unread(b"xy")  # bytes put back come first, then the session's
        client.sendall(b"defgh")
        view = memoryview(bytearray(7))
        assert stream.read_some(view) == 7 and bytes(view) == b"xydefgh"


@pytest.mark.parametrize("client_kind", KINDS)
@pytest.mark.parametrize("server_kind", KINDS)
def test_close_notify_ends_the_stream_cleanly_after_every_byte(
    creds: dict[str, Path], client_kind: str, server_kind: str
) -> None:
    data = os.urandom(1 << 20)
    with pair(creds["good"], client_kind, server_kind) as (client, server):
        client.sendall(data)
        client.close_notify()
        assert read_to_end(server.recv_into) == data


def test_the_memory_kind_reads_on_after_its_close_notify(creds: dict[str, Path]) -> None:
    """The tap's half-close: our direction ends, the peer's bytes still come in."""
    with pair(creds["good"], "memory", "socket") as (client, server):
        server.sendall(b"late" * 1000)
        assert select.select([client.sock], [], [], DEADLINE)[0]  # the peer's records wait at our socket
        client.close_notify()
        assert read_exactly(client, 4000) == b"late" * 1000
        assert read_to_end(server.recv_into) == b""


def test_the_socket_kind_does_not_read_on_after_its_close_notify(creds: dict[str, Path]) -> None:
    """Why the tap keeps the memory kind: SSL_shutdown as Python calls it drops the peer's late data."""
    with pair(creds["good"], "socket", "socket") as (client, server):
        server.sendall(b"late" * 1000)
        assert select.select([client.sock], [], [], DEADLINE)[0]
        client.close_notify()
        try:
            late = read_exactly(client, 4000)
        except (TlsError, OSError):
            late = b""
    assert late != b"late" * 1000


@pytest.mark.parametrize("kind", KINDS)
def test_a_certificate_from_another_ca_is_refused_in_the_same_words(creds: dict[str, Path], kind: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw_client = socket.create_connection(listener.getsockname())
        raw_server, _ = listener.accept()
    client = session(kind, raw_client, TlsClient.load(creds["other-ca"]).context, server_side=False)
    server = session(kind, raw_server, TlsServer.load(creds["good"]).context, server_side=True)
    try:
        with ThreadPoolExecutor(1) as pool:
            accepted = pool.submit(server.handshake, time.monotonic() + DEADLINE)
            with pytest.raises(
                TlsError,
                match=r"client: TLS handshake failed: the destination's \(server\) certificate was refused: "
                r"self-signed certificate in certificate chain \(CERTIFICATE_VERIFY_FAILED\)",
            ):
                client.handshake(time.monotonic() + DEADLINE)
            with pytest.raises(TlsError, match=r"server: the peer refused the TLS session: .*alert"):
                accepted.result(DEADLINE)
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("deadline", "idle", "words"),
    [
        (0.3, None, "no complete TLS handshake within the time allowed"),
        (None, 0.3, r"nothing received for 0.3 s in the TLS handshake \(idle timeout\)"),
    ],
    ids=["deadline", "idle"],
)
def test_a_handshake_that_gets_nothing_ends_in_time(
    creds: dict[str, Path], kind: str, deadline: float | None, idle: float | None, words: str
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        silent = socket.create_connection(listener.getsockname())
        raw_server, _ = listener.accept()
    server = session(kind, raw_server, TlsServer.load(creds["good"]).context, server_side=True)
    started = time.monotonic()
    try:
        with pytest.raises(TlsError, match=words):
            server.handshake(None if deadline is None else started + deadline, idle)
        assert time.monotonic() - started < 5
    finally:
        silent.close()
        server.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_peer_gone_during_the_handshake_is_said_so(creds: dict[str, Path], kind: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        gone = socket.create_connection(listener.getsockname())
        raw_server, _ = listener.accept()
    gone.close()
    server = session(kind, raw_server, TlsServer.load(creds["good"]).context, server_side=True)
    try:
        with pytest.raises(TlsError, match="the peer closed the connection during the TLS handshake"):
            server.handshake(time.monotonic() + DEADLINE)
    finally:
        server.close()


def test_mfdcomp_streams_use_the_socket_kind(creds: dict[str, Path]) -> None:
    """TlsServer.wrap and TlsClient.connect give mfdcomp's own channels OpenSSL on the socket itself."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with ThreadPoolExecutor(1) as pool:
            connecting: Callable[[], TlsStream] = lambda: TlsClient.load(creds["good"]).connect(  # noqa: E731
                parse_address(f"tcp:127.0.0.1:{port}")
            )
            client_future = pool.submit(connecting)
            raw, _ = listener.accept()
            server = TlsServer.load(creds["good"]).wrap(SocketStream(raw, "accepted"))
            server.accept_handshake(time.monotonic() + DEADLINE)
            client = client_future.result(DEADLINE)
    try:
        assert isinstance(server.conn, SocketTlsConnection)
        assert isinstance(client.conn, SocketTlsConnection)
        client.send_all([b"one ", b"two"])
        got = bytearray(7)
        assert server.recv_exact_into(memoryview(got)) == 7
        assert bytes(got) == b"one two"
    finally:
        client.close()
        server.close()

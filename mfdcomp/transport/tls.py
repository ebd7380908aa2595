"""TLS on every connection, with QEMU's x509 credentials directory.

A directory as QEMU's ``tls-creds-x509`` object reads it: ``ca-cert.pem``,
``server-cert.pem`` + ``server-key.pem`` (the destination's identity) and
``client-cert.pem`` + ``client-key.pem`` (the source's). Both ends verify
each other (QEMU's ``verify-peer=on``): TLS 1.2 or newer, the peer's
certificate signed by the CA, the server's valid for the source's
``tls-hostname``, the client's name (CN or DNS SAN) in ``tls-authz`` when one
is given.

:class:`TlsStream` is a :class:`Stream` over one TLS session (mfdcomp.transport.tlsconn):
OpenSSL on the socket itself for mfdcomp's own channels, on memory BIOs for the tap's.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import math
import os
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typing_extensions import Buffer

from mfdcomp.errors import ChannelError, TruncatedError
from mfdcomp.transport.address import Address
from mfdcomp.transport.base import PeerGoneError
from mfdcomp.transport.sockets import SocketStream, connect
from mfdcomp.transport.tlsconn import SocketTlsConnection, TlsSession
from mfdcomp.transport.tlsconn import TlsError as TlsError  # the error tree's TLS branch, re-exported

CREDS_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem")
TLS_HANDSHAKE_RECORD = 0x16
"""First byte of every TLS ClientHello (a handshake record): anything else is a plain peer."""

_GROUP = 64 << 10
_RECORD = 16 << 10  # TLS's largest record of plaintext


class TlsAuthzError(TlsError):
    """The peer's certificate is valid but its name is not one --tls-authz allows."""


class PlainPeerError(TlsError):
    """A peer that does not speak TLS connected to a TLS endpoint. ``head``: its first bytes."""

    def __init__(self, message: str, head: bytes) -> None:
        super().__init__(message)
        self.head = head


def _load(context: ssl.SSLContext, directory: Path, cert: str, key: str) -> None:
    try:
        context.load_verify_locations(cafile=str(directory / "ca-cert.pem"))
        context.load_cert_chain(str(directory / cert), str(directory / key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"--tls-creds {directory}: cannot load {cert}/{key} with ca-cert.pem: {exc}") from exc


def _base_context(purpose: int) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED  # mutual: the destination also checks the source (verify-peer=on)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    return context


@dataclass(frozen=True)
class TlsServer:
    """The destination's side: its certificate, and which client names get in (None: any the CA signed)."""

    context: ssl.SSLContext
    authz: frozenset[str] | None = None

    @classmethod
    def load(cls, directory: Path, authz: Sequence[str] | None = None) -> TlsServer:
        check_creds(directory, server=True)
        context = _base_context(ssl.PROTOCOL_TLS_SERVER)
        context.num_tickets = 0  # no session tickets: nothing but our records follows the handshake
        _load(context, directory, "server-cert.pem", "server-key.pem")
        return cls(context, frozenset(authz) if authz else None)

    def wrap(self, stream: SocketStream, on_plain: Callable[[bytes], bytes | None] | None = None) -> TlsStream:
        """``stream``'s socket as a server-side TLS stream, not yet shaken hands with (no I/O here).

        ``on_plain(head)`` may return bytes to send in clear to a peer that did not start with TLS
        (the main channel's ERROR, so a plain source learns why), before it is refused.
        """
        conn = SocketTlsConnection(
            stream.take_socket(),
            stream.name,
            self.context,
            server_side=True,
            recv_timeout=stream.idle_timeout,
            send_timeout=stream.send_idle_timeout,
        )
        return TlsStream(conn, stream.idle_timeout, stream.send_idle_timeout, authz=self.authz, on_plain=on_plain)


@dataclass(frozen=True)
class TlsClient:
    """The source's side: its certificate, and the name the destination's certificate must carry."""

    context: ssl.SSLContext
    hostname: str | None = None

    @classmethod
    def load(cls, directory: Path, hostname: str | None = None) -> TlsClient:
        check_creds(directory, server=False)
        context = _base_context(ssl.PROTOCOL_TLS_CLIENT)
        _load(context, directory, "client-cert.pem", "client-key.pem")
        return cls(context, hostname)

    def connect(self, address: Address, timeout: float = 10.0, send_idle_timeout: float | None = None) -> TlsStream:
        """A TLS stream to ``address``, its handshake done within ``timeout`` seconds."""
        plain = connect(address, timeout=timeout, send_idle_timeout=send_idle_timeout)
        assert isinstance(plain, SocketStream)
        return self.wrap(plain, address, timeout)

    def wrap(self, plain: SocketStream, address: Address | None = None, timeout: float = 10.0) -> TlsStream:
        hostname = self.hostname or (address.host if address is not None else None)
        if hostname is None:
            plain.close()
            raise TlsError(f"{plain.name}: TLS needs --tls-hostname for a {address.kind if address else ''} address")
        conn = SocketTlsConnection(
            plain.take_socket(),
            plain.name,
            self.context,
            server_side=False,
            hostname=hostname,
            recv_timeout=plain.idle_timeout,
            send_timeout=plain.send_idle_timeout,
        )
        stream = TlsStream(conn, plain.idle_timeout, plain.send_idle_timeout)
        try:
            conn.handshake(time.monotonic() + timeout)
        except BaseException:
            stream.close()
            raise
        return stream


def check_creds(directory: Path, *, server: bool) -> None:
    """Refuse, naming them, the files of QEMU's layout this end needs and the directory lacks."""
    side = ("server-cert.pem", "server-key.pem") if server else ("client-cert.pem", "client-key.pem")
    missing = [name for name in ("ca-cert.pem", *side) if not (directory / name).is_file()]
    if missing:
        raise TlsError(
            f"--tls-creds {directory}: missing {', '.join(missing)} (QEMU's x509 layout: {', '.join(CREDS_FILES)})"
        )


def peer_names(cert: dict[str, Any]) -> list[str]:
    """The names a peer certificate carries, as ``getpeercert()`` gives it: its CN(s), then its DNS SANs."""
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    return list(dict.fromkeys(names))  # a CN repeated as a SAN is said once


class TlsStream:
    """A TLS session as a :class:`Stream`; a server side shakes hands in :meth:`accept_handshake`."""

    def __init__(
        self,
        conn: TlsSession,
        idle_timeout: float | None = None,
        send_idle_timeout: float | None = None,
        *,
        authz: frozenset[str] | None = None,
        on_plain: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self.conn = conn
        self.name = conn.name
        self.idle_timeout = idle_timeout
        self.send_idle_timeout = send_idle_timeout
        self._authz = authz
        self._on_plain = on_plain
        self._peeked = bytearray()
        self._staging = bytearray()

    def accept_handshake(self, deadline: float | None = None) -> None:
        """The server's handshake: refuse a plain peer (PlainPeerError), then TLS, then --tls-authz."""
        conn = self.conn
        try:
            first = conn.peek_plain(1)
            if first and first[0] != TLS_HANDSHAKE_RECORD:
                head = conn.peek_plain(4)
                reply = self._on_plain(head) if self._on_plain is not None else None
                if reply:
                    conn.send_plain(reply)
                raise PlainPeerError(
                    f"{self.name}: not a TLS connection (first bytes {head.hex()}); this end requires TLS", head
                )
            conn.handshake(deadline, self.idle_timeout)
        except OSError as exc:
            raise self._error(exc) from exc
        if self._authz is not None:
            names = peer_names(conn.peer_certificate())
            if not self._authz.intersection(names):
                raise TlsAuthzError(
                    f"{self.name}: client certificate {' / '.join(names) or '(no name)'} is not in --tls-authz "
                    f"({', '.join(sorted(self._authz))})"
                )

    def send_all(self, buffers: Sequence[Buffer]) -> None:
        if self.conn.shut:
            raise ChannelError(f"{self.name}: shut down")
        # Small buffers (a header, lone pages) are joined into groups of _GROUP bytes, each encrypted and sent
        # at once: a record per page would cost a record header and an OpenSSL call each. A buffer of a record
        # or more (a run of pages) goes as it is: OpenSSL cuts it into records without the copy of a join.
        try:
            group: list[Buffer] = []
            size = 0
            for buffer in buffers:
                n = memoryview(buffer).nbytes
                if n >= _RECORD:
                    if group:
                        self.conn.sendall(b"".join(group))
                        group.clear()
                        size = 0
                    self.conn.sendall(buffer)
                    continue
                group.append(buffer)
                size += n
                if size >= _GROUP:
                    self.conn.sendall(b"".join(group))
                    group.clear()
                    size = 0
            if group:
                self.conn.sendall(b"".join(group))
        except OSError as exc:
            raise self._error(exc, sending=True) from exc

    def _read(self, view: memoryview, *, alone: bool = False) -> int:
        """Bytes put back first, then the session's. ``alone``: this is the only reader and nothing
        writes (read_some), so a socket-kind session lets OpenSSL wait for the socket (recv_alone)."""
        if self._peeked:
            n = min(len(self._peeked), view.nbytes)
            view[:n] = self._peeked[:n]
            del self._peeked[:n]
            return n
        try:
            if alone and isinstance(self.conn, SocketTlsConnection):
                return self.conn.recv_alone(view)
            return self.conn.recv_into(view)
        except OSError as exc:
            raise self._error(exc) from exc

    def read_some(self, view: memoryview) -> int:
        """As much of ``view`` as the stream holds: all of it but at the end (the compiled loop's reader).

        The loop is the stream's only reader and nothing writes to it (a destination's multifd channel), so
        a socket-kind session is read with recv_alone: OpenSSL waits for the socket itself.
        """
        if self.conn.shut:
            raise ChannelError(f"{self.name}: shut down")
        view = view.cast("B")
        got = 0
        while got < view.nbytes:
            n = self._read(view[got:], alone=True)
            if n == 0:
                if self.conn.shut:
                    raise ChannelError(f"{self.name}: shut down")
                break
            got += n
        return got

    @contextlib.contextmanager
    def direct_session(self, writing: bool = False) -> Iterator[tuple[object, object, int, int] | None]:
        """(sslobj, owner, fd, timeout_ms) of the session, for a compiled loop to read (or write) it itself,
        held while the context lasts; None where the loop can't: a memory-BIO session, one shut down, and for
        reading, bytes put back (read_some returns them first).

        Reading, the loop is the stream's only reader and nothing writes (as for read_some); writing, it is
        the only writer and nothing reads (a source's multifd channel).
        """
        conn = self.conn
        if (self._peeked and not writing) or not isinstance(conn, SocketTlsConnection) or conn.shut:
            yield None
            return
        with conn.held_writing() if writing else conn.held_alone() as tls:
            sslobj = getattr(tls, "_sslobj", None)
            timeout = conn.send_timeout if writing else conn.recv_timeout
            wait_ms = -1 if timeout is None else max(0, math.ceil(timeout * 1000))
            yield None if sslobj is None else (sslobj, tls, tls.fileno(), wait_ms)

    def direct_failed(self, err: int, reason: str | None, *, writing: bool = False) -> ChannelError:
        """As the read path (or send_all) raises it: OpenSSL's ``reason``, or errno ``err`` (ETIMEDOUT: the
        idle timeout, or the send idle timeout)."""
        if reason is not None:
            return self.conn.failure(reason)
        return self._error(OSError(err, os.strerror(err)), sending=writing)

    def unread(self, data: bytes) -> None:
        self._peeked[:0] = data

    def recv_exact_into(self, view: memoryview) -> int:
        if self.conn.shut:
            raise ChannelError(f"{self.name}: shut down")
        view = view.cast("B")
        size = view.nbytes
        got = 0
        while got < size:
            n = self._read(view[got:])
            if n == 0:
                if got == 0 and not self.conn.shut:
                    return 0
                raise self._ended(got, size)
            got += n
        return size

    def recv_into_all(self, views: Sequence[memoryview]) -> None:
        # Into one staging buffer (a few OpenSSL reads of 16 KiB records), then a copy per view: a read
        # per 4 KiB page would cost four OpenSSL calls and lock rounds per record.
        if len(views) == 1:  # one run of pages (nocomp's PageViews.runs): read in place
            view = views[0]
            if self.recv_exact_into(view) == 0 and view.nbytes:
                raise self._ended(0, view.nbytes)
            return
        size = sum(v.nbytes for v in views)
        if len(self._staging) < size:
            self._staging = bytearray(size)
        staging = memoryview(self._staging)[:size]
        got = self.recv_exact_into(staging)
        if got == 0 and size:
            raise self._ended(0, size)
        at = 0
        for view in views:
            n = view.nbytes
            view.cast("B")[:] = staging[at : at + n]
            at += n

    def peek(self, size: int) -> bytes:
        while len(self._peeked) < size:
            chunk = bytearray(size - len(self._peeked))
            try:
                n = self.conn.recv_into(memoryview(chunk))
            except OSError as exc:
                raise self._error(exc) from exc
            if n == 0:
                if self.conn.shut:
                    raise ChannelError(f"{self.name}: shut down")
                break
            self._peeked += chunk[:n]
        return bytes(self._peeked[:size])

    def shutdown(self) -> None:
        self.conn.shutdown()

    def close(self) -> None:
        # close_notify first, without waiting: a QEMU 10.0 reader treats a bare end as an error.
        if not self.conn.shut and not self.conn.closed:
            with contextlib.suppress(OSError, ChannelError):
                self.conn.sock.setblocking(False)  # never wait on a peer that stopped reading
                self.conn.close_notify(wait=False)
        self.conn.close()

    def _ended(self, got: int, size: int) -> ChannelError | TruncatedError:
        if self.conn.shut:
            return ChannelError(f"{self.name}: shut down")
        return TruncatedError(f"{self.name}: stream ended after {got} of {size} bytes", value=got, limit=size)

    def _error(self, exc: OSError, sending: bool = False) -> ChannelError:
        if isinstance(exc, TlsError):
            return exc
        if self.conn.shut:
            return ChannelError(f"{self.name}: shut down")
        if self.conn.closed:
            return ChannelError(f"{self.name}: closed")
        if isinstance(exc, (BlockingIOError, TimeoutError)) or exc.errno == errno.EAGAIN:
            if sending and self.send_idle_timeout is not None:
                return ChannelError(
                    f"{self.name}: nothing could be sent for {self.send_idle_timeout:g} s: "
                    "the peer stopped reading (idle timeout)"
                )
            if not sending and self.idle_timeout is not None:
                return ChannelError(
                    f"{self.name}: nothing received for {self.idle_timeout:g} s: the peer stalled (idle timeout)"
                )
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            return PeerGoneError(f"{self.name}: {os.strerror(exc.errno or 0).lower()}")
        return ChannelError(f"{self.name}: {exc.strerror or exc}")


def is_loopback(host: str | None) -> bool:
    """Whether a listening host only takes connections from this machine."""
    if host is None:
        return True
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

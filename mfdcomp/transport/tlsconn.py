"""One TLS session on one socket, two ways: OpenSSL on memory BIOs, or on the socket itself.

Both share one rule: an ``SSL`` object must not be used by two threads at once, and a main channel
is read by one thread while another writes. So every OpenSSL call is made under one short lock and
every wait for the socket happens outside it; ``shutdown()`` from any thread wakes every blocked
call at the socket.

:class:`SocketTlsConnection` lets OpenSSL read and write the (non-blocking) socket itself, and
waits with poll() when it wants to read or write. Measured (2 channels, 485 MB, TCP loopback, 2
cores): 0.32 s and 0.58 CPU-s, against 0.53 s and 0.85 CPU-s through memory BIOs, which copy every
byte twice more each way (into and out of the BIOs). Its close_notify is OpenSSL's SSL_shutdown as
Python calls it, which goes on to read the peer's close_notify and fails on application data,
dropping it: for a connection closed whole (mfdcomp's own channels), never for one that reads on
after ending its direction.

:meth:`SocketTlsConnection.recv_alone` is the exception, for a connection that one thread reads
and nobody writes meanwhile (a destination's multifd channel): OpenSSL waits for the socket itself,
in C without the GIL, holding the lock, and one call reads every record the caller's view spans.
The wait in Python costs an SSLWantReadError and a poll() from Python each time the reader drains
the socket (10,751 times for 19,652 records in a 512 MiB zstd-1 session over 2 channels); without
them that session's receiver took 0.71 CPU-s instead of 0.76 and the session 0.995 s instead of
1.037 (4 alternating pairs).

:class:`TlsConnection` runs OpenSSL on memory BIOs and does the socket I/O itself, so it can send
close_notify without reading anything: the tap ends one direction cleanly, as QEMU 10.0's
``multifd-clean-tls-termination`` expects, while the other one goes on.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from typing_extensions import Buffer

from mfdcomp.errors import ChannelError

_READ_CHUNK = 256 << 10  # socket bytes taken per recv: many 16 KiB records per system call
_SEND_FLAGS = socket.MSG_NOSIGNAL
_PEER_CLOSED = "the peer closed the connection during the TLS handshake"


class TlsError(ChannelError):
    """A TLS handshake failed or the peer's certificate was refused; the text says why."""


def _reason(exc: ssl.SSLError) -> str:
    """An OpenSSL error as a sentence: the verify message when there is one (expired, hostname...)."""
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"{verify} ({exc.reason or 'certificate verify failed'})"
    text = exc.reason or str(exc)
    return text.replace("_", " ").lower() if exc.reason else text


def _handshake_wait_error(name: str, deadline: float | None, idle: float | None) -> TlsError:
    left = deadline - time.monotonic() if deadline is not None else None
    if idle is not None and (left is None or idle < left):
        return TlsError(f"{name}: nothing received for {idle:g} s in the TLS handshake (idle timeout)")
    return TlsError(f"{name}: no complete TLS handshake within the time allowed")


def _handshake_wait(deadline: float | None, idle: float | None) -> float | None:
    """How long one wait in the handshake may take (None: no bound), ≤ 0 when the time is up."""
    left = deadline - time.monotonic() if deadline is not None else None
    bounds = [w for w in (left, idle) if w is not None]
    return min(bounds) if bounds else None


class TlsSession(abc.ABC):
    """What both kinds share; see the module's text. Takes ownership of ``sock``."""

    def __init__(self, sock: socket.socket, name: str, *, server_side: bool) -> None:
        self.name = name  # set once
        self.sock = sock  # under _close_lock where it may change (SocketTlsConnection's handshake)
        self.server_side = server_side  # set once
        self._lock = threading.Lock()  # every call into OpenSSL: short, never around a wait
        self._send_lock = threading.Lock()  # keeps the order of encrypted bytes on the socket
        self.shut = False  # under _close_lock
        self.closed = False  # under _close_lock
        self._close_lock = threading.Lock()

    @property
    @abc.abstractmethod
    def _session(self) -> ssl.SSLObject | ssl.SSLSocket:
        """The OpenSSL session, for what it knows after the handshake."""

    @abc.abstractmethod
    def handshake(self, deadline: float | None = None, idle: float | None = None) -> None:
        """Shake hands; TlsError with OpenSSL's reason.

        Bounded by ``deadline`` (monotonic) and by ``idle`` seconds without a byte, when given.
        """

    @abc.abstractmethod
    def recv_into(self, view: memoryview) -> int:
        """Up to ``view.nbytes`` decrypted bytes; 0 at the peer's close_notify or end of stream."""

    @abc.abstractmethod
    def sendall(self, data: Buffer) -> None:
        """Every byte of ``data``, encrypted."""

    @abc.abstractmethod
    def close_notify(self, wait: bool = True) -> None:
        """End our direction: close_notify, then the socket's FIN.

        ``wait=False`` gives up at once when a writer holds the socket (one blocked on a stalled peer).
        """

    def peer_certificate(self) -> dict[str, Any]:
        with self._lock:
            return self._session.getpeercert() or {}

    @property
    def version(self) -> str | None:
        return self._session.version()

    @property
    def cipher(self) -> str | None:
        cipher = self._session.cipher()
        return cipher[0] if cipher else None

    def shutdown(self) -> None:
        """Wake every blocked call, from any thread: the socket ends both ways."""
        with self._close_lock:
            self.shut = True
            if self.closed:
                return
            with contextlib.suppress(OSError):
                # The plain socket's shutdown: SSLSocket.shutdown() would also drop its session under a reader.
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        with self._close_lock:
            self.closed = True
            self.sock.close()

    def send_plain(self, data: bytes) -> None:
        """Bytes in clear, before any TLS: a refusal a plain peer can read."""
        with contextlib.suppress(OSError):
            self.sock.sendall(data, _SEND_FLAGS)

    def peek_plain(self, size: int) -> bytes:
        """The first ``size`` bytes on the socket, left there (MSG_PEEK), before any TLS."""
        return self.sock.recv(size, socket.MSG_PEEK | socket.MSG_WAITALL)

    def _tls_error(self, exc: ssl.SSLError, handshake: bool = False) -> TlsError:
        if self.shut:
            return TlsError(f"{self.name}: shut down")
        reason = _reason(exc)
        if handshake and getattr(exc, "verify_message", None) and "alert" not in reason:
            whose = "source's (client)" if self.server_side else "destination's (server)"
            return TlsError(f"{self.name}: TLS handshake failed: the {whose} certificate was refused: {reason}")
        return self.failure(reason, handshake)

    def failure(self, reason: str, handshake: bool = False) -> TlsError:
        """The error for OpenSSL's ``reason`` (its text, as ``_reason`` gives it): an alert is the peer's refusal."""
        if self.shut:
            return TlsError(f"{self.name}: shut down")
        if "alert" in reason:
            return TlsError(f"{self.name}: the peer refused the TLS session: {reason}")
        if handshake:
            return TlsError(f"{self.name}: TLS handshake failed: {reason}")
        return TlsError(f"{self.name}: TLS: {reason}")


class SocketTlsConnection(TlsSession):
    """OpenSSL on the non-blocking socket itself; see the module's text.

    ``recv_timeout`` and ``send_timeout`` (seconds, None for none) bound each wait to read or to
    write after the handshake: TimeoutError, as a socket with SO_RCVTIMEO/SO_SNDTIMEO raises it.
    """

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        hostname: str | None = None,
        recv_timeout: float | None = None,
        send_timeout: float | None = None,
    ) -> None:
        super().__init__(sock, name, server_side=server_side)
        self._context = context  # set once
        self._hostname = hostname  # set once
        self._recv_timeout = recv_timeout  # set once
        self._send_timeout = send_timeout  # set once
        self._ssl: ssl.SSLSocket | None = None  # set once by the handshake, under _close_lock
        self._alone = False  # under _lock: recv_alone's mode, OpenSSL waiting for the socket itself

    @property
    def _session(self) -> ssl.SSLSocket:
        if self._ssl is None:
            raise TlsError(f"{self.name}: no TLS session yet")
        return self._ssl

    def _wrap(self) -> ssl.SSLSocket:
        """The socket under OpenSSL (the plain one is detached: the SSLSocket owns the descriptor)."""
        with self._close_lock:
            if self._ssl is None:
                if self.shut or self.closed:
                    raise TlsError(f"{self.name}: shut down")
                self.sock.setblocking(False)
                self._ssl = self._context.wrap_socket(
                    self.sock,
                    server_side=self.server_side,
                    server_hostname=self._hostname,
                    do_handshake_on_connect=False,
                )
                self.sock = self._ssl
            return self._ssl

    def _wait(self, events: int, timeout: float | None) -> bool:
        """Whether the socket became ready for ``events`` within ``timeout`` seconds (None: no bound)."""
        poller = select.poll()
        poller.register(self._session, events)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1)))

    def handshake(self, deadline: float | None = None, idle: float | None = None) -> None:
        tls = self._wrap()
        while True:
            with self._lock:
                try:
                    tls.do_handshake()
                    return
                except ssl.SSLWantReadError:
                    events = select.POLLIN
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
                except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError) as exc:
                    raise TlsError(f"{self.name}: {_PEER_CLOSED}") from exc
                except ssl.SSLError as exc:
                    raise self._tls_error(exc, handshake=True) from exc
            wait = _handshake_wait(deadline, idle)
            if (wait is not None and wait <= 0) or not self._wait(events, wait):
                raise _handshake_wait_error(self.name, deadline, idle)
            if self.shut:
                raise TlsError(f"{self.name}: shut down")

    def _record_reader(self) -> Callable[[int, memoryview], int]:
        """read(size, into) of the next record's bytes: the SSL object's own where the SSLSocket has one.

        SSLSocket.recv_into adds two Python calls a record: the receiver's CPU for 512 MiB of zstd-1
        over 2 TLS channels 0.76 -> 0.72 s without them. An SSLSocket without one: its public method.
        """
        tls = self._session
        sslobj = getattr(tls, "_sslobj", None)
        if sslobj is None:
            return lambda size, into: tls.recv_into(into, size)
        return cast(Callable[[int, memoryview], int], sslobj.read)

    def recv_into(self, view: memoryview) -> int:
        # Every whole record already received goes into ``view`` in one lock round: a 512 KiB packet is
        # 32 records, and a reader waits only when none is left.
        read = self._record_reader()
        while True:
            got = 0
            ended = False  # the peer's close_notify, or the end of the stream, after ``got`` bytes
            events = select.POLLIN
            with self._lock:
                try:
                    while got < view.nbytes:
                        n = read(view.nbytes - got, view[got:])
                        if n == 0:  # close_notify, or a ragged end (suppress_ragged_eofs): see TlsConnection
                            ended = True
                            break
                        got += n
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLWantWriteError:  # a post-handshake message to answer (a key update)
                    events = select.POLLOUT
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    ended = True
                except ssl.SSLError as exc:
                    raise self._tls_error(exc) from exc
            if got or ended:
                return got
            if not self._wait(events, self._recv_timeout):
                raise TimeoutError(f"{self.name}: nothing received for {self._recv_timeout:g} s")

    @contextlib.contextmanager
    def held_alone(self) -> Iterator[ssl.SSLSocket]:
        """The session in recv_alone's mode (OpenSSL waits for the socket itself), the lock held while the
        context lasts: for recv_alone, and for a compiled reader that calls OpenSSL itself
        (mfdcomp/_tlsdirect.c)."""
        tls = self._session
        with self._lock:
            if not self._alone:
                tls.settimeout(self._recv_timeout)
                self._alone = True
            yield tls

    @contextlib.contextmanager
    def held_writing(self) -> Iterator[ssl.SSLSocket]:
        """The session, for a compiled writer that calls OpenSSL itself (mfdcomp/_tlsdirect.c) and waits for
        the socket as sendall does: both locks held while the context lasts (a writer that nobody reads
        beside, as a source's multifd channel)."""
        tls = self._session
        with self._send_lock, self._lock:
            yield tls

    @property
    def recv_timeout(self) -> float | None:
        return self._recv_timeout

    @property
    def send_timeout(self) -> float | None:
        return self._send_timeout

    def recv_alone(self, view: memoryview) -> int:
        """As recv_into, for a connection that this thread alone reads and nobody writes meanwhile, and
        all of ``view``: fewer bytes only at the end, or when a wait after some of them times out.

        OpenSSL waits for the socket itself, holding the lock (see the module's text): from the first
        call on, a write or a close_notify on this connection waits for the read. ``shutdown()`` still
        wakes it; the idle timeout is the socket's (TimeoutError, as recv_into raises it). The records
        a view spans are read in one call: a 512 KiB payload is 32 records, and a call into Python for
        each cost the receiver of 512 MiB of zstd-1 over 2 channels 0.03 CPU-s.
        """
        read = self._record_reader()
        got = 0
        with self.held_alone():
            try:
                while got < view.nbytes:
                    n = read(view.nbytes - got, view[got:])
                    if n == 0:  # close_notify, or a ragged end, as recv_into ends
                        break
                    got += n
            except TimeoutError:
                if got:
                    return got  # the next call times out again, with nothing read
                raise TimeoutError(f"{self.name}: nothing received for {self._recv_timeout:g} s") from None
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                pass  # close_notify, or a ragged end, as recv_into ends
            except ssl.SSLError as exc:  # bytes read before it are dropped, as recv_into drops them
                raise self._tls_error(exc) from exc
        return got

    def sendall(self, data: Buffer) -> None:
        tls = self._session
        view = memoryview(data).cast("B")
        with self._send_lock:
            while view.nbytes:
                with self._lock:
                    try:
                        # All of it or an exception: after SSLWantWriteError OpenSSL keeps what it encrypted
                        # and the same bytes are offered again.
                        view = view[tls.send(view) :]
                        continue
                    except ssl.SSLWantWriteError:
                        events = select.POLLOUT
                    except ssl.SSLWantReadError:
                        events = select.POLLIN
                    except ssl.SSLEOFError as exc:
                        # The socket refused the bytes (ssl loses its errno on a write): the peer is gone, as
                        # the compiled writer says with the errno it sees.
                        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)) from exc
                    except ssl.SSLError as exc:
                        raise self._tls_error(exc) from exc
                if not self._wait(events, self._send_timeout):
                    raise TimeoutError(f"{self.name}: nothing could be sent for {self._send_timeout:g} s")

    def close_notify(self, wait: bool = True) -> None:
        tls = self._ssl
        if not self._send_lock.acquire(blocking=wait):
            return
        try:
            # Without waiting, a reader in recv_alone (holding the lock until a record or its timeout)
            # means no close_notify: the FIN still goes.
            if tls is not None and self._lock.acquire(blocking=wait):
                try:
                    with contextlib.suppress(ssl.SSLError, OSError):
                        tls.setblocking(False)  # recv_alone's mode would wait for the peer's close_notify
                        tls.unwrap()  # sends close_notify; the peer's is not awaited (SSLWantReadError)
                finally:
                    self._lock.release()
        finally:
            self._send_lock.release()
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_WR)


class TlsConnection(TlsSession):
    """OpenSSL on memory BIOs over a blocking socket; see the module's text."""

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        hostname: str | None = None,
    ) -> None:
        super().__init__(sock, name, server_side=server_side)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=hostname)
        self._buf = bytearray(_READ_CHUNK)  # the reading thread's (one reader at a time)
        self._eof = False

    @property
    def _session(self) -> ssl.SSLObject:
        return self._obj

    def handshake(self, deadline: float | None = None, idle: float | None = None) -> None:
        while True:
            done = False
            failure: ssl.SSLError | None = None
            with self._lock:
                try:
                    self._obj.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    failure = exc
            # The alert that says why goes out even on failure: the peer learns the reason too.
            with contextlib.suppress(OSError):
                self._flush()
            if failure is not None:
                raise self._tls_error(failure, handshake=True) from failure
            if done:
                return
            if not self._fill(deadline, idle):
                raise TlsError(f"{self.name}: {_PEER_CLOSED}")

    def recv_into(self, view: memoryview) -> int:
        # Every whole record already received goes into ``view`` in one call (one lock round, not one per
        # 16 KiB record: a 512 KiB packet arrives in about two socket reads of 32 records).
        while True:
            got = 0
            ended = False  # the peer's close_notify, or the end of the stream, after ``got`` bytes
            with self._lock:
                try:
                    while got < view.nbytes:
                        # With a buffer, read() returns the count (typeshed says bytes); 0 after the
                        # peer's close_notify (CPython returns it instead of raising SSLZeroReturnError).
                        n = cast(int, self._obj.read(view.nbytes - got, view[got:]))
                        if n == 0:
                            ended = True
                            break
                        got += n
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    # close_notify, or a ragged end: a clean end between records; the session's digests
                    # (and every channel's packet framing) catch a truncation anyway. Bytes read before it
                    # are returned first; the next call meets the end again.
                    ended = True
                except ssl.SSLError as exc:
                    raise self._tls_error(exc) from exc
                pending = self._out.pending
            if pending:  # a post-handshake message needs an answer (a key update)
                self._flush()
            if got or ended:
                return got
            if not self._fill(None):
                with self._lock:
                    self._in.write_eof()

    def sendall(self, data: Buffer) -> None:
        with self._send_lock:
            with self._lock:
                try:
                    self._obj.write(data)
                except ssl.SSLError as exc:
                    raise self._tls_error(exc) from exc
                out = self._out.read()
            self._send_raw(out)

    def close_notify(self, wait: bool = True) -> None:
        if not self._send_lock.acquire(blocking=wait):
            return
        try:
            with self._lock:
                with contextlib.suppress(ssl.SSLError):
                    self._obj.unwrap()  # sends close_notify; the peer's is not awaited (SSLWantReadError)
                out = self._out.read()
            if out:
                self._send_raw(out)
        finally:
            self._send_lock.release()
        socket.socket.shutdown(self.sock, socket.SHUT_WR)

    def _fill(self, deadline: float | None, idle: float | None = None) -> bool:
        """Feed OpenSSL the next bytes from the socket; False at its end."""
        if deadline is not None or idle is not None:
            wait = _handshake_wait(deadline, idle)
            assert wait is not None
            if wait <= 0 or not select.select([self.sock], [], [], wait)[0]:
                raise _handshake_wait_error(self.name, deadline, idle)
        if self._eof:
            return False
        n = self.sock.recv_into(self._buf)
        if n == 0:
            self._eof = True
            return False
        with self._lock:
            self._in.write(memoryview(self._buf)[:n])
        return True

    def _flush(self) -> None:
        with self._send_lock:
            with self._lock:
                out = self._out.read()
            if out:
                self._send_raw(out)

    def _send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.sock.send(view, _SEND_FLAGS) :]

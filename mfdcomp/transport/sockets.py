"""Socket transports: tcp, unix and vsock streams, and connections passed as fds over an inherited socket.

Streams are blocking sockets driven by sendmsg/recv_into/recvmsg_into straight
from and into the caller's buffers. Every OSError is translated once into a
:class:`ChannelError` naming the peer and the errno text.
"""

from __future__ import annotations

import abc
import errno
import itertools
import math
import operator
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

from typing_extensions import Buffer

from mfdcomp.errors import ChannelError, TruncatedError
from mfdcomp.transport.address import Address
from mfdcomp.transport.base import AcceptTimeout, Listener, PeerGoneError, Stream

IOV_MAX = os.sysconf("SC_IOV_MAX")
"""Most buffers one sendmsg/recvmsg takes (1024 on Linux); longer lists go in slices."""

_SEND_FLAGS = socket.MSG_NOSIGNAL  # EPIPE instead of SIGPIPE: an embedding process may not ignore SIGPIPE
_RECV_FLAGS = socket.MSG_WAITALL  # one syscall per read unless the stream ends, is shut down or a signal hits

_fd_connections = itertools.count(1)  # numbers fd-passed connections in their names
_NBYTES = operator.attrgetter("nbytes")


def _describe(exc: OSError) -> str:
    """The errno text of ``exc`` as it reads inside a sentence ('connection reset by peer')."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


# A unix stream socket queues at most its SO_SNDBUF (208 KiB by default): a
# 512 KiB packet then needs several sleeps and wake-ups on each side, and a
# wake-up costs 45-85 us of CPU on the VMs here. Measured, 1 GiB nocomp over
# 2 channels, alternating, median of 5-6: default 0.859-0.865 s; 1 MiB
# 0.792-0.819 s; 2 MiB 0.816 s; 4 MiB 0.841 s; the sender's CPU 0.67 -> 0.54-0.58 s.
UNIX_SEND_BUFFER = 1 << 20
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux: past net.core.wmem_max, with CAP_NET_ADMIN


def widen_unix_send_buffer(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, UNIX_SEND_BUFFER)
    except PermissionError:
        # Without the capability the kernel caps the size at net.core.wmem_max.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER)


class SocketStream:
    """A connected stream socket as a :class:`Stream`; takes ownership of ``sock``.

    ``peek()`` keeps the bytes it looks at in the object (reads return them first), so after a
    peek the socket itself must not be read by anything else.
    """

    name: str

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        idle_timeout: float | None = None,
        send_idle_timeout: float | None = None,
    ) -> None:
        sock.setblocking(True)  # a socket timeout would add a poll() before every call
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if idle_timeout is not None:
            # The kernel's receive timeout (no poll per call): a read that waits longer fails with EAGAIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(idle_timeout))
        if send_idle_timeout is not None:
            # Likewise for writes: a sendmsg that moves no byte for that long fails with EAGAIN; a partial
            # write returns and the next call waits anew, so this bounds a stall, not a slow peer.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(send_idle_timeout))
        if sock.family == socket.AF_UNIX:
            widen_unix_send_buffer(sock)
        # TCP buffers stay the kernel's: 4 MiB measured no faster on loopback (slower, even),
        # and any fixed size turns TCP's buffer autotuning off, capping the window on real links.
        self.idle_timeout = idle_timeout
        self.send_idle_timeout = send_idle_timeout
        self.name = name
        self._sock = sock
        self._peeked = bytearray()  # bytes peek() took off the socket, served before the socket's
        self._shut = False
        self._closed = False
        self._close_lock = threading.Lock()  # shutdown() and close() only: never on the data path

    def send_all(self, buffers: Sequence[Buffer]) -> None:
        if self._shut:
            raise ChannelError(f"{self.name}: shut down")
        try:
            if len(buffers) <= IOV_MAX:
                sent = self._sock.sendmsg(buffers, (), _SEND_FLAGS)
                if sent == _total(buffers):
                    return
            else:
                sent = 0
            views = [memoryview(b).cast("B") for b in buffers]  # byte-addressed, to resume inside a buffer
            i = _advance(views, 0, sent)
            while i < len(views):
                i = _advance(views, i, self._sock.sendmsg(views[i : i + IOV_MAX], (), _SEND_FLAGS))
        except OSError as exc:
            raise self._error(exc, sending=True) from exc

    def recv_exact_into(self, view: memoryview) -> int:
        if self._shut:  # bytes still queued must not be read after shutdown
            raise ChannelError(f"{self.name}: shut down")
        view = view.cast("B")
        size = view.nbytes
        got = self._take_peeked(view) if self._peeked else 0
        try:
            while got < size:
                n = self._sock.recv_into(view[got:], 0, _RECV_FLAGS)
                if n == 0:
                    if got == 0 and not self._shut:
                        return 0
                    raise self._ended(got, size)
                got += n
        except OSError as exc:
            raise self._error(exc) from exc
        return size

    def recv_into_all(self, views: Sequence[memoryview]) -> None:
        if self._shut:
            raise ChannelError(f"{self.name}: shut down")
        size = sum(map(_NBYTES, views))
        try:
            if not self._peeked and len(views) <= IOV_MAX:
                got = self._sock.recvmsg_into(views, 0, _RECV_FLAGS)[0]
                if got == size:
                    return
            else:
                got = 0
            pending = [v.cast("B") for v in views]  # byte-addressed, to resume inside a view
            i = _advance(pending, 0, got)
            while self._peeked and i < len(pending):
                n = self._take_peeked(pending[i])
                got += n
                i = _advance(pending, i, n)
            while i < len(pending):
                n = self._sock.recvmsg_into(pending[i : i + IOV_MAX], 0, _RECV_FLAGS)[0]
                if n == 0:
                    raise self._ended(got, size)
                got += n
                i = _advance(pending, i, n)
        except OSError as exc:
            raise self._error(exc) from exc

    def peek(self, size: int) -> bytes:
        # The bytes are taken off the socket and kept: MSG_PEEK|MSG_WAITALL does not wait on AF_UNIX
        # (it returns what is queued), and a peek loop can't block for more without consuming.
        if self._shut:
            raise ChannelError(f"{self.name}: shut down")
        try:
            while len(self._peeked) < size:
                chunk = self._sock.recv(size - len(self._peeked))
                if not chunk:
                    if self._shut:
                        raise ChannelError(f"{self.name}: shut down")
                    break
                self._peeked += chunk
        except OSError as exc:
            raise self._error(exc) from exc
        return bytes(self._peeked[:size])

    def readable_fd(self) -> int | None:
        """The socket's descriptor while nothing is queued in front of it and it is open (DescriptorStream).

        Only the channel's own thread reads it, and the stream is closed only after that thread ends.
        """
        if self._peeked or self._shut or self._closed:
            return None
        return self._sock.fileno()

    def unread(self, data: bytes) -> None:
        self._peeked[:0] = data

    def recv_error(self, exc: OSError) -> ChannelError:
        return self._error(exc)

    def writable_fd(self) -> int | None:
        """The socket's descriptor while it is open (DescriptorStream); only the channel's thread writes it."""
        if self._shut or self._closed:
            return None
        return self._sock.fileno()

    def send_error(self, exc: OSError) -> ChannelError:
        return self._error(exc, sending=True)

    def take_socket(self) -> socket.socket:
        """Hand the socket over (to a TLS layer, say); this stream is then closed. Only before any peek."""
        if self._peeked:
            raise ChannelError(f"{self.name}: bytes already peeked cannot be handed over with the socket")
        with self._close_lock:
            self._closed = True
            sock, self._sock = self._sock, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.close()  # a placeholder: a late close() or shutdown() must not touch the handed-over socket
        return sock

    def shutdown(self) -> None:
        # Under the lock: one thread's close() may race another's shutdown() (a failing run shuts every
        # stream down while the owner closes those it is done with), and a shutdown() on the descriptor
        # close() just released fails with EBADF, or hits whatever socket reused the number.
        with self._close_lock:
            self._shut = True
            if self._closed:
                return
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:  # the peer already went away: nothing left to stop
                    raise ChannelError(f"{self.name}: shutdown failed: {_describe(exc)}") from exc

    def close(self) -> None:
        with self._close_lock:
            self._closed = True
            self._sock.close()

    def _take_peeked(self, view: memoryview) -> int:
        n = min(len(self._peeked), view.nbytes)
        view[:n] = self._peeked[:n]
        del self._peeked[:n]
        return n

    def _ended(self, got: int, size: int) -> ChannelError | TruncatedError:
        """The error for an end of stream after ``got`` of ``size`` bytes."""
        if self._shut:
            return ChannelError(f"{self.name}: shut down")
        return TruncatedError(f"{self.name}: stream ended after {got} of {size} bytes", value=got, limit=size)

    def _error(self, exc: OSError, sending: bool = False) -> ChannelError:
        if self._shut:
            return ChannelError(f"{self.name}: shut down")
        if self._closed:
            return ChannelError(f"{self.name}: closed")
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            if sending and self.send_idle_timeout is not None:
                return ChannelError(
                    f"{self.name}: nothing could be sent for {self.send_idle_timeout:g} s: "
                    "the peer stopped reading (idle timeout)"
                )
            if not sending and self.idle_timeout is not None:
                return ChannelError(
                    f"{self.name}: nothing received for {self.idle_timeout:g} s: the peer stalled (idle timeout)"
                )
        if exc.errno in _PEER_GONE:
            return PeerGoneError(f"{self.name}: {_describe(exc)}")
        return ChannelError(f"{self.name}: {_describe(exc)}")


_PEER_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED)


def _timeval(seconds: float) -> bytes:
    seconds = max(seconds, 0.001)
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))


def _total(buffers: Sequence[Buffer]) -> int:
    """Bytes in ``buffers``; memoryviews (the pages) without wrapping them again, which halves the cost."""
    return sum([b.nbytes if type(b) is memoryview else memoryview(b).nbytes for b in buffers])


def _advance(views: list[memoryview], i: int, n: int) -> int:
    """Account ``n`` more bytes done from ``views[i]`` on; the index of the first unfinished view."""
    while i < len(views) and n >= views[i].nbytes:
        n -= views[i].nbytes
        i += 1
    if n:
        views[i] = views[i][n:]
    return i


class _WakeableListener(abc.ABC):
    """accept() as poll() on a socket plus a wake-up socketpair that close() writes to.

    close() may run while another thread waits in accept(); the sockets are
    released by whichever of them finishes last, so poll() never sees a
    closed (or reused) descriptor.
    """

    address: str

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.address = address
        self._sock = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._closed = False
        self._waiting = 0
        self.idle_timeout: float | None = None  # given to every accepted stream (see listen())

    def accept(self, timeout: float | None = None) -> Stream:
        with self._lock:
            if self._closed:
                raise ChannelError(f"{self.address}: listener closed")
            self._waiting += 1
        try:
            poller = select.poll()  # one per call: a poll object refuses concurrent poll() calls
            poller.register(self._sock, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                wait = None if deadline is None else math.ceil(max(0.0, deadline - time.monotonic()) * 1000)
                ready = poller.poll(wait)
                if self._closed:
                    raise ChannelError(f"{self.address}: listener closed")
                if not ready:
                    raise AcceptTimeout(f"{self.address}: no connection within {timeout:g} s")
                stream = self._take()
                if stream is not None:
                    return stream
        finally:
            with self._lock:
                self._waiting -= 1
                if self._closed and not self._waiting:
                    self._release()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake_w.send(b"\0")
            if not self._waiting:
                self._release()

    @abc.abstractmethod
    def _take(self) -> Stream | None:
        """The connection that made the socket readable; None if it is gone already."""

    def _release(self) -> None:
        self._sock.close()
        self._wake_r.close()
        self._wake_w.close()


class SocketListener(_WakeableListener):
    """A listening tcp, unix or vsock socket as a :class:`Listener`; takes ownership of ``sock``."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        sock.setblocking(False)  # poll() said readable, but the connection may be gone by accept()
        super().__init__(sock, address)
        self._unix_path: tuple[str, int, int] | None = None
        path = sock.getsockname()
        if sock.family == socket.AF_UNIX and isinstance(path, str) and path:  # a file, not an abstract name
            st = os.stat(path)
            self._unix_path = (path, st.st_dev, st.st_ino)

    def _take(self) -> Stream | None:
        try:
            conn, peer = self._sock.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return None
        except OSError as exc:
            raise ChannelError(f"{self.address}: accept failed: {_describe(exc)}") from exc
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            name = str(Address(kind="tcp", host=peer[0], port=peer[1]))
        elif conn.family == socket.AF_UNIX:
            name = self.address  # the connecting end of a unix socket is usually unnamed
        else:
            name = str(Address(kind="vsock", cid=peer[0], port=peer[1]))
        return SocketStream(conn, name, self.idle_timeout)

    def _release(self) -> None:
        super()._release()
        if self._unix_path is not None:
            path, dev, ino = self._unix_path
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):  # only our own socket file, not a newer listener's
                    os.unlink(path)
            except FileNotFoundError:
                pass


def _unix_stream_socket(fd: int, name: str) -> socket.socket:
    """``fd`` wrapped as a socket, checked to be an AF_UNIX stream socket; closes ``fd`` on failure."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        os.close(fd)
        raise ChannelError(f"{name}: not a usable socket: {_describe(exc)}") from exc
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.close()
        raise ChannelError(f"{name}: not an AF_UNIX stream socket")
    return sock


class FdPassingConnector:
    """Opens connections by sending one end of a new socketpair over the AF_UNIX socket ``fd`` (SCM_RIGHTS).

    Takes ownership of ``fd``; ``name`` (default 'fd:N') prefixes the names of the streams.
    """

    def __init__(self, fd: int, name: str | None = None, send_idle_timeout: float | None = None) -> None:
        self.name = name or f"fd:{fd}"
        self._sock = _unix_stream_socket(fd, self.name)
        self._send_idle_timeout = send_idle_timeout

    def connect(self) -> Stream:
        mine, theirs = socket.socketpair()
        try:
            socket.send_fds(self._sock, [b"C"], [theirs.fileno()], _SEND_FLAGS)
        except OSError as exc:
            mine.close()
            raise ChannelError(f"{self.name}: passing a connection failed: {_describe(exc)}") from exc
        finally:
            theirs.close()  # the peer holds its own reference now
        return SocketStream(mine, f"{self.name}#{next(_fd_connections)}", send_idle_timeout=self._send_idle_timeout)

    def close(self) -> None:
        self._sock.close()


class FdPassingListener(_WakeableListener):
    """Accepts the stream sockets an :class:`FdPassingConnector` sends over the AF_UNIX socket ``fd``.

    Takes ownership of ``fd``; ``name`` (default 'fd:N') is the listener's address.
    """

    def __init__(self, fd: int, name: str | None = None) -> None:
        address = name or f"fd:{fd}"
        super().__init__(_unix_stream_socket(fd, address), address)

    def _take(self) -> Stream | None:
        try:
            # MSG_DONTWAIT, not O_NONBLOCK: the file status flags are shared with the embedder's copies of fd.
            data, fds, flags, _ = socket.recv_fds(self._sock, 1, 1, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise ChannelError(f"{self.address}: receiving a connection failed: {_describe(exc)}") from exc
        if not data and not fds:
            raise ChannelError(f"{self.address}: the connecting side closed the socket")
        if len(fds) != 1 or flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            raise ChannelError(f"{self.address}: expected one file descriptor per message, got {len(fds)}")
        try:
            conn = socket.socket(fileno=fds[0])
        except OSError as exc:
            os.close(fds[0])
            raise ChannelError(f"{self.address}: received a descriptor that is no socket: {_describe(exc)}") from exc
        if conn.type != socket.SOCK_STREAM:
            conn.close()
            raise ChannelError(f"{self.address}: received a socket that is not a stream socket")
        return SocketStream(conn, f"{self.address}#{next(_fd_connections)}", self.idle_timeout)


def listen(address: Address, backlog: int = 64, idle_timeout: float | None = None) -> Listener:
    """Listen on a tcp, unix or vsock ``address``, or accept connections passed over the socket ``fd:N``.

    ``idle_timeout`` (seconds, None for none, as QEMU) bounds every wait for data on an accepted
    connection: a peer that stops sending mid-packet, or goes quiet for longer, ends the read
    with a ChannelError instead of a wait forever. It must exceed the longest legitimate silence
    (a channel idle for a whole round, the main channel between FLUSHes).
    """
    listener: FdPassingListener | SocketListener
    if address.kind == "fd":
        listener = FdPassingListener(_dup(address), name=str(address))
        listener.idle_timeout = idle_timeout
        return listener
    family: int
    sockaddr: str | tuple[Any, ...]
    if address.kind == "tcp":
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except OSError as exc:
            raise ChannelError(f"{address}: {_describe(exc)}") from exc
    else:
        family, sockaddr = _sockaddr(address)
    if address.kind == "unix":
        _remove_stale_unix_socket(address)
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ChannelError(f"{address}: cannot create the socket: {_describe(exc)}") from exc
    try:
        if address.kind == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart without waiting out TIME_WAIT
        sock.bind(sockaddr)
        sock.listen(backlog)
        bound = sock.getsockname()
    except OSError as exc:
        sock.close()
        raise ChannelError(f"{address}: cannot listen: {_describe(exc)}") from exc
    if address.kind == "tcp":
        shown = str(Address(kind="tcp", host=bound[0], port=bound[1]))
    elif address.kind == "vsock":
        shown = str(Address(kind="vsock", cid=bound[0], port=bound[1]))
    else:
        shown = str(address)
    listener = SocketListener(sock, shown)
    listener.idle_timeout = idle_timeout
    return listener


def connect(address: Address, timeout: float = 10.0, send_idle_timeout: float | None = None) -> Stream:
    """A stream to a tcp, unix or vsock ``address``, or a new connection passed over the socket ``fd:N``.

    ``timeout`` bounds connecting only (an fd-passed connection does not wait for the peer).
    ``send_idle_timeout`` (seconds, None for none) ends a write that moves no byte for that long
    with a ChannelError: a peer that accepted and stopped reading.
    """
    if address.kind == "fd":
        connector = FdPassingConnector(_dup(address), name=str(address), send_idle_timeout=send_idle_timeout)
        try:
            return connector.connect()
        finally:
            connector.close()
    try:
        if address.kind == "tcp":
            assert address.host is not None and address.port is not None
            sock = socket.create_connection((address.host, address.port), timeout=timeout)
        else:
            family, sockaddr = _sockaddr(address)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
            except OSError:
                sock.close()
                raise
    except OSError as exc:
        raise ChannelError(f"{address}: {_describe(exc)}") from exc
    return SocketStream(sock, str(address), send_idle_timeout=send_idle_timeout)


def _dup(address: Address) -> int:
    """A private copy of the fd of ``address``: the inherited number stays open for later calls."""
    assert address.fd is not None
    try:
        return os.dup(address.fd)
    except OSError as exc:
        raise ChannelError(f"{address}: {_describe(exc)}") from exc


def _sockaddr(address: Address) -> tuple[int, str | tuple[int, int]]:
    """The socket family and socket address of a unix or vsock ``address``."""
    if address.kind == "unix":
        assert address.path is not None
        return socket.AF_UNIX, address.path
    if address.kind == "vsock":
        assert address.cid is not None and address.port is not None
        return socket.AF_VSOCK, (address.cid, address.port)
    raise ChannelError(f"{address}: {address.kind} addresses are not connections (use tcp, unix, vsock or fd)")


def _remove_stale_unix_socket(address: Address) -> None:
    """Unlink a socket file nobody listens on any more; a live one makes listen() fail instead."""
    assert address.path is not None
    try:
        if not stat.S_ISSOCK(os.stat(address.path).st_mode):
            return  # not ours to remove: bind() reports EADDRINUSE
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(address.path)
    except ConnectionRefusedError:
        os.unlink(address.path)
        return
    except OSError:
        return  # let bind() report the problem
    finally:
        probe.close()
    raise ChannelError(f"{address}: another process is listening on this socket")

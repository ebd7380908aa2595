"""A tap between a QEMU migration source and its destination: forward, parse, record, transcode.

The tap listens where the source migrates to and opens one connection to
the destination per accepted connection, in accept order (a QEMU
destination older than the peek-based classification takes the first
connection as the main channel). Each connection is told apart by its first
4 bytes as QEMU's destination does: "QEVM" is the main channel, forwarded
untouched both ways; ``11 22 33 44`` is a multifd channel, parsed with
:class:`mfdcomp.wire.ChannelReader` as it goes, every data payload decoded by
the registered codec of its flag (one receive context per channel, packets in
order).

With ``transcode``, the tap forwards each multifd record only once it is
whole: a data packet's pages are re-encoded by mfdcomp's encoder of that
codec (one send context per channel) and the header's flags,
next_packet_size and extension id are rewritten in place; every other byte
(packet_num, offsets, stale fields of old senders) stays as the source sent
it. Init packets, SYNC packets, packets without pages and device-state
packets pass through unchanged; zero-page-only packets only get the new
codec bits, as QEMU's receivers check them on every packet with pages.

The session ends when the main channel and every other connection have
closed in both directions. The first error ends it at once: every socket is
shut down on both sides and the error names the connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from typing_extensions import Buffer

from mfdcomp.errors import CodecError, MfdcompError
from mfdcomp.methods import Codec, CodecPath, MultiFDMethods, PageViews, choose_path
from mfdcomp.qemu.capture import channel_file_name, write_capture_manifest
from mfdcomp.registry import default_registry, get_codec
from mfdcomp.transport.address import Address, parse_address
from mfdcomp.transport.tls import TlsClient, TlsServer
from mfdcomp.transport.tlsconn import TlsConnection
from mfdcomp.units import format_bytes
from mfdcomp.wire import (
    COMPRESSION_MASK,
    DEFAULT_PAGE_SIZE,
    MULTIFD_MAGIC,
    QEMU_VM_FILE_MAGIC,
    ChannelIds,
    ChannelInit,
    ChannelReader,
    DeviceState,
    EndOfStream,
    Event,
    RamData,
    ReceiverLimits,
    Sync,
    codec_name,
    ram_packet_size,
)

# Bytes read from a socket at a time.
_CHUNK = 1 << 20
# RAM packet header fields the transcoder rewrites (offsets of hdr.flags, next_packet_size, the extension id).
_FLAGS_AT = 8
_NEXT_SIZE_AT = 20
_EXTENSION_AT = 36
_U32 = struct.Struct(">I")
# How often the accept loop looks whether the session ended or the tap is closing.
_POLL = 0.1

Kind = Literal["pending", "main", "multifd", "empty"]


class TapError(MfdcompError):
    """The tap failed: a connection broke, a packet was malformed, or a payload did not decode."""


@dataclass
class ConnectionStats:
    """What one connection carried; updated by its own threads, read by anyone."""

    index: int
    kind: Kind = "pending"
    channel_id: int | None = None
    bytes_in: int = 0
    """source → tap"""
    bytes_out: int = 0
    """tap → destination"""
    bytes_back: int = 0
    """destination → source"""
    packets: int = 0
    data_packets: int = 0
    sync_packets: int = 0
    normal_pages: int = 0
    zero_pages: int = 0
    payload_in: int = 0
    payload_out: int = 0
    device_state_packets: int = 0
    codec_in: str | None = None
    codec_out: str | None = None
    first_byte: float | None = None
    last_byte: float | None = None
    finished: bool = False

    def ratio(self, payload: int, page_size: int) -> float | None:
        """Payload bytes per byte of normal pages (1.0 for none)."""
        raw = self.normal_pages * page_size
        return payload / raw if raw else None

    @property
    def seconds(self) -> float:
        if self.first_byte is None or self.last_byte is None:
            return 0.0
        return self.last_byte - self.first_byte

    @property
    def throughput(self) -> float:
        """Bytes per second from the source, first byte to last."""
        return self.bytes_in / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self, page_size: int) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["first_byte"], data["last_byte"]
        return data | {
            "ratio_in": self.ratio(self.payload_in, page_size),
            "ratio_out": self.ratio(self.payload_out, page_size),
            "seconds": round(self.seconds, 6),
            "throughput_bytes_per_s": self.throughput,
        }


@dataclass
class TapSummary:
    """The session as the tap saw it; ``error`` is the first error's text, if any."""

    listen: str
    to: str
    page_size: int
    transcode: str | None
    record: str | None
    connections: list[ConnectionStats]
    seconds: float
    error: str | None = None

    @property
    def multifd(self) -> list[ConnectionStats]:
        return [c for c in self.connections if c.kind == "multifd"]

    def totals(self) -> dict[str, Any]:
        multifd = self.multifd
        keys = (
            "packets",
            "data_packets",
            "sync_packets",
            "normal_pages",
            "zero_pages",
            "payload_in",
            "payload_out",
            "device_state_packets",
        )
        totals: dict[str, Any] = {key: sum(getattr(c, key) for c in multifd) for key in keys}
        totals["channels"] = len(multifd)
        totals["bytes_in"] = sum(c.bytes_in for c in self.connections)
        totals["bytes_out"] = sum(c.bytes_out for c in self.connections)
        totals["multifd_bytes_in"] = sum(c.bytes_in for c in multifd)
        totals["multifd_bytes_out"] = sum(c.bytes_out for c in multifd)
        raw = totals["normal_pages"] * self.page_size
        totals["ratio_in"] = totals["payload_in"] / raw if raw else None
        totals["ratio_out"] = totals["payload_out"] / raw if raw else None
        totals["throughput_bytes_per_s"] = totals["bytes_in"] / self.seconds if self.seconds > 0 else 0.0
        return totals

    def as_dict(self) -> dict[str, Any]:
        return {
            "listen": self.listen,
            "to": self.to,
            "page_size": self.page_size,
            "transcode": self.transcode,
            "record": self.record,
            "seconds": round(self.seconds, 6),
            "error": self.error,
            "connections": [c.as_dict(self.page_size) for c in self.connections],
            "totals": self.totals(),
        }


def render_table(connections: Sequence[ConnectionStats], page_size: int) -> list[str]:
    """One line per connection: what the live view and the final text summary show."""

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    head = (
        f"{'conn':>4} {'kind':<7} {'ch':>3} {'in':>10} {'out':>10} {'packets':>7} {'pages':>7} "
        f"{'zero':>6} {'SYNC':>4} {'ratio in':>8} {'ratio out':>9} {'MiB/s':>7}"
    )
    lines = [head]
    for c in connections:
        multifd = c.kind == "multifd"
        lines.append(
            f"{c.index:>4} {c.kind:<7} {'' if c.channel_id is None else c.channel_id:>3} "
            f"{format_bytes(c.bytes_in):>10} {format_bytes(c.bytes_out):>10} "
            f"{c.packets if multifd else '':>7} {c.normal_pages if multifd else '':>7} "
            f"{c.zero_pages if multifd else '':>6} {c.sync_packets if multifd else '':>4} "
            f"{ratio(c.ratio(c.payload_in, page_size)) if multifd else '':>8} "
            f"{ratio(c.ratio(c.payload_out, page_size)) if multifd else '':>9} "
            f"{c.throughput / (1 << 20):>7.1f}"
        )
    return lines


class _TlsSocket:
    """A TLS session with the few socket calls the tap makes: the tap then forwards plaintext.

    ``shutdown(SHUT_WR)`` ends one direction with close_notify: a QEMU 10.0 destination
    (multifd-clean-tls-termination) treats a bare end of a TLS channel as an error.
    """

    def __init__(self, conn: TlsConnection) -> None:
        self.conn = conn
        self.write_ended = False

    def recv_into(self, buf: bytearray) -> int:
        try:
            return self.conn.recv_into(memoryview(buf))
        except ConnectionResetError:
            # Our close_notify reached a QEMU that had closed the channel already (it had all it needed): its
            # kernel answers the record with a reset. Plain TCP sends only a FIN there, which resets nothing.
            if self.write_ended:
                return 0
            raise

    def sendmsg(self, buffers: Sequence[Buffer]) -> int:
        data = b"".join(buffers)  # one OpenSSL write: full records, not one per buffer
        self.conn.sendall(data)
        return len(data)

    def sendall(self, data: Buffer) -> None:
        self.conn.sendall(data)

    def shutdown(self, how: int) -> None:
        if how == socket.SHUT_WR:
            self.write_ended = True
            self.conn.close_notify()
        else:
            self.conn.shutdown()

    def close(self) -> None:
        self.conn.close()


def _send_all(sock: socket.socket | _TlsSocket, buffers: Sequence[Buffer]) -> int:
    """Write every buffer, resuming after short writes; the byte count."""
    views = [memoryview(b).cast("B") for b in buffers]
    total = sum(v.nbytes for v in views)
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= views[0].nbytes:
            sent -= views[0].nbytes
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]
    return total


class _RecordFile:
    """One recorded connection; bytes before its name is known (a channel's id) wait in memory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.name: str | None = None
        self.size = 0
        self._file: IO[bytes] | None = None
        self._early = bytearray()

    def open(self, name: str) -> None:
        self.name = name
        self._file = (self.directory / name).open("xb")
        self._file.write(self._early)
        self._early.clear()

    def write(self, data: Buffer) -> None:
        self.size += memoryview(data).nbytes
        if self._file is None:
            self._early += data
        else:
            self._file.write(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _Payload:
    """A received payload as the ``PayloadSource`` a codec reads from."""

    def __init__(self, payload: bytes) -> None:
        self._payload = memoryview(payload)
        self.size = len(payload)

    def read(self) -> memoryview:
        return self._payload

    def read_into(self, views: Sequence[memoryview]) -> None:
        start = 0
        for view in views:
            view[:] = self._payload[start : start + len(view)]
            start += len(view)


def _path_of(codec: Codec) -> CodecPath:
    return choose_path(codec.info, codec.probe()).path


class _Multifd:
    """One multifd channel flowing through the tap (used by its forwarding thread only)."""

    def __init__(self, conn: _Connection, ids: ChannelIds) -> None:
        tap = conn.tap
        self.conn = conn
        self.stats = conn.stats
        self.page_size = tap.page_size
        self.reader = ChannelReader(ReceiverLimits(page_size=tap.page_size), channel_ids=ids)
        self.transcode = tap.transcode_codec
        self.header_size = ram_packet_size(tap.page_size)
        self.pages = memoryview(bytearray(self.reader.limits.capacity * tap.page_size))
        self.recv: MultiFDMethods | None = None
        self.send: MultiFDMethods | None = None
        # Transcoding: stream bytes not yet turned into events, and how many were.
        self.pending = bytearray()
        self.done = 0

    def feed(self, chunk: memoryview) -> None:
        if self.transcode is None:
            self.conn.forward([chunk])
            self.conn.record_in(chunk)
        else:
            self.pending += chunk
        self.reader.feed(chunk)
        self._events()

    def end(self) -> None:
        self.reader.feed_eof()
        self._events()

    def _events(self) -> None:
        for event in self.reader:
            raw = b""
            if self.transcode is not None:
                size = self.reader.consumed - self.done
                raw = bytes(self.pending[:size])
                del self.pending[:size]
                self.done = self.reader.consumed
                self.conn.record_in(raw)
            self._event(event, raw)

    def _event(self, event: Event, raw: bytes) -> None:
        stats = self.stats
        if isinstance(event, ChannelInit):
            stats.channel_id = event.packet.id
            self.conn.name_records(channel_file_name(event.packet.id))
            if self.transcode is not None:
                self.send = self.transcode.methods(self.page_size, None, _path_of(self.transcode))
                self.send.send_setup(event.packet.id)
                stats.codec_out = self.transcode.info.name
            self._pass(raw)
        elif isinstance(event, RamData):
            stats.packets += 1
            if event.packet.has_pages:
                self._data(event, raw)
            else:
                self._pass(raw)
        elif isinstance(event, Sync):
            stats.sync_packets += 1
            if not event.packet.has_pages:
                stats.packets += 1
                self._pass(raw)
            # A SYNC packet with pages came whole as RamData: nothing is left of it here.
        elif isinstance(event, DeviceState):
            stats.device_state_packets += 1
            self._pass(raw)
        else:
            assert isinstance(event, EndOfStream)

    def _pass(self, raw: bytes) -> None:
        """Forward a record unchanged (without transcoding, its bytes went out as they came: ``raw`` is empty)."""
        if raw:
            self.conn.forward([raw])
            self.conn.record_out(raw)

    def _data(self, event: RamData, raw: bytes) -> None:
        packet = event.packet
        pages = self._decode(event)
        payload_out = len(event.payload)
        if self.send is not None:
            header = bytearray(raw[: self.header_size])
            buffers: list[Buffer] = [header]
            flags = packet.flags & ~COMPRESSION_MASK | self.send.flag
            if packet.normal_pages:
                views = PageViews(pages, range(0, len(pages), self.page_size), self.page_size)
                encoded = self.send.send_prepare(views)
                flags |= encoded.flags
                _U32.pack_into(header, _NEXT_SIZE_AT, encoded.size)
                buffers += encoded.buffers
                payload_out = encoded.size
            _U32.pack_into(header, _FLAGS_AT, flags)
            _U32.pack_into(header, _EXTENSION_AT, self.send.extension_id)
            self.conn.forward(buffers)
            for buffer in buffers:
                self.conn.record_out(buffer)
        # Counted together once the packet is through, so a live view's ratios stay consistent.
        stats = self.stats
        stats.data_packets += 1
        stats.normal_pages += packet.normal_pages
        stats.zero_pages += packet.zero_pages
        stats.payload_in += len(event.payload)
        stats.payload_out += payload_out

    def _decode(self, event: RamData) -> memoryview:
        """The packet's normal pages, decoded by the channel's receive context."""
        packet = event.packet
        if self.recv is None:
            flag = packet.flags & COMPRESSION_MASK
            codec = default_registry().for_flag(flag)
            if codec is None:
                raise CodecError(
                    f"no installed codec decodes {codec_name(flag, packet.extension_id)} payloads "
                    f"(flags 0x{packet.flags:x}); install its plugin"
                )
            self.recv = codec.methods(self.page_size, None, _path_of(codec))
            self.recv.recv_setup(self.stats.channel_id or 0)
            self.stats.codec_in = codec.info.name
            # Every later packet of the channel must use the same codec (its stream is this one).
            self.reader.limits = dataclasses.replace(self.reader.limits, codec_flag=flag)
        size = packet.normal_pages * self.page_size
        if size:
            views = PageViews(self.pages, range(0, size, self.page_size), self.page_size)
            self.recv.recv(packet, _Payload(event.payload), views)
        return self.pages[:size]

    def close(self) -> None:
        if self.recv is not None:
            self.recv.recv_cleanup()
        if self.send is not None:
            self.send.send_cleanup()


class _Connection:
    """One accepted connection and its twin to the destination, with a thread for each direction."""

    def __init__(self, tap: Tap, index: int, src: socket.socket | _TlsSocket, dst: socket.socket | _TlsSocket) -> None:
        self.tap = tap
        self.stats = ConnectionStats(index)
        self.src = src
        self.dst = dst
        self.records = [_RecordFile(d) for d in tap.record_dirs]
        self._lock = threading.Lock()
        self._open_directions = 2
        self.threads = [
            threading.Thread(target=self._forward_loop, name=f"mfdcomp-tap-{index}-in", daemon=True),
            threading.Thread(target=self._back_loop, name=f"mfdcomp-tap-{index}-back", daemon=True),
        ]

    def describe(self) -> str:
        s = self.stats
        if s.kind == "multifd" and s.channel_id is not None:
            return f"connection {s.index} (multifd channel {s.channel_id})"
        return f"connection {s.index} ({s.kind})"

    def forward(self, buffers: Sequence[Buffer]) -> None:
        self.stats.bytes_out += _send_all(self.dst, buffers)

    def record_in(self, data: Buffer) -> None:
        """Record what the source sent (the first record directory)."""
        if self.records:
            self.records[0].write(data)

    def record_out(self, data: Buffer) -> None:
        """Record what the destination got when it differs (transcoding: the second record directory)."""
        if len(self.records) > 1:
            self.records[1].write(data)

    def name_records(self, name: str) -> None:
        for record in self.records:
            record.open(name)

    def _forward_loop(self) -> None:
        handler: _Multifd | None = None
        try:
            handler = self._forward()
        except OSError as exc:
            self.tap.fail(TapError(f"source → destination: {exc}"), self)
        except BaseException as exc:
            self.tap.fail(exc, self)
        finally:
            if handler is not None:
                handler.close()
            self._direction_done()

    def _forward(self) -> _Multifd | None:
        stats = self.stats
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        head = bytearray()
        handler: _Multifd | None = None
        main = False
        while n := self.src.recv_into(buf):
            now = time.monotonic()
            if stats.first_byte is None:
                stats.first_byte = now
            stats.last_byte = now
            stats.bytes_in += n
            chunk = view[:n]
            if not main and handler is None:
                head += chunk
                if len(head) < 4:
                    continue
                chunk = memoryview(bytes(head))
                (magic,) = _U32.unpack_from(head)
                if magic == QEMU_VM_FILE_MAGIC:
                    main = True
                    stats.kind = "main"
                    self.name_records(self.tap.main_file_name())
                elif magic == MULTIFD_MAGIC:
                    stats.kind = "multifd"
                    handler = _Multifd(self, self.tap.channel_ids)
                else:
                    raise TapError(
                        f"unknown channel magic {bytes(head[:4]).hex()}: neither QEMU's main stream "
                        f"({QEMU_VM_FILE_MAGIC:08x}) nor a multifd channel ({MULTIFD_MAGIC:08x})"
                    )
            if handler is not None:
                handler.feed(chunk)
            else:
                self.forward([chunk])
                self.record_in(chunk)
                self.record_out(chunk)
        if handler is not None:
            handler.end()
        elif not main:
            if head:
                raise TapError(f"closed after {len(head)} bytes, before the 4 that tell its kind")
            stats.kind = "empty"
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        return handler

    def _back_loop(self) -> None:
        try:
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            while n := self.dst.recv_into(buf):
                self.stats.bytes_back += n
                self.src.sendall(view[:n])
            with contextlib.suppress(OSError):
                self.src.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.tap.fail(TapError(f"destination → source: {exc}"), self)
        except BaseException as exc:
            self.tap.fail(exc, self)
        finally:
            self._direction_done()

    def _direction_done(self) -> None:
        with self._lock:
            self._open_directions -= 1
            last = self._open_directions == 0
        if last:
            self.close()
            self.stats.finished = True
            self.tap.connection_finished()

    def shutdown(self) -> None:
        """Wake both threads: their sockets end in both directions."""
        for sock in (self.src, self.dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.src.close()
        self.dst.close()
        for record in self.records:
            record.close()


def _socket_for(address: Address) -> tuple[socket.socket, Any]:
    if address.kind == "tcp":
        assert address.host is not None and address.port is not None
        family, _, _, _, sockaddr = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)[0]
        return socket.socket(family, socket.SOCK_STREAM), sockaddr
    if address.kind == "unix":
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), address.path
    raise TapError(f"the tap works on tcp: and unix: addresses, not {address}")


class Tap:
    """Forwards one migration from ``listen`` to ``to``; see the module text.

    ``record`` is a directory for one file per connection (what the source
    sent, in the layout :func:`mfdcomp.qemu.replay.replay_capture` reads);
    with ``transcode`` too, ``record/transcoded`` holds what the destination
    got. :meth:`start` listens, :meth:`finished` waits for the session's end,
    :meth:`close` stops everything and returns the summary.
    """

    def __init__(
        self,
        listen: str,
        to: str,
        *,
        record: Path | None = None,
        transcode: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        connect_timeout: float = 10.0,
        tls_creds: Path | None = None,
        tls_hostname: str | None = None,
    ) -> None:
        try:
            self.listen_address = parse_address(listen)
            self.to_address = parse_address(to)
        except ValueError as exc:
            raise TapError(str(exc)) from None
        self.page_size = page_size
        self.connect_timeout = connect_timeout
        # TLS: the tap is the source's server (server-cert.pem) and the destination's client (client-cert.pem).
        self.tls_server = TlsServer.load(tls_creds) if tls_creds is not None else None
        self.tls_client = TlsClient.load(tls_creds, tls_hostname) if tls_creds is not None else None
        self.transcode_codec = get_codec(transcode) if transcode is not None else None
        if self.transcode_codec is not None:
            _path_of(self.transcode_codec)  # an encoder that cannot run here fails now, not mid-migration
        self.record = record
        self.record_dirs: list[Path] = []
        if record is not None:
            self.record_dirs = [record] + ([record / "transcoded"] if transcode is not None else [])
            for directory in self.record_dirs:
                directory.mkdir(parents=True, exist_ok=True)
                taken = [p.name for p in directory.iterdir() if p.suffix == ".bin"]
                if taken:
                    raise TapError(f"record directory {directory} already holds {', '.join(sorted(taken))}")
        self.channel_ids = ChannelIds()
        self.bound: str | None = None
        self._listener: socket.socket | None = None
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._closing = threading.Event()
        self._error: str | None = None
        self._mains = 0
        self._accept_thread: threading.Thread | None = None
        self._summary: TapSummary | None = None

    def start(self) -> str:
        """Listen, and return the address the source should migrate to (a tcp port 0 resolved)."""
        sock, sockaddr = _socket_for(self.listen_address)
        try:
            if self.listen_address.kind == "tcp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            elif self.listen_address.path is not None and os.path.exists(self.listen_address.path):
                raise TapError(f"{self.listen_address.path} exists; remove it or listen elsewhere")
            sock.bind(sockaddr)
            sock.listen(64)
            sock.settimeout(_POLL)
        except OSError as exc:
            sock.close()
            raise TapError(f"cannot listen on {self.listen_address}: {exc.strerror or exc}") from exc
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        if self.listen_address.kind == "tcp":
            host, port = sock.getsockname()[:2]
            self.bound = str(Address(kind="tcp", host=host, port=port))
        else:
            self.bound = str(self.listen_address)
        self._accept_thread = threading.Thread(target=self._accept_loop, name="mfdcomp-tap-accept", daemon=True)
        self._accept_thread.start()
        return self.bound

    def _accept_loop(self) -> None:
        assert self._listener is not None
        index = 0
        while not (self._ended.is_set() or self._closing.is_set()):
            try:
                src, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._closing.is_set():
                    self.fail(TapError(f"accept on {self.bound} failed: {exc}"), None)
                return
            try:
                conn = self._connect(index, src)
            except BaseException as exc:
                src.close()
                self.fail(exc, None)
                return
            index += 1
            with self._lock:
                self._connections.append(conn)
            for thread in conn.threads:
                thread.start()

    def _connect(self, index: int, src: socket.socket) -> _Connection:
        src.settimeout(None)
        dst, sockaddr = _socket_for(self.to_address)
        try:
            dst.settimeout(self.connect_timeout)
            dst.connect(sockaddr)
            dst.settimeout(None)
        except OSError as exc:
            dst.close()
            raise TapError(f"connection {index}: cannot reach the destination {self.to_address}: {exc}") from exc
        for sock in (src, dst):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                # Records leave as soon as they are whole, as QEMU's own multifd channels do.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls_server is None or self.tls_client is None:
            return _Connection(self, index, src, dst)
        return _Connection(self, index, *self._secure(index, src, dst))

    def _secure(self, index: int, src: socket.socket, dst: socket.socket) -> tuple[_TlsSocket, _TlsSocket]:
        """Both TLS handshakes, here in accept order: a QEMU destination takes its first TLS channel as the main one."""
        assert self.tls_server is not None and self.tls_client is not None
        deadline = time.monotonic() + self.connect_timeout
        name = f"connection {index}"
        hostname = self.tls_client.hostname or self.to_address.host or "localhost"
        inner = TlsConnection(src, f"{name} (source side)", self.tls_server.context, server_side=True)
        outer = TlsConnection(
            dst, f"{name} (destination side)", self.tls_client.context, server_side=False, hostname=hostname
        )
        try:
            inner.handshake(deadline)
            outer.handshake(deadline)
        except BaseException as exc:
            inner.close()
            outer.close()
            raise TapError(f"{name}: {exc}") from exc
        return _TlsSocket(inner), _TlsSocket(outer)

    def main_file_name(self) -> str:
        with self._lock:
            self._mains += 1
            return "main.bin" if self._mains == 1 else f"main{self._mains}.bin"

    def fail(self, exc: BaseException, conn: _Connection | None) -> None:
        """Record the first error and end the session: every connection is shut down both ways."""
        with self._lock:
            first = self._error is None and not self._closing.is_set()
            if first:
                where = f"{conn.describe()}: " if conn is not None else ""
                self._error = f"{where}{exc}" if str(exc) else f"{where}{type(exc).__name__}"
            connections = list(self._connections)
        if first:
            for other in connections:
                other.shutdown()
            self._ended.set()

    def connection_finished(self) -> None:
        with self._lock:
            done = self._mains > 0 and all(c.stats.finished for c in self._connections)
        if done:
            self._ended.set()

    def finished(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the session to end (cleanly or not); whether it has."""
        return self._ended.wait(timeout)

    @property
    def error(self) -> str | None:
        return self._error

    def snapshot(self) -> list[ConnectionStats]:
        """Copies of every connection's statistics, for a live view."""
        with self._lock:
            return [dataclasses.replace(c.stats) for c in self._connections]

    def summary(self) -> TapSummary:
        """The session so far; its seconds run from the first byte of any connection to the last."""
        connections = self.snapshot()
        firsts = [c.first_byte for c in connections if c.first_byte is not None]
        lasts = [c.last_byte for c in connections if c.last_byte is not None]
        return TapSummary(
            listen=self.bound or str(self.listen_address),
            to=str(self.to_address),
            page_size=self.page_size,
            transcode=self.transcode_codec.info.name if self.transcode_codec is not None else None,
            record=str(self.record) if self.record is not None else None,
            connections=connections,
            seconds=max(lasts) - min(firsts) if firsts and lasts else 0.0,
            error=self._error,
        )

    def close(self) -> TapSummary:
        """Stop listening, end every connection, write the record manifests; the summary (idempotent)."""
        if self._summary is not None:
            return self._summary
        self._closing.set()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.shutdown()
        if self._accept_thread is not None:
            self._accept_thread.join()
        for conn in connections:
            for thread in conn.threads:
                thread.join()
        if self._listener is not None:
            self._listener.close()
            if self.listen_address.kind == "unix" and self.listen_address.path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.listen_address.path)
        summary = self.summary()
        self._write_manifests(connections, summary)
        self._summary = summary
        return summary

    def _write_manifests(self, connections: list[_Connection], summary: TapSummary) -> None:
        for number, directory in enumerate(self.record_dirs):
            main_file: str | None = None
            channels: dict[int, dict[str, Any]] = {}
            listed: list[dict[str, Any]] = []
            for conn in connections:
                record = conn.records[number]
                facts = conn.stats.as_dict(self.page_size) | {"file": record.name, "recorded_bytes": record.size}
                listed.append(facts)
                if conn.stats.kind == "main" and main_file is None:
                    main_file = record.name
                elif conn.stats.kind == "multifd" and conn.stats.channel_id is not None:
                    channels[conn.stats.channel_id] = facts
            extra = {
                "tool": "mfdcomp tap",
                "recorded": "what the destination received" if number else "what the source sent",
                "transcode": summary.transcode,
                "connections": listed,
                "error": summary.error,
            }
            write_capture_manifest(
                directory, page_size=self.page_size, main_file=main_file, channels=channels, extra=extra
            )

    def __enter__(self) -> Tap:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

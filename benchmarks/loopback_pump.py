"""How fast Python can pump multifd-sized messages over loopback sockets.

Usage: python benchmarks/loopback_pump.py [--transport tcp|unix] [--connections N]
                                           [--size 1G] [--via-stream] [--bufsize B]
                                           [--tls-creds DIR] [--repeats R] [--json]

Two processes (this one receives, a child it starts sends) move ``--size``
bytes of pages over ``--connections`` parallel connections, one thread per
connection on each side, in messages shaped like a multifd packet without
compression: a 1344-byte header plus 128 views of 4 KiB pages (512 KiB).

* default, the plain pump: ``sock.sendmsg([header, *pages])`` and
  ``recv_into(header)`` + ``recv_into(payload)`` written directly. Its GB/s is
  the loopback limit a transfer engine is compared to.
* ``--via-stream``: the same through mfdcomp's ``listen``/``connect`` and
  ``SocketStream.send_all`` / ``recv_exact_into`` / ``recv_into_all`` (128 views).

``--image PATH`` moves the pages of that image instead (mapped as `mfdcomp
send` maps it, message m on connection m mod N) into a fresh target file
created as `mfdcomp recv` creates it, inside the timed window: the limit for
an engine moving the same bytes between the same kinds of memory.

``--tls-creds DIR`` (plain pump): every connection under TLS with mfdcomp's
own contexts from that QEMU-layout directory (mutual authentication, the
handshakes before the timing starts), Python's ``ssl`` on blocking sockets: a
message is its header and pages packed into one buffer and written with
``sendall``, read with ``recv_into`` until whole. The limit for a TLS transfer.

Unix sockets get the send buffer mfdcomp's streams use
(mfdcomp.transport.sockets.UNIX_SEND_BUFFER), so both move bytes through the
same socket; ``--bufsize B`` sets SO_SNDBUF and SO_RCVBUF on both ends
instead (plain pump only), to see whether other sizes help. GB/s counts page bytes (10**9),
timed on the receiver from the "go" byte it sends to the last byte received;
the best of ``--repeats`` runs is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mfdcomp.clients.ram import RamClient
from mfdcomp.transport.address import parse_address
from mfdcomp.transport.base import Stream
from mfdcomp.transport.sockets import connect, listen, widen_unix_send_buffer
from mfdcomp.transport.tls import TlsClient, TlsServer
from mfdcomp.transport.tlscreds import SERVER_NAMES
from mfdcomp.units import parse_size

HEADER = 1344
PAGE = 4096
PAGES = 128
MESSAGE = PAGE * PAGES
REGION = 64 << 20  # pages cycle through a 64 MiB region: larger than the caches, like guest RAM
VIEWS_PER_REGION = REGION // MESSAGE


def region_views(region: bytearray | memoryview) -> list[list[memoryview]]:
    """For each message slot of ``region``, its 128 page views."""
    mv = memoryview(region)
    return [
        [mv[m * MESSAGE + p * PAGE : m * MESSAGE + (p + 1) * PAGE] for p in range(PAGES)]
        for m in range(VIEWS_PER_REGION)
    ]


def share(messages: int, connections: int, index: int) -> int:
    """Messages carried by connection ``index``."""
    return messages // connections + (1 if index < messages % connections else 0)


Slots = Callable[[int], list[memoryview]]
"""The page views of the m-th message a connection sends."""


def cycling(slots: list[list[memoryview]]) -> Slots:
    return lambda m: slots[m % VIEWS_PER_REGION]


def image_slots(image: memoryview, index: int, connections: int) -> Slots:
    """Connection ``index`` sends messages index, index + N, ... of the image."""

    def slot(m: int) -> list[memoryview]:
        base = (index + m * connections) * MESSAGE
        return [image[base + p * PAGE : base + (p + 1) * PAGE] for p in range(PAGES)]

    return slot


def plain_send(sock: socket.socket, count: int, slots: Slots) -> None:
    header = bytes(HEADER)
    total = HEADER + MESSAGE
    for m in range(count):
        buffers: list[Any] = [header, *slots(m)]
        sent = sock.sendmsg(buffers)
        while sent < total:  # a partial write: finish it the simple way, it is rare on blocking sockets
            rest = b"".join(buffers)[sent:]
            sent += sock.send(rest)


def tls_send(sock: ssl.SSLSocket, count: int, slots: Slots) -> None:
    """As plain_send under TLS: header and pages packed into one buffer, a write of many records."""
    message = bytearray(HEADER + MESSAGE)
    packed = memoryview(message)
    for m in range(count):
        at = HEADER
        for page in slots(m):
            packed[at : at + PAGE] = page
            at += PAGE
        sock.sendall(packed)


def plain_recv_exact(sock: socket.socket, view: memoryview) -> None:
    # An SSLSocket takes no flags, and gives a record per call whatever it is asked for.
    flags = 0 if isinstance(sock, ssl.SSLSocket) else socket.MSG_WAITALL
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], 0, flags)
        if n == 0:
            raise EOFError("sender ended early")
        got += n


def plain_recv(sock: socket.socket, count: int, region: memoryview, index: int = 0, stride: int = 0) -> None:
    """Message m lands at slot m of a cycling region, or at (index + m * stride) of a whole image."""
    header = memoryview(bytearray(HEADER))
    for m in range(count):
        plain_recv_exact(sock, header)
        off = (index + m * stride) * MESSAGE if stride else (m % VIEWS_PER_REGION) * MESSAGE
        plain_recv_exact(sock, region[off : off + MESSAGE])


def stream_send(stream: Stream, count: int, slots: Slots) -> None:
    header = bytes(HEADER)
    for m in range(count):
        stream.send_all([header, *slots(m)])


def stream_recv(stream: Stream, count: int, region: memoryview) -> None:
    header = memoryview(bytearray(HEADER))
    slots = region_views(region)
    for m in range(count):
        if stream.recv_exact_into(header) == 0:
            raise EOFError("sender ended early")
        stream.recv_into_all(slots[m % VIEWS_PER_REGION])


def set_bufsize(sock: socket.socket, size: int) -> None:
    if size:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    elif sock.family == socket.AF_UNIX:
        widen_unix_send_buffer(sock)


def run_threads(target: Callable[[int], None], connections: int) -> None:
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def sender(args: argparse.Namespace) -> None:
    """The child: connect, wait for the go byte on every connection, send."""
    messages = args.size // MESSAGE
    address = parse_address(args.address)
    if args.image:
        ram = RamClient.from_images([args.image])
        image = ram.blocks["ram0"].memory
        slot_of = [image_slots(image, i, args.connections) for i in range(args.connections)]
    else:
        slot_of = [cycling(region_views(bytearray(os.urandom(REGION))))] * args.connections
    if args.via_stream:
        streams = [connect(address) for _ in range(args.connections)]

        def send_one(i: int) -> None:
            if streams[i].recv_exact_into(memoryview(bytearray(1))) == 0:
                raise EOFError("no go byte")
            stream_send(streams[i], share(messages, args.connections, i), slot_of[i])
            streams[i].close()

        run_threads(send_one, args.connections)
        return
    socks = []
    client = TlsClient.load(Path(args.tls_creds)).context if args.tls_creds else None
    for _ in range(args.connections):
        if address.kind == "tcp":
            sock = socket.create_connection((address.host, address.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            assert address.path is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(address.path)
        set_bufsize(sock, args.bufsize)
        if client is not None:
            sock = client.wrap_socket(sock, server_hostname=address.host or SERVER_NAMES[0])
        socks.append(sock)

    def send_plain(i: int) -> None:
        sock = socks[i]
        if sock.recv(1) != b"g":
            raise EOFError("no go byte")
        count = share(messages, args.connections, i)
        if isinstance(sock, ssl.SSLSocket):
            tls_send(sock, count, slot_of[i])
        else:
            plain_send(sock, count, slot_of[i])
        sock.close()

    run_threads(send_plain, args.connections)


def plain_listener(transport: str, workdir: str) -> tuple[socket.socket, str]:
    if transport == "tcp":
        sock = socket.create_server(("127.0.0.1", 0))
        return sock, f"tcp:127.0.0.1:{sock.getsockname()[1]}"
    path = f"{workdir}/plain.sock"
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    return sock, f"unix:{path}"


def accept_all(server: socket.socket, args: argparse.Namespace) -> list[socket.socket]:
    """The sender's connections, each under TLS with --tls-creds (its handshake done here)."""
    server.settimeout(60)
    context = TlsServer.load(Path(args.tls_creds)).context if args.tls_creds else None
    socks = []
    for _ in range(args.connections):  # each handshake before the next connection: the sender's order
        sock = server.accept()[0]
        socks.append(sock if context is None else context.wrap_socket(sock, server_side=True))
    server.close()
    for sock in socks:
        sock.settimeout(None)
        set_bufsize(sock, args.bufsize)
    return socks


def child_argv(args: argparse.Namespace, address: str, size: int) -> list[str]:
    argv = [sys.executable, __file__, "--role=send", f"--address={address}", f"--connections={args.connections}"]
    argv += [f"--size={size}", f"--bufsize={args.bufsize}"]
    argv += [f"--image={args.image}"] if args.image else []
    argv += [f"--tls-creds={args.tls_creds}"] if args.tls_creds else []
    return argv + (["--via-stream"] if args.via_stream else [])


def one_run(args: argparse.Namespace, workdir: str) -> float:
    """Seconds of one transfer, measured on this (receiving) side."""
    messages = args.size // MESSAGE
    n = args.connections
    if args.image:
        if args.via_stream:
            raise SystemExit("--image works with the plain pump only")
        return image_run(args, workdir)
    regions = [bytearray(b"\xff") * REGION for _ in range(n)]  # written now: no page faults later
    if args.via_stream:
        listener = listen(parse_address("tcp:127.0.0.1:0" if args.transport == "tcp" else f"unix:{workdir}/s.sock"))
        address = listener.address
    else:
        server, address = plain_listener(args.transport, workdir)
    child = subprocess.Popen(child_argv(args, address, args.size))
    try:
        if args.via_stream:
            streams = [listener.accept(timeout=60) for _ in range(n)]
            listener.close()
            start = time.perf_counter()
            for stream in streams:
                stream.send_all([b"g"])
            run_threads(lambda i: stream_recv(streams[i], share(messages, n, i), memoryview(regions[i])), n)
        else:
            socks = accept_all(server, args)
            start = time.perf_counter()
            for sock in socks:
                sock.sendall(b"g")
            run_threads(lambda i: plain_recv(socks[i], share(messages, n, i), memoryview(regions[i])), n)
        seconds = time.perf_counter() - start
        if child.wait(timeout=60) != 0:
            raise RuntimeError(f"sender exited with {child.returncode}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return seconds


def image_run(args: argparse.Namespace, workdir: str) -> float:
    """The image into a fresh populated target file; seconds from accepting to the last byte."""
    n = args.connections
    size = os.stat(args.image).st_size
    messages = size // MESSAGE
    server, address = plain_listener(args.transport, workdir)
    child = subprocess.Popen(child_argv(args, address, size))
    try:
        socks = accept_all(server, args)
        start = time.perf_counter()
        with RamClient.create_targets([("ram0", size)], lambda _: f"{workdir}/target.img") as target:
            for sock in socks:
                sock.sendall(b"g")
            memory = target.blocks["ram0"].memory
            run_threads(lambda i: plain_recv(socks[i], share(messages, n, i), memory, i, n), n)
            seconds = time.perf_counter() - start
        if child.wait(timeout=60) != 0:
            raise RuntimeError(f"sender exited with {child.returncode}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=("tcp", "unix"), default="tcp")
    parser.add_argument("--connections", type=int, default=1, metavar="N")
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="page bytes to move (1G)")
    parser.add_argument("--via-stream", action="store_true", help="use mfdcomp's SocketStream")
    parser.add_argument(
        "--bufsize", type=parse_size, default=0, help="SO_SNDBUF/SO_RCVBUF, plain pump (kernel default)"
    )
    parser.add_argument("--image", metavar="PATH", help="move this image's pages into a fresh target file")
    parser.add_argument("--tls-creds", metavar="DIR", help="TLS on every connection, QEMU's x509 layout (plain pump)")
    parser.add_argument("--repeats", type=int, default=3, metavar="R")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--role", choices=("receive", "send"), default="receive", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tls_creds and args.via_stream:
        parser.error("--tls-creds works with the plain pump only")
    if args.role == "send":
        sender(args)
        return 0
    size = os.stat(args.image).st_size if args.image else args.size
    bytes_moved = size // MESSAGE * MESSAGE
    with tempfile.TemporaryDirectory() as workdir:
        runs = [one_run(args, workdir) for _ in range(args.repeats)]
    rates = [bytes_moved / s / 1e9 for s in runs]
    mode = "image" if args.image else "stream" if args.via_stream else "plain"
    mode += "+TLS" if args.tls_creds else ""
    if args.json:
        print(
            json.dumps(
                {
                    "transport": args.transport,
                    "connections": args.connections,
                    "bytes": bytes_moved,
                    "mode": mode,
                    "bufsize": args.bufsize,
                    "gb_per_s": max(rates),
                    "runs_gb_per_s": rates,
                }
            )
        )
    else:
        shown = ", ".join(f"{r:.2f}" for r in rates)
        print(f"{mode} {args.transport} x{args.connections}: {max(rates):.2f} GB/s (best of {shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

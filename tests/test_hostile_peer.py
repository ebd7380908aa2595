"""A hostile peer against a real destination: Incoming over real unix sockets, one test per case.

Each case ends within 10 s with the right typed error at the receiver, the
error's text on the main channel for the peer, and a clean exit of both ends:
the destination's threads joined, its sockets closed, the peer's connections
ended. The cases already in ``test_engine_faults.py`` (wrong uuid, duplicate
id, id == channels, a connection beyond the announced channels, an unknown
connection magic, a channel that never sends its init packet, an unknown
block) are not repeated here.

The QEMU 7.2 stale ``next_packet_size`` case goes the other way: the real
7.2 capture's channels, sent over real sockets, must be accepted as QEMU
accepts them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine.incoming import Incoming, IncomingResult
from mfdcomp.errors import ChannelError, ChannelIdError, MfdcompError, WireError
from mfdcomp.registry import default_registry, get_codec
from mfdcomp.testing import AnonymousTargets
from mfdcomp.transport.address import parse_address
from mfdcomp.transport.sockets import listen
from mfdcomp.wire import (
    EXTENSION,
    MAX_PAYLOAD,
    DeviceStatePacket,
    Flag,
    InitPacket,
    RamPacket,
    ram_packet_size,
)
from tests.test_fuzz_wire import capture_dirs

PS = 4096
BLOCK = 1 << 20
DEADLINE = 10.0

# An exception escaping a thread of the destination (instead of ending as its typed error) fails the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def open_fds() -> dict[int, str]:
    """Open descriptors of this process and what they are."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used is gone
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


def mfdcomp_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mfdcomp-")]


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every case leaves the thread count and the open descriptors where it found them."""
    threads, fds = set(threading.enumerate()), open_fds()
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        new_threads = set(threading.enumerate()) - threads
        new_fds = {fd: what for fd, what in open_fds().items() if fds.get(fd) != what}
        if not new_threads and not new_fds:
            break
        time.sleep(0.02)
    assert not new_threads, f"threads left running: {new_threads}"
    assert not new_fds, f"descriptors left open: {new_fds}"


class Peer:
    """A hand-driven source: a real main channel, then whatever channels and bytes a test sends.

    The destination is a real :class:`Incoming` on a unix socket, in a thread.
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        channels: int = 2,
        codec: str = "none",
        blocks: list[tuple[str, int]] | None = None,
        uuid: bytes | None = None,
        connect_timeout: float = 5.0,
        opening: bytes | None = None,
        idle_timeout: float | None = None,
        session_body: bytes | None = None,
    ) -> None:
        self.uuid = uuid if uuid is not None else uuidlib.uuid4().bytes
        self.channels = channels
        self.codec = get_codec(codec)
        self.blocks = blocks or [("ram0", BLOCK)]
        self.path = str(tmp_path / "dst.sock")
        self.targets = AnonymousTargets()
        self.incoming = Incoming(
            listen(parse_address(f"unix:{self.path}"), idle_timeout=idle_timeout),
            make_targets=self.targets,
            digests=self.targets.digests,
            find_codec=get_codec,
            connect_timeout=connect_timeout,
        )
        self.error: BaseException | None = None
        self.result: IncomingResult | None = None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="hostile-destination")
        self.thread.start()
        self.sockets: list[socket.socket] = []
        self.main = self.open()
        session = mc.Session(
            uuid=self.uuid.hex(),
            page_size=PS,
            channels=channels,
            codec=codec,
            level=None,
            zero_page_detection="multifd",
            blocks=self.blocks,
        )
        body = session.to_json() if session_body is None else session_body
        self.main.sendall((opening if opening is not None else mc.opening()) + mc.encode(mc.Message.SESSION, body))

    def _run(self) -> None:
        try:
            self.result = self.incoming.run()
        except BaseException as exc:
            self.error = exc

    def open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        self.sockets.append(sock)
        return sock

    def channel(self, channel_id: int, **fields: Any) -> socket.socket:
        sock = self.open()
        sock.sendall(InitPacket(uuid=fields.pop("uuid", self.uuid), id=channel_id, **fields).encode())
        return sock

    def all_channels(self) -> list[socket.socket]:
        return [self.channel(i) for i in range(self.channels)]

    @property
    def flag(self) -> int:
        info = self.codec.info
        return EXTENSION if info.qemu_flag is None else info.qemu_flag

    def data(self, normal: list[int], zero: Sequence[int] = (), **changes: Any) -> RamPacket:
        """A valid data packet of this session, with ``changes`` applied to its fields."""
        packet = RamPacket.data(
            flags=self.flag,
            ramblock="ram0",
            normal=normal,
            zero=list(zero),
            next_packet_size=len(normal) * PS,
            packet_num=0,
            extension_id=self.codec.info.extension_id or 0,
        )
        return dataclasses.replace(packet, **changes)

    def send_main(self, *kinds: mc.Message) -> None:
        for kind in kinds:
            self.main.sendall(mc.encode(kind))

    def finish(self) -> BaseException | None:
        """Wait for the destination; close every connection of the peer."""
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), f"destination still running {DEADLINE} s later"
        self.elapsed = time.monotonic() - self.started
        assert self.elapsed < DEADLINE
        self.main_text = self._drain_main()
        for sock in self.sockets:
            sock.close()
        self.targets.close()
        return self.error

    def _drain_main(self) -> str:
        """What the destination wrote on the main channel, up to its end (it must end: clean exit)."""
        self.main.settimeout(5)
        data = b""
        try:
            while chunk := self.main.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        return data.decode(errors="replace")


def refused(peer: Peer, kind: type[MfdcompError], field: str | None = None, text: str = "") -> MfdcompError:
    """The destination ended with ``kind`` (and ``field``), and told the peer on the main channel."""
    error = peer.finish()
    assert isinstance(error, kind), f"expected {kind.__name__}, got {error!r}"
    if field is not None:
        assert isinstance(error, WireError) and error.field == field, f"field {getattr(error, 'field', None)!r}"
    assert text in str(error)
    assert str(error)[:40] in peer.main_text or text in peer.main_text, peer.main_text
    return error


# --- init packets and the main channel -----------------------------------------------------------


def test_wrong_version_in_an_init_packet_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    peer.channel(0, version=2)
    refused(peer, WireError, "version", "version 2")


def test_init_packet_magic_then_garbage_is_refused(tmp_path: Path) -> None:
    """The first 4 bytes say multifd, the rest is no init packet of this session."""
    peer = Peer(tmp_path)
    sock = peer.open()
    sock.sendall(b"\x11\x22\x33\x44" + os.urandom(60))
    refused(peer, WireError)


def test_wrong_main_channel_version_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path, opening=mc.OPENING.pack(mc.MAIN_MAGIC, mc.MAIN_VERSION + 1))
    error = peer.finish()
    assert isinstance(error, WireError) and error.field == "version"
    assert f"main-channel version {mc.MAIN_VERSION + 1}, this mfdcomp 2 and 3" in str(error)


def test_a_second_main_channel_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    peer.open().sendall(mc.opening())
    refused(peer, ChannelError, None, "second main channel")


def test_channel_id_255_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path, channels=255)
    peer.channel(255)
    error = refused(peer, ChannelIdError, "id")
    assert isinstance(error, ChannelIdError) and error.value == 255 and error.limit == 254


def test_unknown_main_message_type_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    peer.main.sendall(mc.MESSAGE.pack(99, 0))
    refused(peer, WireError, "type")


def test_oversize_main_message_is_refused_before_it_is_read(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    peer.main.sendall(mc.MESSAGE.pack(mc.Message.ZERO, 0xFFFFFFFF))
    refused(peer, WireError, "length")


def test_zero_message_outside_the_block_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    peer.main.sendall(mc.encode_zero("ram0", [BLOCK]))
    refused(peer, WireError, "offset")


# --- fewer channels than announced ---------------------------------------------------------------


@pytest.mark.parametrize("message", [mc.Message.FLUSH, mc.Message.EOS], ids=["FLUSH", "EOS"])
def test_fewer_channels_than_announced_end_within_the_connect_timeout(tmp_path: Path, message: mc.Message) -> None:
    """The session announces 3 channels, 2 connect and work: the FLUSH (or EOS) cannot wait forever."""
    peer = Peer(tmp_path, channels=3, connect_timeout=2.0)
    for sock in (peer.channel(0), peer.channel(1)):
        sock.sendall(RamPacket.sync(0).encode())
    peer.send_main(message)
    error = refused(peer, ChannelError, None, "waiting for all 3 channels to connect")
    assert "timed out after 2 s" in str(error)
    assert 2.0 <= peer.elapsed < 2.0 + 5


# --- RAM packets ---------------------------------------------------------------------------------


def _send(peer: Peer, packet: RamPacket, payload: bytes = b"") -> None:
    sock = peer.all_channels()[0]
    sock.sendall(packet.encode() + payload)


def test_wrong_magic_in_a_ram_packet_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    _send(peer, peer.data([0], magic=0x11223345), bytes(PS))
    refused(peer, WireError, "magic")


def test_wrong_version_in_a_ram_packet_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    _send(peer, peer.data([0], version=0), bytes(PS))
    refused(peer, WireError, "version")


@pytest.mark.parametrize("offset", [BLOCK, BLOCK - PS + 1, 1 << 63, (1 << 64) - PS])
def test_offsets_beyond_the_block_are_refused(tmp_path: Path, offset: int) -> None:
    peer = Peer(tmp_path)
    _send(peer, peer.data([0, offset]), bytes(2 * PS))
    refused(peer, WireError, "offset")


@pytest.mark.parametrize("offset", [1, PS // 2, PS + 8])
def test_offsets_not_page_aligned_are_refused(tmp_path: Path, offset: int) -> None:
    peer = Peer(tmp_path)
    _send(peer, peer.data([offset]), bytes(PS))
    refused(peer, WireError, "offset", "is not a page")


def test_zero_page_offset_beyond_the_block_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    _send(peer, peer.data([0], [BLOCK]), bytes(PS))
    refused(peer, WireError, "offset")


@pytest.mark.parametrize("pages_alloc", [129, 0xFFFFFFFF])
def test_pages_alloc_beyond_the_packet_capacity_is_refused(tmp_path: Path, pages_alloc: int) -> None:
    peer = Peer(tmp_path)
    _send(peer, peer.data([0], pages_alloc=pages_alloc), bytes(PS))
    refused(peer, WireError, "pages_alloc")


@pytest.mark.parametrize(
    ("normal", "zero", "field"),
    [(129, 0, "normal_pages"), (100, 29, "zero_pages"), (1, 0xFFFFFFFF, "zero_pages"), (0xFFFFFFFF, 1, "normal_pages")],
)
def test_normal_plus_zero_beyond_capacity_is_refused(tmp_path: Path, normal: int, zero: int, field: str) -> None:
    peer = Peer(tmp_path)
    _send(peer, peer.data([0], normal_pages=normal, zero_pages=zero), bytes(PS))
    refused(peer, WireError, field)


def test_sync_with_the_device_state_flag_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    packet = DeviceStatePacket("0000:00:02.0/vfio", 0, 16, flags=Flag.DEVICE_STATE | Flag.SYNC)
    peer.all_channels()[0].sendall(packet.encode() + bytes(16))
    refused(peer, WireError, "flags", "SYNC")


def test_device_state_without_a_device_client_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    packet = DeviceStatePacket("0000:00:02.0/vfio", 0, 16)
    peer.all_channels()[0].sendall(packet.encode() + bytes(16))
    refused(peer, WireError, "flags", "no device-state client")


def test_oversize_device_state_blob_is_refused_before_it_is_read(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    packet = DeviceStatePacket("0000:00:02.0/vfio", 0, MAX_PAYLOAD + 1)
    peer.all_channels()[0].sendall(packet.encode())
    refused(peer, WireError, "next_packet_size")


@pytest.mark.parametrize("size", [MAX_PAYLOAD + 1, 0xFFFFFFFF])
def test_oversize_next_packet_size_is_refused_before_it_is_read(tmp_path: Path, size: int) -> None:
    peer = Peer(tmp_path, codec="zlib")
    _send(peer, peer.data([0], next_packet_size=size))  # no payload follows: the check must come first
    refused(peer, WireError, "next_packet_size")


def test_payload_for_a_zero_page_only_packet_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path, codec="zlib")
    _send(peer, peer.data([], [0], next_packet_size=100), bytes(100))
    refused(peer, WireError, "next_packet_size")


@pytest.mark.parametrize("flag", [Flag.ZLIB, Flag.ZSTD, Flag.QATZIP, EXTENSION])
def test_a_codec_flag_other_than_the_sessions_is_refused(tmp_path: Path, flag: int) -> None:
    peer = Peer(tmp_path)
    _send(peer, peer.data([0], flags=flag), bytes(PS))
    refused(peer, WireError, "flags", "the session uses none")


def test_two_codec_bits_at_once_are_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path, codec="zlib")
    _send(peer, peer.data([0], flags=Flag.ZLIB | Flag.ZSTD), bytes(PS))
    refused(peer, WireError, "flags", "more than one codec")


def test_unknown_flag_bits_are_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    _send(peer, peer.data([0], flags=0x80), bytes(PS))
    refused(peer, WireError, "flags", "unknown flag bits")


@pytest.mark.skipif("lz4" not in default_registry().codecs, reason="no extension codec (lz4) installed")
def test_an_extension_codec_with_another_id_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path, codec="lz4")
    _send(peer, peer.data([0], extension_id=0x4C5A3402, next_packet_size=16), bytes(16))
    refused(peer, WireError, "extension_id")


def test_unterminated_ramblock_name_is_refused(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    raw = bytearray(peer.data([0]).encode())
    raw[64:320] = b"r" * 256
    peer.all_channels()[0].sendall(bytes(raw) + bytes(PS))
    refused(peer, WireError, "ramblock")


def test_a_packet_cut_short_by_the_peer_is_a_truncated_error(tmp_path: Path) -> None:
    peer = Peer(tmp_path)
    sock = peer.all_channels()[0]
    sock.sendall(peer.data([0]).encode()[:700])
    sock.shutdown(socket.SHUT_WR)
    error = peer.finish()
    assert isinstance(error, MfdcompError) and "ended" in str(error)


def test_corrupt_compressed_payload_is_a_codec_error(tmp_path: Path) -> None:
    peer = Peer(tmp_path, codec="zlib")
    _send(peer, peer.data([0], next_packet_size=64), os.urandom(64))
    error = peer.finish()
    assert isinstance(error, MfdcompError) and "zlib payload" in str(error)


# --- stale next_packet_size: accepted where QEMU accepts it --------------------------------------


def test_stale_next_packet_size_without_pages_is_accepted(tmp_path: Path) -> None:
    """QEMU 7.2: SYNC and empty packets keep the previous next_packet_size, and carry no codec bit."""
    peer = Peer(tmp_path, channels=2, codec="zlib")
    from mfdcomp.methods import PageViews

    page = bytes(range(256)) * 16
    memory = memoryview(page * 4)
    socks = peer.all_channels()
    for number, sock in enumerate(socks):
        method = peer.codec.methods(PS, None, peer.codec.probe()[0].path)
        method.send_setup(number)
        sent = method.send_prepare(PageViews(memory, [0, PS], PS))
        payload = b"".join(bytes(b) for b in sent.buffers)
        offsets = [(4 * number) * PS, (4 * number + 1) * PS]
        data = peer.data(offsets, next_packet_size=len(payload))
        stale = len(payload)
        empty = RamPacket(flags=0, pages_alloc=128, normal_pages=0, next_packet_size=stale, packet_num=5,
                          ramblock="ram0", offsets=(PS,) * 128)  # fmt: skip
        sync = RamPacket(flags=Flag.SYNC, pages_alloc=128, normal_pages=0, next_packet_size=stale, packet_num=6,
                         ramblock="ram0", offsets=(PS,) * 128)  # fmt: skip
        sock.sendall(data.encode() + payload + empty.encode() + sync.encode())
        method.send_cleanup()
    peer.send_main(mc.Message.FLUSH)
    for sock in socks:
        sock.close()
    expected = bytearray(BLOCK)
    for number in range(2):
        expected[4 * number * PS : (4 * number + 2) * PS] = page * 2
    digest = hashlib.sha256(expected).hexdigest()
    peer.send_main(mc.Message.EOS)
    peer.main.sendall(mc.encode_json(mc.Message.DIGESTS, {"digests": {"ram0": digest}}))
    assert peer.finish() is None
    assert peer.result is not None and peer.result.ok


def _q72() -> Path | None:
    return next((d for d in capture_dirs() if d.name.startswith("q72-")), None)


@pytest.mark.skipif(_q72() is None, reason="no QEMU 7.2 capture")
def test_qemu_72_channels_over_real_sockets_are_accepted(tmp_path: Path) -> None:
    """The 7.2 capture (stale next_packet_size, SYNC packets with pages, flags without codec bits)."""
    capture = _q72()
    assert capture is not None
    manifest = json.loads((capture / "manifest.json").read_text())
    blocks = [(b["name"], b["used_length"]) for b in manifest["main_channel"]["ramblocks"]]
    peer = Peer(tmp_path, channels=2, codec="zlib", blocks=blocks, uuid=bytes(16))
    syncs = {entry["sync_packets"] for entry in manifest["multifd_channels"].values()}
    assert len(syncs) == 1
    senders = []
    for entry in manifest["multifd_channels"].values():
        sock = peer.open()
        data = (capture / entry["file"]).read_bytes()
        thread = threading.Thread(target=sock.sendall, args=(data,), name="hostile-sender")
        thread.start()
        senders.append(thread)
    for _ in range(syncs.pop()):
        peer.send_main(mc.Message.FLUSH)
    for thread in senders:
        thread.join(DEADLINE)
    for sock in peer.sockets[1:]:
        sock.shutdown(socket.SHUT_WR)
    peer.send_main(mc.Message.EOS)
    peer.main.sendall(mc.encode_json(mc.Message.DIGESTS, {"digests": {"ram0": manifest["source_ram_image_sha256"]}}))
    error = peer.finish()
    assert error is None, error
    assert peer.result is not None
    # The other blocks' digests were not sent: only ram0 is compared, with the QEMU source's RAM.
    assert peer.result.digests["ram0"] == manifest["source_ram_image_sha256"]
    assert ram_packet_size() == manifest["packet_header_bytes"]


# --- hostile values in the main channel's JSON bodies ---------------------------------------------

HUGE = "__huge__"  # replaced by the JSON number 1e400 (a float inf to Python's json)


def session_body(**changes: Any) -> bytes:
    """A valid SESSION body with ``changes``; a value of HUGE becomes the raw JSON number 1e400."""
    fields: dict[str, Any] = {
        "uuid": "00" * 16,
        "page_size": PS,
        "channels": 1,
        "codec": "none",
        "level": None,
        "zero_page_detection": "multifd",
        "blocks": [["ram0", BLOCK]],
    }
    fields.update(changes)
    return json.dumps(fields).replace(f'"{HUGE}"', "1e400").encode()


HOSTILE_SESSIONS = {
    "page_size 1e400": session_body(page_size=HUGE),
    "level 1e400": session_body(level=HUGE),
    "block size 1e400": session_body(blocks=[["ram0", HUGE]]),
    "page_size 0": session_body(page_size=0),
    "page_size 3": session_body(page_size=3),
    "page_size true": session_body(page_size=True),
    "page_size 4096.0": session_body(page_size=4096.0),
    "page_size string": session_body(page_size="4096"),
    "page_size 2**70": session_body(page_size=1 << 70),
    "channels true": session_body(channels=True),
    "channels 0": session_body(channels=0),
    "codec a number": session_body(codec=5),
    "codec a list": session_body(codec=["none"]),
    "uuid null": session_body(uuid=None),
    "zero mode unknown": session_body(zero_page_detection="sometimes"),
    "blocks a string": session_body(blocks="x"),
    "blocks empty": session_body(blocks=[]),
    "block not a pair": session_body(blocks=[["ram0"]]),
    "block name a number": session_body(blocks=[[7, BLOCK]]),
    "block name a lone surrogate": b'{"uuid": "00", "page_size": 4096, "channels": 1, "codec": "none", "level": null, '
    b'"zero_page_detection": "multifd", "blocks": [["\\ud800", 4096]]}',
    "block name too long": session_body(blocks=[["r" * 256, BLOCK]]),
    "block size negative": session_body(blocks=[["ram0", -PS]]),
    "block size not whole pages": session_body(blocks=[["ram0", PS + 1]]),
    "block size 2**80": session_body(blocks=[["ram0", 1 << 80]]),
    "block twice": session_body(blocks=[["ram0", PS], ["ram0", PS]]),
    "a list": b"[]",
    "a string": b'"x"',
    "missing field": json.dumps({"uuid": "00" * 16}).encode(),
    "nested 100000 deep": b"[" * 100000 + b"]" * 100000,
    "not JSON": b"\xff\xfe",
}


@pytest.mark.parametrize("case", HOSTILE_SESSIONS)
def test_hostile_session_fields_are_wire_errors(case: str) -> None:
    """Every field is checked for its JSON type and bounds: a WireError, never OverflowError or AttributeError."""
    with pytest.raises(WireError):
        mc.Session.from_json(HOSTILE_SESSIONS[case])


@pytest.mark.parametrize("case", ["page_size 1e400", "block size 1e400", "a list", "block name a lone surrogate"])
def test_hostile_session_over_a_socket_is_refused(tmp_path: Path, case: str) -> None:
    peer = Peer(tmp_path, channels=1, session_body=HOSTILE_SESSIONS[case])
    refused(peer, WireError)


def test_valid_session_bodies_still_parse() -> None:
    session = mc.Session.from_json(session_body(level=-5, blocks=[["ram0", BLOCK], ["vga", PS]]))
    assert session.level == -5 and session.blocks == [("ram0", BLOCK), ("vga", PS)]


@pytest.mark.parametrize(
    "body",
    [b"[]", b'"x"', b"1e400", b'{"digests": []}', b'{"digests": {"ram0": 5}}', b'{"digests": {"ram0": "zz"}}'],
    ids=["list", "string", "number", "digests a list", "digest a number", "digest not hex"],
)
def test_hostile_digests_are_wire_errors(tmp_path: Path, body: bytes) -> None:
    """The DIGESTS body after EOS: not a JSON object of 64-hex-digit strings is a WireError (was AttributeError)."""
    peer = Peer(tmp_path, channels=1)
    sock = peer.channel(0)
    sock.sendall(RamPacket.sync(0).encode())
    peer.send_main(mc.Message.FLUSH)
    sock.shutdown(socket.SHUT_WR)
    peer.send_main(mc.Message.EOS)
    peer.main.sendall(mc.encode(mc.Message.DIGESTS, body))
    refused(peer, WireError, "digests" if body.startswith(b'{"digests"') else "DIGESTS")


# --- a source whose address answers with another protocol ---------------------------------------


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"],
    ids=["http", "ssh"],
)
def test_a_non_mfdcomp_server_is_named_as_such(tmp_path: Path, answer: bytes) -> None:
    """`mfdcomp send` to an HTTP (or SSH) server: 'not an mfdcomp receiver' and its bytes, not 'type 72'."""
    import subprocess
    import sys

    image = tmp_path / "src.img"
    image.write_bytes(bytes(range(256)) * 64 * 16)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)  # the source's opening and SESSION
            conn.sendall(answer)
            time.sleep(2)  # as a server that waits for more before closing

    thread = threading.Thread(target=serve, name="not-mfdcomp-server")
    thread.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mfdcomp", "send", str(image), "--to", f"tcp:127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        thread.join(10)
        server.close()
    assert done.returncode != 0
    assert "not an mfdcomp receiver" in done.stderr, done.stderr
    assert repr(answer[:5].decode())[1:-1] in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "message type 72" not in done.stderr, done.stderr

"""Fuzzing every codec's decoder (MultiFDMethods.recv) with mutated payloads of real packets.

Each registered codec, and every other implementation of its wire format it
offers (qatzip's pure-Python reader beside libqatzip), gets a channel of real
packets: pages of the captures' guest RAM encoded by the codec's own sender,
the payloads of the golden captures for zlib and zstd, the library's recorded
outputs for qatzip, and zlib-compressed pages for uadk (what a peer with a
UADK device sends). One packet of the channel is mutated (its bytes, its
length, its page count) after the packets before it decoded cleanly.

Every input must end in a typed :class:`MfdcompError` or in a valid result,
within a time and memory bound, and the decoder must write nothing but the
packet's pages: the pages sit in a buffer of guard bytes, next to each other
or scattered between guard pages. Decompression bombs (payloads that inflate
far past the packet's pages) must be refused before memory grows.
"""

from __future__ import annotations

import functools
import json
import os
import random
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from mfdcomp.errors import CodecError, MfdcompError, TruncatedError
from mfdcomp.methods import Codec, MultiFDMethods, PageViews
from mfdcomp.methods.pagetable import encode_pages
from mfdcomp.wire import COMPRESSION_MASK, MAX_PAYLOAD, NOCOMP, ChannelReader, RamData, RamPacket
from tests.test_fuzz_wire import (
    INTERESTING,
    PAGE_SIZE,
    RSS_BOUND,
    TIME_BOUND,
    Bounded,
    Op,
    capture_dirs,
    decoder_variants,
    fuzz_settings,
    guest_ram,
    measured,
    ops_lists,
    send_path,
)

GUARD_BYTE = 0xA5
VECTORS = Path(__file__).resolve().parent.parent.parent / "shared" / "vectors"
BUNDLED_VECTORS = Path(__file__).resolve().parent / "vectors"
PACKETS_PER_CHANNEL = 5


def heap_bound(payload: int, pages: int) -> int:
    """Python heap one decode may take: copies of the payload and of the pages' bytes, plus slack."""
    return 4 * payload + 3 * pages * PAGE_SIZE + (4 << 20)


# --- real packets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    """One real packet of a channel: its header fields and its payload."""

    packet: RamPacket
    payload: bytes

    @property
    def pages(self) -> int:
        return self.packet.normal_pages


@dataclass(frozen=True)
class Channel:
    name: str
    codec: str
    packets: tuple[Packet, ...]


def _packet(codec: Codec, normal: int, payload: bytes, number: int) -> RamPacket:
    info = codec.info
    flag = 0x3E if info.qemu_flag is None else info.qemu_flag
    return RamPacket.data(
        flags=flag,
        ramblock="ram0",
        normal=[i * PAGE_SIZE for i in range(normal)],
        next_packet_size=len(payload),
        packet_num=number,
        extension_id=info.extension_id or 0,
    )


def _page_runs(seed: int) -> Iterator[bytes]:
    """Runs of real guest pages: full packets, odd sizes, a single page."""
    ram = guest_ram()
    rng = random.Random(seed)
    for index in range(PACKETS_PER_CHANNEL):
        count = (128, 37, 1, 64, 3)[index % 5]
        start = rng.randrange(0, len(ram) // PAGE_SIZE - count) * PAGE_SIZE
        yield ram[start : start + count * PAGE_SIZE]


def own_channel(label: str, codec: Codec, seed: int = 0) -> Channel:
    """Packets the codec's own sender makes of real pages (one sending context, in order)."""
    method = codec.methods(PAGE_SIZE, None, send_path(codec))
    method.send_setup(0)
    packets = []
    try:
        for number, pages in enumerate(_page_runs(seed)):
            memory = memoryview(pages)
            count = len(pages) // PAGE_SIZE
            sent = method.send_prepare(PageViews(memory, [i * PAGE_SIZE for i in range(count)], PAGE_SIZE))
            payload = b"".join(bytes(b) for b in sent.buffers)
            packets.append(Packet(_packet(codec, count, payload, number), payload))
    finally:
        method.send_cleanup()
    return Channel(f"{label}/own", codec.info.name, tuple(packets))


def capture_channels(codec_name: str) -> list[Channel]:
    """The first data packets of each golden capture channel of this codec."""
    channels = []
    for capture in capture_dirs():
        manifest = json.loads((capture / "manifest.json").read_text())
        if manifest["codec"] != codec_name:
            continue
        for path in sorted(capture.glob("ch*.bin")):
            with path.open("rb") as f:
                head = f.read(3 << 20)
            reader = ChannelReader()
            reader.feed(head)  # whole records only: the cut at the end is never reached
            packets = []
            for event in reader:
                if isinstance(event, RamData) and event.packet.normal_pages:
                    packets.append(Packet(event.packet, event.payload))
                if len(packets) == PACKETS_PER_CHANNEL:
                    break
            if packets:
                channels.append(Channel(f"{capture.name}/{path.name}", codec_name, tuple(packets)))
    return channels


def uadk_device_channel(codec: Codec) -> Channel:
    """What a UADK peer with a device sends: zlib pages (those that shrink) after the length table."""
    packets = []
    for number, pages in enumerate(_page_runs(3)):
        count = len(pages) // PAGE_SIZE
        views = [memoryview(pages)[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] for i in range(count)]
        buffers, size = encode_pages(views, PAGE_SIZE, lambda page: zlib.compress(page, 1))
        payload = b"".join(bytes(b) for b in buffers)
        assert len(payload) == size
        packets.append(Packet(_packet(codec, count, payload, number), payload))
    return Channel("uadk/device", "uadk", tuple(packets))


def qatzip_library_channel(codec: Codec) -> Channel | None:
    """libqatzip's recorded outputs (the team's vectors): one packet per case whose input is whole pages."""
    for root in (VECTORS / "qatzip", BUNDLED_VECTORS / "qatzip"):
        if not root.is_dir():
            continue
        packets: list[Packet] = []
        for case in sorted(p for p in root.iterdir() if p.is_dir()):
            manifest = json.loads((case / "manifest.json").read_text())
            size = manifest.get("input", {}).get("bytes") or manifest.get("input_bytes")
            for output in sorted(case.glob("output.l*.bin")):
                if isinstance(size, int) and size % PAGE_SIZE == 0 and size <= 128 * PAGE_SIZE:
                    payload = output.read_bytes()
                    packets.append(Packet(_packet(codec, size // PAGE_SIZE, payload, len(packets)), payload))
        if packets:
            return Channel(f"{root}", "qatzip", tuple(packets))
    return None


@functools.cache
def channels_for(label: str) -> tuple[Channel, ...]:
    codec = decoder_variants()[label]
    name = codec.info.name
    found = [own_channel(label, codec)]
    found += capture_channels(name)
    if name == "uadk":
        found.append(uadk_device_channel(codec))
    if name == "qatzip":
        library = qatzip_library_channel(codec)
        if library is not None:
            found.append(library)
    return tuple(found)


VARIANTS = sorted(decoder_variants())


# --- guarded pages and the payload source --------------------------------------------------------


class GuardedPages:
    """``count`` page slots inside guard bytes, adjacent or each followed by a guard page."""

    def __init__(self, count: int, scattered: bool) -> None:
        self.count = count
        self.stride = 2 if scattered else 1
        slots = count * self.stride + 2  # a guard page before and after
        self.buffer = bytearray([GUARD_BYTE]) * (slots * PAGE_SIZE)
        self.offsets = [(1 + i * self.stride) * PAGE_SIZE for i in range(count)]
        for offset in self.offsets:
            self.buffer[offset : offset + PAGE_SIZE] = bytes(PAGE_SIZE)
        self.views = PageViews(memoryview(self.buffer), self.offsets, PAGE_SIZE)

    def guards_intact(self) -> bool:
        mine = set(self.offsets)
        pattern = bytes([GUARD_BYTE]) * PAGE_SIZE
        for offset in range(0, len(self.buffer), PAGE_SIZE):
            if offset not in mine and self.buffer[offset : offset + PAGE_SIZE] != pattern:
                return False
        return True

    def content(self) -> bytes:
        return b"".join(bytes(view) for view in self.views)


class Payload:
    """A :class:`PayloadSource` over bytes that also checks the codec's use of it."""

    def __init__(self, data: bytes, size: int) -> None:
        self.size = size
        self._data = data
        self.reads = 0

    def read(self) -> memoryview:
        self.reads += 1
        assert self.reads == 1, "a codec reads its payload once"
        if len(self._data) < self.size:
            raise TruncatedError("payload cut short", value=len(self._data), limit=self.size)
        return memoryview(self._data)[: self.size]

    def read_into(self, views: Sequence[memoryview]) -> None:
        self.reads += 1
        assert self.reads == 1, "a codec reads its payload once"
        assert sum(v.nbytes for v in views) == self.size, "read_into's views add up to the payload size"
        position = 0
        for view in views:
            part = self._data[position : position + view.nbytes]
            if len(part) < view.nbytes:
                raise TruncatedError("payload cut short", value=len(part), limit=view.nbytes)
            view.cast("B")[:] = part
            position += view.nbytes


def payload_size(packet: RamPacket, data: bytes, page_size: int = PAGE_SIZE) -> int:
    """What the engine tells the codec (wire.ram_payload_size): normal × page size for nocomp."""
    if packet.flags & COMPRESSION_MASK == NOCOMP:
        return packet.normal_pages * page_size
    return min(len(data), MAX_PAYLOAD)


# --- mutations -----------------------------------------------------------------------------------

PAYLOAD_OPS = ("flip", "byte", "u32", "insert", "delete", "truncate", "extend", "swap", "zero", "pages")


def mutate_payload(data: bytes, pages: int, ops: Sequence[Op], others: Sequence[bytes]) -> tuple[bytes, int]:
    """The mutated payload and page count."""
    buf = bytearray(data)
    for kind, a, b, c in ops:
        if kind == "pages":
            pages = max(1, min(128, pages + (a % 7) - 3 if b % 2 else (a % 128) + 1))
            continue
        if kind == "swap":
            buf = bytearray(others[a % len(others)]) if others else buf
            continue
        if kind == "insert":
            source = others[b % len(others)] if others else bytes(buf)
            start = c % max(1, len(source))
            at = a % (len(buf) + 1)
            buf[at:at] = source[start : start + 1 + (c >> 8) % 8192]
            continue
        if kind == "extend":
            buf += random.Random(a).randbytes(1 + b % 4096)
            continue
        if not buf:
            continue
        pos = a % len(buf)
        if kind == "flip":
            buf[pos] ^= 1 << (b % 8)
        elif kind == "byte":
            buf[pos] = b & 0xFF
        elif kind == "u32":
            value = INTERESTING[b % len(INTERESTING)]
            # Length-table slots are the likeliest targets: every fourth byte of the payload's head.
            at = (pos // 4 * 4) if c % 2 else pos
            buf[at : at + 4] = value.to_bytes(4, "big")[: len(buf) - at]
        elif kind == "delete":
            del buf[pos : pos + 1 + b % 4096]
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "zero":
            end = min(len(buf), pos + 1 + b % 4096)
            buf[pos:end] = bytes(end - pos)
    return bytes(buf), pages


def random_payload_ops(rng: random.Random, most: int = 3) -> list[Op]:
    return [
        (rng.choice(PAYLOAD_OPS), rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(32))
        for _ in range(rng.randint(1, most))
    ]


# --- one input -----------------------------------------------------------------------------------


@dataclass
class DecodeOutcome:
    error: MfdcompError | None
    bounds: Bounded
    guards: bool


def decode(method: MultiFDMethods, packet: RamPacket, data: bytes, pages: int, scattered: bool) -> DecodeOutcome:
    """One recv() into guarded pages, measured; anything but a typed error escaping is a bug."""
    target = GuardedPages(pages, scattered)
    header = RamPacket.data(
        flags=packet.flags,
        ramblock=packet.ramblock,
        normal=target.offsets,
        next_packet_size=len(data),
        packet_num=packet.packet_num,
        extension_id=packet.extension_id,
    )
    source = Payload(data, payload_size(header, data))

    def run() -> MfdcompError | None:
        try:
            method.recv(header, source, target.views)
        except MfdcompError as exc:
            return exc
        return None

    error, bounds = measured(run)
    return DecodeOutcome(error, bounds, target.guards_intact())


def check_codec_input(label: str, channel: Channel, index: int, ops: Sequence[Op], scattered: bool) -> DecodeOutcome:
    """Decode the channel's packets before ``index`` cleanly, then the mutated one, then the next one."""
    codec = decoder_variants()[label]
    method = codec.methods(PAGE_SIZE, None, send_path(codec))
    method.recv_setup(0)
    try:
        index %= len(channel.packets)
        for good in channel.packets[:index]:
            clean = decode(method, good.packet, good.payload, good.pages, scattered)
            assert clean.error is None, f"{label} {channel.name}: a real packet failed: {clean.error}"
            assert clean.guards
        target = channel.packets[index]
        others = [p.payload for p in channel.packets]
        data, pages = mutate_payload(target.payload, target.pages, ops, others)
        outcome = decode(method, target.packet, data, pages, scattered)
        what = f"{label} on {channel.name} packet {index} {ops}"
        assert outcome.guards, f"{what}: bytes written outside the packet's pages"
        check_codec_bounds(outcome.bounds, len(data), pages, what)
        if index + 1 < len(channel.packets):
            after = channel.packets[index + 1]
            later = decode(method, after.packet, after.payload, after.pages, scattered)
            assert later.guards, f"{what}: the next packet wrote outside its pages"
            if outcome.error is not None and codec.info.stateful:
                assert later.error is not None, f"{what}: a stateful stream went on after an error"
        return outcome
    finally:
        method.recv_cleanup()


def check_codec_bounds(bounds: Bounded, payload: int, pages: int, what: str) -> None:
    assert bounds.seconds < TIME_BOUND, f"{what}: took {bounds.seconds:.2f} s"
    assert bounds.heap_peak < heap_bound(payload, pages), f"{what}: heap peak {bounds.heap_peak}"
    assert bounds.rss_growth < RSS_BOUND, f"{what}: RSS grew by {bounds.rss_growth}"


# --- the tests -----------------------------------------------------------------------------------

FUZZ = fuzz_settings(int(os.environ.get("MFDCOMP_FUZZ_CODEC_EXAMPLES", "40")))
ops_strategy = ops_lists(PAYLOAD_OPS, 3)


@pytest.mark.parametrize("label", VARIANTS)
def test_real_packets_decode_exactly(label: str) -> None:
    """Unmutated, every channel decodes to its pages, adjacent or scattered, guards untouched."""
    for channel in channels_for(label):
        for scattered in (False, True):
            codec = decoder_variants()[label]
            method = codec.methods(PAGE_SIZE, None, send_path(codec))
            method.recv_setup(0)
            for packet in channel.packets:
                outcome = decode(method, packet.packet, packet.payload, packet.pages, scattered)
                assert outcome.error is None, f"{channel.name}: {outcome.error}"
                assert outcome.guards
            method.recv_cleanup()


@pytest.mark.parametrize("label", VARIANTS)
@FUZZ
@given(
    channel=st.integers(0, 100),
    index=st.integers(0, PACKETS_PER_CHANNEL - 1),
    ops=ops_strategy,
    scattered=st.booleans(),
)
def test_mutated_payloads_end_typed_and_inside_their_pages(
    heap_tracing: None, label: str, channel: int, index: int, ops: list[Op], scattered: bool
) -> None:
    channels = channels_for(label)
    check_codec_input(label, channels[channel % len(channels)], index, ops, scattered)


# --- decompression bombs -------------------------------------------------------------------------

BOMB = 32 << 20
"""What each bomb would inflate to: 32 MiB, for one page of room."""


def zlib_bomb() -> bytes:
    deflate = zlib.compressobj(9)
    return deflate.compress(bytes(BOMB)) + deflate.flush(zlib.Z_SYNC_FLUSH)


def zstd_bomb() -> bytes:
    compress = zstandard.ZstdCompressor(level=3).compressobj()
    return compress.compress(bytes(BOMB)) + compress.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


def zstd_huge_window() -> bytes:
    """A frame header asking for a 2 GiB window (window log 31), then an RLE block."""
    descriptor = 0x00  # no content size, no checksum, not single-segment
    window = (31 - 10) << 3
    block = (1 << 0) | (1 << 1) | (PAGE_SIZE << 3)  # last block, RLE, 4096 bytes
    return b"\x28\xb5\x2f\xfd" + bytes([descriptor, window]) + block.to_bytes(3, "little") + b"\x00"


def per_page_bomb(wbits: int) -> bytes:
    """A length table of one page whose blob inflates to 32 MiB (and fits in a page itself)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, wbits)
    blob = deflate.compress(bytes(BOMB)) + deflate.flush()
    blob = blob[: PAGE_SIZE - 1]
    return struct.pack(">I", len(blob)) + blob


def gzip_bomb(claim: int) -> bytes:
    """A GZIP_EXT member whose 'QZ' field and ISIZE claim ``claim`` bytes but whose body inflates to 32 MiB."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    body = deflate.compress(bytes(BOMB)) + deflate.flush()
    header = struct.pack("<BBBBIBBHccHII", 0x1F, 0x8B, 8, 4, 0, 0, 255, 12, b"Q", b"Z", 8, claim, len(body))
    trailer = struct.pack("<II", zlib.crc32(bytes(claim)), claim)
    return header + body + trailer


def lz4_bomb() -> bytes:
    import lz4.block  # type: ignore[import-untyped]

    data: bytes = lz4.block.compress(bytes(BOMB), store_size=False)
    return data


BOMBS = {
    "zlib": [zlib_bomb],
    "zstd": [zstd_bomb, zstd_huge_window],
    "qpl": [lambda: per_page_bomb(-15)],
    "uadk": [lambda: per_page_bomb(15)],
    "qatzip": [lambda: gzip_bomb(PAGE_SIZE), lambda: gzip_bomb(BOMB & 0xFFFFFFFF)],
    "lz4": [lz4_bomb],
}


@functools.cache
def bomb(label: str, index: int) -> bytes:
    name = decoder_variants()[label].info.name
    return BOMBS[name][index]()


BOMB_CASES = [(label, i) for label in VARIANTS for i in range(len(BOMBS.get(decoder_variants()[label].info.name, [])))]


@pytest.mark.parametrize(("label", "index"), BOMB_CASES)
def test_decompression_bombs_are_refused_before_memory_grows(heap_tracing: None, label: str, index: int) -> None:
    codec = decoder_variants()[label]
    payload = bomb(label, index)
    assert len(payload) <= MAX_PAYLOAD
    flag = 0x3E if codec.info.qemu_flag is None else codec.info.qemu_flag
    packet = RamPacket.data(
        flags=flag, ramblock="ram0", normal=[0], next_packet_size=len(payload), packet_num=0,
        extension_id=codec.info.extension_id or 0,
    )  # fmt: skip
    method = codec.methods(PAGE_SIZE, None, send_path(codec))
    method.recv_setup(0)
    try:
        outcome = decode(method, packet, payload, 1, False)
    finally:
        method.recv_cleanup()
    assert isinstance(outcome.error, CodecError), f"{label}: bomb {index} gave {outcome.error!r}"
    assert outcome.guards
    # The bomb would be 32 MiB: a decoder that grew by even a quarter of it did not refuse in time.
    assert outcome.bounds.heap_peak < 4 * len(payload) + (8 << 20), outcome.bounds
    assert outcome.bounds.rss_growth < BOMB // 4, outcome.bounds
    assert outcome.bounds.seconds < 2.0, outcome.bounds


# --- a qatzip member cut short inside its deflate body, its 'QZ' length made to agree ---------------


def _qatzip_cut_members(pages: bytes, members: int) -> list[bytes]:
    """Payloads of ``members`` GZIP_EXT members where one member's deflate body lost its last k bytes.

    The 'QZ' deflate length is lowered to match, so the framing checks pass
    and only the member's CRC-32 (and what ISIZE promises) can tell. Returns
    one payload per cut length k in 1..40 for the last member.
    """
    from mfdcomp_qatzip import gzipext

    size = len(pages) // members
    parts = [gzipext.compress(pages[i * size : (i + 1) * size], 1) for i in range(members)]
    head = gzipext.HEADER_SIZE
    last = parts[-1]
    (deflated,) = struct.unpack_from("<I", last, head - 4)
    payloads = []
    for cut in range(1, 41):
        member = bytearray(last[: head + deflated - cut] + last[-gzipext.TRAILER_SIZE :])
        struct.pack_into("<I", member, head - 4, deflated - cut)
        payloads.append(b"".join(parts[:-1]) + bytes(member))
    return payloads


@pytest.mark.parametrize("members", [1, 3])
def test_qatzip_member_cut_short_is_refused_by_its_crc(members: int) -> None:
    """libqatzip's decode does not check the gzip CRC: a cut body may inflate to the right length but wrong bytes.

    Every cut must end in a CodecError from every qatzip implementation (the
    library one and the pure-Python reader), never in other bytes accepted.
    """
    import gzip

    from mfdcomp_qatzip import QatzipCodec

    from mfdcomp.methods import CodecPath

    library = QatzipCodec()
    library.probe()
    assert library.library is not None, "libqatzip is not installed (ci/system/qatzip.sh)"
    count = 12
    # Text for which libqatzip 1.3.1 inflates some cut bodies to exactly the 12 pages, with wrong bytes.
    text = b"".join(b"page %d of a text-like image, repeated. " % i * 200 for i in range(count))
    pages = b"".join(text[i * PAGE_SIZE : (i + 1) * PAGE_SIZE].ljust(PAGE_SIZE, b".") for i in range(count))
    accepted = []
    for decoder in (library, QatzipCodec(list)):
        for cut, payload in enumerate(_qatzip_cut_members(pages, members), start=1):
            with pytest.raises((EOFError, zlib.error, OSError)):
                gzip.decompress(payload)  # the reference reader refuses every one of them
            method = decoder.methods(PAGE_SIZE, 1, CodecPath.SOFTWARE)
            method.recv_setup(0)
            target = bytearray(len(pages))
            offsets = list(range(0, len(pages), PAGE_SIZE))
            packet = _packet(decoder, count, payload, 0)
            try:
                method.recv(packet, Payload(payload, len(payload)), PageViews(memoryview(target), offsets, PAGE_SIZE))
            except CodecError:
                continue
            finally:
                method.recv_cleanup()
            accepted.append((decoder.library is not None, cut, bytes(target) == pages))
    assert not accepted, f"cut payloads accepted (library?, bytes cut, right bytes?): {accepted}"

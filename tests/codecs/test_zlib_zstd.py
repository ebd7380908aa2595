"""The zlib and zstd plugins (spec §5.2-5.3), checked against the reference libraries.

QEMU keeps one compression stream per channel for the whole migration and
flushes it at every packet end (zlib Z_SYNC_FLUSH, zstd ZSTD_e_flush); the
receiver keeps one decompression stream per channel. The references here are
the stdlib zlib objects and python-zstandard's, used exactly that way.

The zlib codec runs on ISA-L (python-isal, the default where it imports) or
on stdlib zlib: every test of the stream runs on both ("zlib/isal",
"zlib/zlib"), and ISA-L's stream is decoded with stdlib zlib, QEMU's inflate.
"""

from __future__ import annotations

import importlib
import json
import random
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from mfdcomp_zstd import ZstdCodec
from mfdcomp_zstd.codec import LIBZSTD

from mfdcomp.errors import CodecError
from mfdcomp.imagegen import DEFAULT_MIX, KINDS, generate_image, parse_mix
from mfdcomp.methods import Codec, CodecPath, MultiFDMethods, PageViews
from mfdcomp.methods import deflate as libs
from mfdcomp.qemu.replay import replay_capture
from mfdcomp.registry import default_registry
from mfdcomp.wire import MAX_PAYLOAD, NOCOMP, Flag, RamPacket, page_count

PAGE = 4096
PACKET_PAGES = page_count(PAGE)
# The registered codecs, and the zlib codec on each of its libraries ("zlib/isal" skips without python-isal).
REGISTERED = ["zlib", "zstd"]
HAS_ISAL = isinstance(libs.isal(), libs.Deflate)
ZLIBS = [
    pytest.param("zlib/isal", marks=pytest.mark.skipif(not HAS_ISAL, reason="python-isal is not installed")),
    "zlib/zlib",
]
ZSTDS = ["zstd/python-zstandard"]
if ZstdCodec().implementation != "python-zstandard":  # the compiled streams are the registered codec's
    ZSTDS.append("zstd/libzstd")
CODECS = [*ZLIBS, "zstd", *ZSTDS]
FLAGS = {"zlib": Flag.ZLIB, "zstd": Flag.ZSTD}
LEVELS = {"zlib": (0, 9), "zstd": (0, 20)}
SYNC_FLUSH_MARKER = b"\x00\x00\xff\xff"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Deflate block type 3 and zstd block type 3 are reserved: a payload starting with 0x06 is corrupt in both.
RESERVED_BLOCK = b"\x06" + bytes(range(1, 200))
GUARD = 0xEE

Coder = Callable[[bytes], bytes]


def family(name: str) -> str:
    """The registered codec of ``name`` ("zlib/isal" -> "zlib")."""
    return name.split("/")[0]


def lib_of(name: str) -> libs.Deflate:
    """The deflate library a zlib-family name runs on: the one after the slash, else the registered codec's."""
    impl = name.partition("/")[2] or (libs.fastest().name)
    found = libs.named(impl)
    assert isinstance(found, libs.Deflate), found
    return found


def zstd_impl(name: str) -> str:
    """The zstd implementation a zstd-family name runs on: the one after the slash, else the registered codec's."""
    impl = name.partition("/")[2] or ZstdCodec().implementation
    assert impl is not None
    return impl


def codec(name: str) -> Codec:
    if "/" in name and family(name) == "zstd":
        return ZstdCodec(impl=name.partition("/")[2])
    if "/" in name:
        from mfdcomp_zlib import ZlibCodec

        return ZlibCodec(impl=name.partition("/")[2])
    return default_registry().get(name)


def zlib_header(name: str, level: int) -> bytes:
    """The zlib header (its FLEVEL bits) of the stream the codec writes at ``level``."""
    if level == 0 or lib_of(name).name == libs.ZLIB:
        return {0: b"\x78\x01", 1: b"\x78\x01", 9: b"\x78\xda"}[level]
    return b"\x78\x5e"  # ISA-L's header, whatever its level


# --- the references: QEMU's use of each library -----------------------------------------------------------------


def reference_encoder(name: str, level: int = 1) -> Coder:
    """One stream for the whole channel, flushed at every packet end, never finished."""
    if family(name) == "zlib":
        deflate = lib_of(name).compressobj(level)
        return lambda data: deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH)
    if zstd_impl(name) == LIBZSTD:  # its own library: python-zstandard carries another libzstd version
        stream = _zstdpages().CStream(level)
        return lambda data: bytes(stream.compress([data]))
    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    return lambda data: compressor.compress(data) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


def _zstdpages() -> Any:
    return importlib.import_module("mfdcomp_zstd._zstdpages")


def reference_decoder(name: str) -> Coder:
    """One decompression stream for the whole channel."""
    if family(name) == "zlib":
        return zlib.decompressobj().decompress  # stdlib zlib, QEMU's inflate, whichever library wrote it
    return zstandard.ZstdDecompressor().decompressobj().decompress


# --- the codec under test, driven as the engine drives it ---------------------------------------------------------


class Payload:
    """A payload as the destination channel offers it: read() into a buffer reused for every packet."""

    def __init__(self, buffer: bytearray, data: bytes) -> None:
        buffer[: len(data)] = data
        self.view = memoryview(buffer)[: len(data)]
        self.size = len(data)

    def read(self) -> memoryview:
        return self.view

    def read_into(self, views: Sequence[memoryview]) -> None:
        raise AssertionError("compressed payloads are read whole")


class Sender:
    """A send context of one channel; ``views`` says how the pages come: as the engine's PageViews or a list."""

    def __init__(self, name: str, level: int | None = None, page_size: int = PAGE, views: str = "engine") -> None:
        self.method = codec(name).methods(page_size, level, CodecPath.SOFTWARE)
        self.method.send_setup(0)
        self.page_size = page_size
        self.views = views

    def send(self, data: bytes) -> bytes:
        """One packet of the pages in ``data``; the pages are read-only views, as source memory may be."""
        view = memoryview(data)
        offsets = range(0, len(data), self.page_size)
        pages: Sequence[memoryview] = PageViews(view, offsets, self.page_size)
        if self.views == "list":
            pages = list(pages)
        out = self.method.send_prepare(pages)
        assert out.path is CodecPath.SOFTWARE
        payload = b"".join(bytes(memoryview(chunk)) for chunk in out.buffers)
        assert len(payload) == out.size
        assert out.size <= MAX_PAYLOAD, "what a QEMU destination can take"
        return payload


class Receiver:
    def __init__(self, name: str, page_size: int = PAGE) -> None:
        self.name = name
        self.method: MultiFDMethods = codec(name).methods(page_size, None, CodecPath.SOFTWARE)
        self.method.recv_setup(0)
        self.page_size = page_size
        self.buffer = bytearray(MAX_PAYLOAD)
        self.packets = 0

    def recv_into(self, payload: bytes, pages: Sequence[memoryview]) -> CodecPath:
        step = self.page_size
        packet = RamPacket.data(
            flags=FLAGS[family(self.name)],
            ramblock="ram0",
            normal=[index * step for index in range(len(pages))],
            next_packet_size=len(payload),
            packet_num=self.packets,
            page_size=step,
        )
        self.packets += 1
        return self.method.recv(packet, Payload(self.buffer, payload), pages)

    def recv(self, payload: bytes, pages: int) -> bytes:
        target = bytearray(pages * self.page_size)
        views = PageViews(memoryview(target), range(0, len(target), self.page_size), self.page_size)
        assert self.recv_into(payload, views) is CodecPath.SOFTWARE
        return bytes(target)


class Target:
    """Target memory three times a packet's pages, guard bytes everywhere, the packet's pages scattered in it.

    ``views="engine"``: the engine's PageViews, in address order, so some pages are adjacent;
    ``views="list"``: a list of page views in random order.
    """

    def __init__(self, pages: int, seed: int, views: str = "engine") -> None:
        self.slots = random.Random(seed).sample(range(pages * 3), pages)
        self.memory = bytearray([GUARD]) * (pages * 3 * PAGE)
        memory = memoryview(self.memory)
        self.pages: Sequence[memoryview]
        if views == "engine":
            self.slots.sort()
            self.pages = PageViews(memory, [slot * PAGE for slot in self.slots], PAGE)
        else:
            self.pages = [memory[slot * PAGE : (slot + 1) * PAGE] for slot in self.slots]

    def contents(self) -> bytes:
        return b"".join(bytes(page) for page in self.pages)

    def untouched_outside(self) -> bool:
        inside = set(self.slots)
        outside = (self.memory[i * PAGE : (i + 1) * PAGE] for i in range(len(self.memory) // PAGE) if i not in inside)
        return all(chunk == bytes([GUARD]) * PAGE for chunk in outside)


# --- test data ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """16 MiB of guest-like pages: zero, text-like, random and half-zero, shuffled."""
    path = tmp_path_factory.mktemp("image") / "mixed.img"
    generate_image(path, 16 << 20, parse_mix(DEFAULT_MIX), seed=11)
    return path.read_bytes()


def packets_of(image: bytes, counts: Sequence[int], seed: int) -> list[bytes]:
    """Packets of ``counts`` pages each, cut from random places of the image."""
    rng = random.Random(seed)
    pages = len(image) // PAGE
    out = []
    for count in counts:
        first = rng.randrange(pages - count + 1)
        out.append(image[first * PAGE : (first + count) * PAGE])
    return out


def some_counts(seed: int, packets: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice([1, 2, 7, 31, 64, 100, PACKET_PAGES]) for _ in range(packets)]


# --- registration, description, probe ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", REGISTERED)
def test_registered_through_their_entry_points(name: str) -> None:
    registry = default_registry()
    record = next(p for p in registry.plugins if p.name == name)
    assert (record.source, record.codecs, record.errors) == (f"mfdcomp-{name}", (name,), ())
    found = registry.get(name)
    assert type(found).__module__.startswith(f"mfdcomp_{name}.")
    info = found.info
    assert (info.name, info.qemu_flag, info.wire_format) == (name, FLAGS[name], f"{name}-stream")
    assert info.stateful and info.paths == (CodecPath.SOFTWARE,)
    assert (info.levels, info.default_level) == (LEVELS[name], 1)
    assert registry.for_flag(FLAGS[name]) is found


def test_lookup_by_flag() -> None:
    registry = default_registry()
    none = registry.for_flag(NOCOMP)
    assert none is not None and none.info.name == "none"
    assert registry.for_flag(0x06) is None, "two codec bits name no codec"


def test_core_never_names_the_plugins() -> None:
    core = Path(__file__).resolve().parents[2] / "mfdcomp"
    for source in core.rglob("*.py"):
        text = source.read_text()
        assert "mfdcomp_zlib" not in text and "mfdcomp_zstd" not in text, source


@pytest.mark.parametrize("name", [*REGISTERED, *ZLIBS])
def test_probe(name: str) -> None:
    found = codec(name)
    (probe,) = found.probe()
    assert probe.path is CodecPath.SOFTWARE and probe.available and probe.reason
    if family(name) == "zlib":
        # The registered codec runs the fastest library installed: ISA-L when python-isal imports.
        lib = lib_of(name)
        assert (probe.library, probe.version) == (lib.name, lib.version)
        assert (lib.name == libs.ISAL) == (HAS_ISAL and name != "zlib/zlib")
        assert getattr(found, "implementation", None) == lib.name
        assert found.probe() == found.probe()
    else:
        version = _zstdpages().version() if zstd_impl(name) == LIBZSTD else ".".join(map(str, zstandard.ZSTD_VERSION))
        assert (probe.library, probe.version) == ("libzstd", version)
        assert found.probe() == found.probe()


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("path", [CodecPath.HARDWARE, CodecPath.RAW])
def test_only_the_software_path(name: str, path: CodecPath) -> None:
    with pytest.raises(CodecError, match="only the software path"):
        codec(name).methods(PAGE, None, path)


# --- levels ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CODECS)
def test_levels_out_of_range(name: str) -> None:
    low, high = LEVELS[family(name)]
    for level in (low - 1, high + 1, 1000):
        with pytest.raises(CodecError, match=f"{family(name)} level must be {low}-{high}"):
            codec(name).methods(PAGE, level, CodecPath.SOFTWARE)
    assert codec(name).methods(PAGE, None, CodecPath.SOFTWARE).level == 1


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("bound", [0, 1], ids=["lowest", "highest"])
def test_levels_at_their_bounds(name: str, bound: int, image: bytes) -> None:
    level = LEVELS[family(name)][bound]
    packets = packets_of(image, [PACKET_PAGES, 3, 64], seed=level)
    sender, receiver, decode = Sender(name, level), Receiver(name), reference_decoder(name)
    payloads = [sender.send(data) for data in packets]
    for data, payload in zip(packets, payloads, strict=True):
        assert decode(payload) == data
        assert receiver.recv(payload, len(data) // PAGE) == data
    if family(name) == "zlib":
        # The zlib header carries the level class: zlib's 0x01 for levels 0-1, 0xda for 7-9; ISA-L's 0x5e.
        assert payloads[0][:2] == zlib_header(name, level)


@pytest.mark.parametrize("zlib_name", ZLIBS)
def test_the_level_is_applied(zlib_name: str, image: bytes) -> None:
    text = packets_of(image, [PACKET_PAGES] * 4, seed=3)
    stored = sum(len(Sender(zlib_name, 0).send(data)) for data in text)
    assert stored > sum(map(len, text)), "level 0 stores (on stdlib zlib: ISA-L has no stored mode)"
    for name, high in ((zlib_name, 9), ("zstd", 19)):
        low_size = sum(len(p) for p in map(Sender(name, 1).send, text))
        high_size = sum(len(p) for p in map(Sender(name, high).send, text))
        assert high_size < low_size


# --- cross-decoding with the references -------------------------------------------------------------------------


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("views", ["engine", "list"])
def test_our_stream_decodes_with_the_reference(name: str, views: str, image: bytes) -> None:
    packets = packets_of(image, some_counts(1, 60), seed=1)
    sender, decode = Sender(name, views=views), reference_decoder(name)
    payloads = [sender.send(data) for data in packets]
    for data, payload in zip(packets, payloads, strict=True):
        assert decode(payload) == data
    if family(name) == "zlib":
        # One stream: the zlib header opens the first payload only; each ends on the sync-flush marker.
        assert payloads[0][:2] == zlib_header(name, 1)
        assert all(payload.endswith(SYNC_FLUSH_MARKER) for payload in payloads)
    else:
        # One frame, never ended: its header opens the first payload only.
        assert payloads[0].startswith(ZSTD_MAGIC)
        assert not any(payload.startswith(ZSTD_MAGIC) for payload in payloads[1:])


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("views", ["engine", "list"])
def test_the_reference_stream_decodes_into_the_pages(name: str, views: str, image: bytes) -> None:
    packets = packets_of(image, some_counts(2, 60), seed=2)
    encode, receiver = reference_encoder(name), Receiver(name)
    for index, data in enumerate(packets):
        target = Target(len(data) // PAGE, seed=index, views=views)
        assert receiver.recv_into(encode(data), target.pages) is CodecPath.SOFTWARE
        assert target.contents() == data
        assert target.untouched_outside()


@pytest.mark.parametrize("name", CODECS)
def test_our_payloads_match_the_reference_bytes(name: str, image: bytes) -> None:
    """Feeding the pages one by one, or in runs of adjacent pages, gives the bytes of feeding the packet whole."""
    packets = packets_of(image, some_counts(3, 20), seed=3)
    by_page, by_run, encode = Sender(name, views="list"), Sender(name), reference_encoder(name)
    if family(name) == "zlib" and lib_of(name).name == libs.ISAL:
        # ISA-L's blocks depend on how the input is cut: only the decoded bytes are the same.
        decode_page, decode_run = reference_decoder(name), reference_decoder(name)
        for data in packets:
            assert decode_page(by_page.send(data)) == data
            assert decode_run(by_run.send(data)) == data
        return
    expected = [encode(data) for data in packets]
    assert [by_page.send(data) for data in packets] == expected
    assert [by_run.send(data) for data in packets] == expected


@pytest.mark.parametrize("name", CODECS)
@settings(max_examples=15, deadline=None)
@given(counts=st.lists(st.integers(1, PACKET_PAGES), min_size=1, max_size=6), seed=st.integers(0, 2**32))
def test_any_packet_sizes_round_trip(name: str, counts: list[int], seed: int) -> None:
    rng = random.Random(seed)
    packets = [
        b"".join(rng.choice([bytes(PAGE), rng.randbytes(PAGE), b"ab" * (PAGE // 2)]) for _ in range(n)) for n in counts
    ]
    sender, receiver = Sender(name), Receiver(name)
    for data in packets:
        assert receiver.recv(sender.send(data), len(data) // PAGE) == data


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("page_size", [8192, 65536])
def test_other_page_sizes(name: str, page_size: int, image: bytes) -> None:
    pages = page_count(page_size)
    sender, receiver, decode = Sender(name, page_size=page_size), Receiver(name, page_size), reference_decoder(name)
    for start in range(0, 4 * pages * page_size, pages * page_size):
        data = image[start : start + pages * page_size]
        payload = sender.send(data)
        assert decode(payload) == data
        assert receiver.recv(payload, pages) == data


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_page(name: str, kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.img"
    generate_image(path, 4 * PACKET_PAGES * PAGE, {kind: 1}, seed=5)
    image = path.read_bytes()
    packets = [image[start : start + PACKET_PAGES * PAGE] for start in range(0, len(image), PACKET_PAGES * PAGE)]
    sender, receiver, decode = Sender(name), Receiver(name), reference_decoder(name)
    payloads = [sender.send(data) for data in packets]
    for data, payload in zip(packets, payloads, strict=True):
        assert decode(payload) == data
        assert receiver.recv(payload, PACKET_PAGES) == data
    ratio = sum(map(len, payloads)) / len(image)
    expected = {"zero": (0, 0.01), "text": (0.1, 0.6), "random": (0.99, 1.01), "half": (0.5, 0.53)}[kind]
    assert expected[0] <= ratio <= expected[1], ratio


@pytest.mark.parametrize("name", CODECS)
def test_a_long_stream_on_one_channel(name: str, image: bytes) -> None:
    """3000+ packets through one stream each way, checked against the reference as they go."""
    rng = random.Random(6)
    counts = [rng.choice([1, 1, 2, 3, 5]) if index % 500 else PACKET_PAGES for index in range(3200)]
    sender, receiver, decode = Sender(name), Receiver(name), reference_decoder(name)
    for data in packets_of(image, counts, seed=6):
        payload = sender.send(data)
        assert decode(payload) == data
        assert receiver.recv(payload, len(data) // PAGE) == data
    assert receiver.packets == 3200


@pytest.mark.parametrize("name", CODECS)
def test_channels_in_parallel_keep_their_own_streams(name: str, image: bytes) -> None:
    results: dict[int, bool] = {}

    def channel(number: int) -> None:
        packets = packets_of(image, some_counts(number, 40), seed=number)
        sender, receiver = Sender(name), Receiver(name)
        results[number] = all(receiver.recv(sender.send(data), len(data) // PAGE) == data for data in packets)

    threads = [threading.Thread(target=channel, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {0: True, 1: True, 2: True, 3: True}


# --- QEMU's own streams -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CODECS)
def test_qemu_captures_replay_through_the_codec(name: str, capture_dirs: list[Path]) -> None:
    """Real QEMU channels of this codec decode to QEMU's final RAM; another codec refuses them."""
    captures = [d for d in capture_dirs if json.loads((d / "manifest.json").read_text())["codec"] == family(name)]
    if not captures:
        pytest.skip(f"no {name} capture among {len(capture_dirs)}")
    other = codec("zstd" if family(name) == "zlib" else "zlib")
    for directory in captures:
        manifest = json.loads((directory / "manifest.json").read_text())
        assert replay_capture(directory, codec(name)) == manifest["ram0"]["final_sha256"]
        with pytest.raises(CodecError, match=f"carries {family(name)} payloads, not {other.info.name} ones"):
            replay_capture(directory, other)


# --- bad payloads -----------------------------------------------------------------------------------------------


def refuse(receiver: Receiver, payload: bytes, pages: int, match: str) -> CodecError:
    """The payload is refused with ``match`` in the message; nothing outside the pages is written."""
    target = Target(pages, seed=pages, views="list" if pages % 2 == 0 else "engine")
    with pytest.raises(CodecError, match=match) as info:
        receiver.recv_into(payload, target.pages)
    assert target.untouched_outside()
    # The stream is out of step now: the channel is done.
    with pytest.raises(CodecError, match="closed"):
        receiver.recv_into(payload, target.pages)
    return info.value


@pytest.mark.parametrize("name", CODECS)
def test_corrupt_first_payload(name: str) -> None:
    garbage = b"\xff\xff" + random.Random(4).randbytes(3000)
    error = refuse(Receiver(name), garbage, 4, "corrupt")
    if family(name) == "zlib":
        assert isinstance(error.__cause__, lib_of(name).error)
    else:  # the library's own error, whichever runs the stream
        assert isinstance(error.__cause__, _zstdpages().Error if zstd_impl(name) == LIBZSTD else zstandard.ZstdError)


@pytest.mark.parametrize("name", CODECS)
def test_corrupt_later_payload(name: str, image: bytes) -> None:
    data = packets_of(image, [4], seed=4)[0]
    receiver = Receiver(name)
    assert receiver.recv(reference_encoder(name)(data), 4) == data
    refuse(receiver, RESERVED_BLOCK, 4, "corrupt")


@pytest.mark.parametrize("name", CODECS)
def test_a_fresh_receiver_cannot_join_a_stream_midway(name: str, image: bytes) -> None:
    encode = reference_encoder(name)
    first, second = packets_of(image, [3, 3], seed=5)
    encode(first)
    refuse(Receiver(name), encode(second), 3, "corrupt")


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("keep", [0.5, 0.1, -1, -4])
def test_truncated_payload(name: str, keep: float, image: bytes) -> None:
    first, second = packets_of(image, [16, 16], seed=7)
    encode, receiver = reference_encoder(name), Receiver(name)
    assert receiver.recv(encode(first), 16) == first
    payload = encode(second)
    cut = payload[: int(len(payload) * keep)] if keep > 0 else payload[: int(keep)]
    refuse(receiver, cut, 16, "short|corrupt|truncated")


@pytest.mark.parametrize("name", CODECS)
def test_empty_payload(name: str) -> None:
    refuse(Receiver(name), b"", 1, "decodes to 0 bytes")


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize(("sent", "expected", "match"), [(3, 2, "more than"), (3, 1, "more than"), (3, 4, "short")])
def test_payload_decoding_to_a_different_size(name: str, sent: int, expected: int, match: str, image: bytes) -> None:
    data = packets_of(image, [sent], seed=8)[0]
    refuse(Receiver(name), reference_encoder(name)(data), expected, match)


@pytest.mark.parametrize("name", CODECS)
def test_trailing_input_of_another_packet(name: str, image: bytes) -> None:
    first, second = packets_of(image, [2, 2], seed=9)
    encode = reference_encoder(name)
    refuse(Receiver(name), encode(first) + encode(second), 2, "more than")


@pytest.mark.parametrize("name", ZLIBS)
def test_a_finished_zlib_stream(name: str) -> None:
    deflate = zlib.compressobj(1)
    ended = deflate.compress(bytes(range(256)) * 16) + deflate.flush(zlib.Z_FINISH)
    refuse(Receiver(name), ended, 1, "ends the zlib stream")
    refuse(Receiver(name), ended + b"trailing", 1, "ends the zlib stream")


@pytest.mark.parametrize("name", ZLIBS)
def test_per_packet_zlib_streams_are_refused(name: str, image: bytes) -> None:
    """A fresh zlib.compress() per packet: the second carries a second zlib header (spec §13.5)."""
    first, second = packets_of(image, [1, 1], seed=10)
    receiver = Receiver(name)
    refuse(receiver, zlib.compress(first, 1), 1, "ends the zlib stream")
    receiver = Receiver(name)
    assert receiver.recv(reference_encoder("zlib/zlib")(first), 1) == first
    refuse(receiver, reference_encoder("zlib/zlib")(second), 1, "corrupt")


def test_a_finished_zstd_frame_followed_by_a_new_one(image: bytes) -> None:
    """Per-packet zstd frames: QEMU's sender never ends its frame."""
    first, second = packets_of(image, [2, 2], seed=11)
    one_shot = zstandard.ZstdCompressor(level=1)
    receiver = Receiver("zstd")
    assert receiver.recv(one_shot.compress(first), 2) == first
    refuse(receiver, one_shot.compress(second), 2, "new zstd frame")


def test_a_zstd_frame_asking_for_a_huge_window() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=27)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    payload = compressor.compress(bytes(PAGE)) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    refuse(Receiver("zstd"), payload, 1, "memory")


def _peak_while(call: Callable[[], object]) -> tuple[int, float]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(CodecError, match="more than"):
            call()
        return tracemalloc.get_traced_memory()[1], time.perf_counter() - started
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("after_good_packets", [False, True])
def test_a_bomb_is_refused_without_expanding_it(name: str, after_good_packets: bool, image: bytes) -> None:
    expanded = 64 << 20
    # The strongest level packs the most output into a payload QEMU would accept.
    encode, receiver = reference_encoder(name, LEVELS[family(name)][1]), Receiver(name)
    if after_good_packets:
        for data in packets_of(image, [8, PACKET_PAGES], seed=12):
            assert receiver.recv(encode(data), len(data) // PAGE) == data
    bomb = encode(bytes(expanded))
    assert len(bomb) <= MAX_PAYLOAD
    target = Target(PACKET_PAGES, seed=13)
    peak, seconds = _peak_while(lambda: receiver.recv_into(bomb, target.pages))
    assert peak < 4 << 20, f"peak {peak} bytes while refusing a {expanded}-byte bomb"
    assert seconds < 2
    assert target.untouched_outside()


# --- misuse ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CODECS)
def test_misuse_is_detected(name: str, image: bytes) -> None:
    data = packets_of(image, [1], seed=14)[0]
    page = [memoryview(data)]
    fresh = codec(name).methods(PAGE, None, CodecPath.SOFTWARE)
    with pytest.raises(CodecError, match="before setup"):
        fresh.send_prepare(page)

    sender = Sender(name)
    with pytest.raises(CodecError, match="already set up"):
        sender.method.send_setup(1)
    with pytest.raises(CodecError, match="already set up"):
        sender.method.recv_setup(0)

    payload = sender.send(data)
    receiver = Receiver(name)
    errors: list[BaseException] = []

    def elsewhere() -> None:
        calls: list[Callable[[], object]] = [lambda: sender.send(data), lambda: receiver.recv(payload, 1)]
        for call in calls:
            try:
                call()
            except CodecError as exc:
                errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert len(errors) == 2 and all("another thread" in str(e) for e in errors)
    # Refused before touching the streams: both still work here.
    assert receiver.recv(payload, 1) == data

    sender.method.send_cleanup()
    with pytest.raises(CodecError, match="closed"):
        sender.send(data)
    receiver.method.recv_cleanup()
    with pytest.raises(CodecError, match="closed"):
        receiver.recv(payload, 1)

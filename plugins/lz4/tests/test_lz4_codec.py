"""What the conformance suite cannot know about lz4: the payload format, the bounds, the extension id."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import lz4.block  # type: ignore[import-untyped]
import pytest
from mfdcomp.errors import CodecError, WireError
from mfdcomp.methods import CodecPath, PageViews
from mfdcomp.registry import default_registry
from mfdcomp.testing.checks import SuiteConfig, check_golden_vectors
from mfdcomp.wire import (
    EXTENSION,
    Flag,
    RamPacket,
    ReceiverLimits,
    check_header,
    check_ram,
    codec_name,
    ram_payload_size,
)
from mfdcomp.wire.packets import Header

from mfdcomp_lz4 import EXTENSION_ID, Lz4Methods

PAGE = 4096
GUARD = 0xEE
VECTORS = Path(__file__).resolve().parent / "vectors"
# One LZ4 block, made once by liblz4 1.9.4, of two zero pages: decoders must accept it for as long as the id lasts.
TWO_ZERO_PAGES = bytes.fromhex("1f000100" + "ff" * 32 + "07500000000000")


class Source:
    """A payload in memory, handed over as the engine's channel would."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self) -> memoryview:
        return memoryview(self.data)

    def read_into(self, views: Sequence[memoryview]) -> None:
        raise AssertionError("lz4 reads the payload whole")


def pages_of(count: int, seed: int = 1) -> bytes:
    """Half text-like, half random pages: some compress, some do not."""
    text = (b"mfdcomp lz4 example page " * 200)[:PAGE]
    rng = random.Random(seed)
    return b"".join(text if i % 2 else rng.randbytes(PAGE) for i in range(count))


def sender(level: int | None = None) -> Lz4Methods:
    method = Lz4Methods(PAGE, level)
    method.send_setup(0)
    return method


def encode(data: bytes, level: int | None = None) -> bytes:
    """The payload of one packet whose normal pages are ``data``, laid out as separate (non-adjacent) pages."""
    count = len(data) // PAGE
    memory = memoryview(bytearray(2 * len(data)))
    offsets = [2 * i * PAGE for i in range(count)]
    for i, offset in enumerate(offsets):
        memory[offset : offset + PAGE] = data[i * PAGE : (i + 1) * PAGE]
    payload = sender(level).send_prepare(PageViews(memory, offsets, PAGE))
    assert payload.path is CodecPath.SOFTWARE
    joined = b"".join(bytes(b) for b in payload.buffers)
    assert len(joined) == payload.size
    return joined


def packet(pages: int, payload: bytes) -> RamPacket:
    return RamPacket.data(
        flags=EXTENSION,
        extension_id=EXTENSION_ID,
        ramblock="ram0",
        normal=[i * PAGE for i in range(pages)],
        next_packet_size=len(payload),
        packet_num=7,
    )


def decode(pages: int, payload: bytes) -> bytes:
    """Decode into ``pages`` pages with a guard page before, between and after them; the guards must hold."""
    target = bytearray([GUARD]) * (PAGE * (2 * pages + 1))
    offsets = [(2 * i + 1) * PAGE for i in range(pages)]
    receiver = Lz4Methods(PAGE, None)
    receiver.recv_setup(0)
    try:
        path = receiver.recv(packet(pages, payload), Source(payload), PageViews(memoryview(target), offsets, PAGE))
        assert path is CodecPath.SOFTWARE
    finally:
        for i in range(pages + 1):
            assert target[2 * i * PAGE : (2 * i + 1) * PAGE] == bytes([GUARD]) * PAGE, "wrote outside the pages"
    return b"".join(target[o : o + PAGE] for o in offsets)


# --- the payload format ---------------------------------------------------------------------------------------------


def test_payload_is_one_raw_lz4_block_of_the_pages_in_order() -> None:
    data = pages_of(5)
    payload = encode(data)
    # No size prefix, no frame: liblz4's block decoder alone gives the pages back.
    assert lz4.block.decompress(payload, uncompressed_size=len(data)) == data
    assert payload == lz4.block.compress(data, store_size=False)


def test_a_block_made_by_liblz4_decodes() -> None:
    assert decode(2, TWO_ZERO_PAGES) == bytes(2 * PAGE)


def test_the_golden_payloads_decode(tmp_path: Path) -> None:
    # The suite's golden_vectors check on this plugin's own vectors (liblz4 1.9.4 output, levels 1 and 9).
    notes = check_golden_vectors(default_registry().get("lz4"), SuiteConfig(workdir=tmp_path, vectors=VECTORS))
    assert notes["vectors"] == ["lz4/mixed-16p/output.l1.bin (lz4)", "lz4/mixed-16p/output.l9.bin (lz4)"]


@pytest.mark.parametrize("level", [1, 2, 9, 12])
def test_every_level_decodes_with_the_same_receiver(level: int) -> None:
    data = pages_of(8)
    assert decode(8, encode(data, level)) == data


def test_levels_outside_1_to_12_are_refused() -> None:
    with pytest.raises(CodecError, match="level must be 1-12"):
        Lz4Methods(PAGE, 13)


# --- bounded decoding -----------------------------------------------------------------------------------------------


def test_a_bomb_is_refused_without_writing_past_the_pages() -> None:
    # 128 zero pages (512 KiB) fit in about 2 KiB; announced as a one-page packet, they must not be decoded.
    bomb = lz4.block.compress(bytes(128 * PAGE), store_size=False)
    assert len(bomb) < 2 * PAGE
    with pytest.raises(CodecError, match="decodes to more than 4096 bytes") as caught:
        decode(1, bomb)
    assert isinstance(caught.value.__cause__, lz4.block.LZ4BlockError)


def test_a_payload_short_of_the_pages_is_refused() -> None:
    with pytest.raises(CodecError, match="decodes to 8192 bytes, not the 12288 of its 3 pages"):
        decode(3, TWO_ZERO_PAGES)


@pytest.mark.parametrize(
    "broken",
    [TWO_ZERO_PAGES[:-1], TWO_ZERO_PAGES[:10], b"", TWO_ZERO_PAGES + b"\x00garbage", b"\xff" * 64],
    ids=["truncated", "cut", "empty", "trailing-garbage", "scrambled"],
)
def test_corrupt_payloads_are_a_codec_error(broken: bytes) -> None:
    with pytest.raises(CodecError, match="lz4 payload of packet 7"):
        decode(2, broken)


# --- on the wire: an extension codec ----------------------------------------------------------------------------


def test_the_plugin_registers_lz4_under_its_extension_id() -> None:
    codec = default_registry().get("lz4")
    assert codec.info.qemu_flag is None
    assert codec.info.extension_id == EXTENSION_ID == 0x4C5A3401
    method = codec.methods(PAGE, None, CodecPath.SOFTWARE)
    assert (method.flag, method.extension_id) == (EXTENSION, EXTENSION_ID)
    probe = codec.probe()
    assert [p.path for p in probe] == [CodecPath.SOFTWARE] and probe[0].library == "liblz4"
    assert probe[0].version == lz4.library_version_string()


def test_the_id_travels_in_the_first_reserved_word() -> None:
    raw = packet(1, TWO_ZERO_PAGES).encode()
    # magic, version, flags, pages_alloc, normal, next_packet_size, packet_num (u64), zero_pages: 36 bytes.
    assert raw[36:40] == b"LZ4\x01"
    assert RamPacket.decode(raw).extension_id == EXTENSION_ID
    check_header(Header.decode(raw))  # every codec bit at once is valid on mfdcomp's wire


def test_a_zstd_session_refuses_an_lz4_packet_by_name() -> None:
    limits = ReceiverLimits(page_size=PAGE, channels=1, ramblocks={"ram0": 1 << 20}, codec_flag=int(Flag.ZSTD))
    lz4_packet = packet(1, TWO_ZERO_PAGES)
    check_ram(lz4_packet, limits)  # the pages are fine; the codec is not
    with pytest.raises(WireError, match=f"packet is mfdcomp extension {EXTENSION_ID} .*the session uses zstd"):
        ram_payload_size(lz4_packet, limits)


@pytest.mark.parametrize("flag", [Flag.ZLIB, Flag.ZSTD, Flag.QPL, Flag.UADK, Flag.QATZIP, 0])
def test_no_qemu_codec_takes_an_lz4_packet(flag: int) -> None:
    # A QEMU receiver compares the codec bits with its one flag: every bit set never matches.
    limits = ReceiverLimits(page_size=PAGE, codec_flag=flag)
    with pytest.raises(WireError, match=f"session uses {codec_name(flag)}"):
        ram_payload_size(packet(1, TWO_ZERO_PAGES), limits)


def test_another_extension_codec_refuses_an_lz4_packet_by_id() -> None:
    limits = ReceiverLimits(page_size=PAGE, codec_flag=EXTENSION, extension_id=EXTENSION_ID + 1)
    with pytest.raises(WireError, match=f"packet is mfdcomp extension {EXTENSION_ID}, the session uses") as caught:
        ram_payload_size(packet(1, TWO_ZERO_PAGES), limits)
    assert caught.value.field == "extension_id"
    own = ReceiverLimits(page_size=PAGE, codec_flag=EXTENSION, extension_id=EXTENSION_ID)
    assert ram_payload_size(packet(1, TWO_ZERO_PAGES), own) == len(TWO_ZERO_PAGES)

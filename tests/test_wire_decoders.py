"""Per-channel payload decoders (mfdcomp.qemu.decoders): one stream per channel, exact sizes, no bombs."""

from __future__ import annotations

import random
import time
import tracemalloc
import zlib
from collections.abc import Callable

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from mfdcomp.errors import CodecError
from mfdcomp.qemu.decoders import NocompDecoder, PayloadDecoder, ZlibDecoder, ZstdDecoder, decoder_for
from mfdcomp.wire import NOCOMP, Flag

PAGE = 4096
PACKET_PAGES = 128


def pages(rng: random.Random, count: int) -> bytes:
    """QEMU-like pages: zero, text-like, random and half-zero."""
    out = bytearray()
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(50)]
    for _ in range(count):
        kind = rng.choice("ZTRH")
        if kind == "Z":
            out += bytes(PAGE)
        elif kind == "T":
            text = b" ".join(rng.choices(words, k=PAGE // 2))
            out += text[:PAGE]
        elif kind == "R":
            out += rng.randbytes(PAGE)
        else:
            out += rng.randbytes(PAGE // 2) + bytes(PAGE // 2)
    return bytes(out)


def zlib_stream(packets: list[bytes], *, finish_last: bool = False) -> list[bytes]:
    """QEMU's zlib sender: one deflate stream per channel, Z_SYNC_FLUSH per packet."""
    deflate = zlib.compressobj(1)
    out = []
    for index, data in enumerate(packets):
        mode = zlib.Z_FINISH if finish_last and index == len(packets) - 1 else zlib.Z_SYNC_FLUSH
        out.append(deflate.compress(data) + deflate.flush(mode))
    return out


def zstd_stream(packets: list[bytes]) -> list[bytes]:
    """QEMU's zstd sender: one frame per channel, never closed, flushed per packet."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    return [compressor.compress(data) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) for data in packets]


ENCODERS: dict[str, tuple[Callable[[list[bytes]], list[bytes]], Callable[[], PayloadDecoder]]] = {
    "zlib": (zlib_stream, ZlibDecoder),
    "zstd": (zstd_stream, ZstdDecoder),
}


def sample_packets(seed: int, counts: list[int]) -> list[bytes]:
    rng = random.Random(seed)
    return [pages(rng, n) for n in counts]


@pytest.mark.parametrize("codec", list(ENCODERS))
def test_stream_decodes_packet_by_packet(codec: str) -> None:
    encode, decoder_type = ENCODERS[codec]
    packets = sample_packets(1, [128, 1, 37, 128, 5])
    payloads = encode(packets)
    assert codec != "zlib" or (payloads[0][:2] == b"\x78\x01" and all(p.endswith(b"\0\0\xff\xff") for p in payloads))
    assert codec != "zstd" or payloads[0][:4] == b"\x28\xb5\x2f\xfd"
    decoder = decoder_type()
    for data, payload in zip(packets, payloads, strict=True):
        assert decoder.decode(payload, len(data)) == data


@pytest.mark.parametrize("codec", list(ENCODERS))
@settings(max_examples=25, deadline=None)
@given(counts=st.lists(st.integers(1, PACKET_PAGES), min_size=1, max_size=6), seed=st.integers(0, 2**32))
def test_any_packet_sizes_round_trip(codec: str, counts: list[int], seed: int) -> None:
    encode, decoder_type = ENCODERS[codec]
    packets = sample_packets(seed, counts)
    decoder = decoder_type()
    for data, payload in zip(packets, encode(packets), strict=True):
        assert decoder.decode(payload, len(data)) == data


@pytest.mark.parametrize("codec", list(ENCODERS))
def test_a_fresh_decoder_cannot_join_a_stream_midway(codec: str) -> None:
    encode, decoder_type = ENCODERS[codec]
    payloads = encode(sample_packets(2, [3, 3]))
    with pytest.raises(CodecError):
        decoder_type().decode(payloads[1], 3 * PAGE)


# Deflate block type 3 and zstd block type 3 are reserved: a payload starting with 0x06 is corrupt in both.
RESERVED_BLOCK = b"\x06" + bytes(range(1, 200))


@pytest.mark.parametrize("codec", list(ENCODERS))
@pytest.mark.parametrize("where", ["first", "second"])
def test_corrupt_payload(codec: str, where: str) -> None:
    encode, decoder_type = ENCODERS[codec]
    packets = sample_packets(3, [4, 4])
    payloads = encode(packets)
    decoder = decoder_type()
    if where == "first":
        bad = random.Random(4).randbytes(len(payloads[0]))
        with pytest.raises(CodecError, match="corrupt"):
            decoder.decode(b"\xff\xff" + bad, len(packets[0]))
        return
    assert decoder.decode(payloads[0], len(packets[0])) == packets[0]
    with pytest.raises(CodecError, match="corrupt"):
        decoder.decode(RESERVED_BLOCK, len(packets[1]))


@pytest.mark.parametrize("codec", list(ENCODERS))
@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_payload(codec: str, keep: float) -> None:
    encode, decoder_type = ENCODERS[codec]
    packets = sample_packets(5, [16, 16])
    payloads = encode(packets)
    decoder = decoder_type()
    assert decoder.decode(payloads[0], len(packets[0])) == packets[0]
    with pytest.raises(CodecError):
        decoder.decode(payloads[1][: int(len(payloads[1]) * keep)], len(packets[1]))


@pytest.mark.parametrize("codec", list(ENCODERS))
@pytest.mark.parametrize("expected_pages", [2, 4, 1])
def test_payload_decoding_to_a_different_size(codec: str, expected_pages: int) -> None:
    encode, decoder_type = ENCODERS[codec]
    packets = sample_packets(6, [3])
    with pytest.raises(CodecError):
        decoder_type().decode(encode(packets)[0], expected_pages * PAGE)


def test_empty_zstd_payload_decodes_to_nothing() -> None:
    with pytest.raises(CodecError, match="decoded to 0 bytes"):
        ZstdDecoder().decode(b"", PAGE)


def test_finished_zlib_stream_is_refused() -> None:
    packets = sample_packets(7, [2, 2])
    payloads = zlib_stream(packets, finish_last=True)
    decoder = ZlibDecoder()
    assert decoder.decode(payloads[0], len(packets[0])) == packets[0]
    with pytest.raises(CodecError, match="finished"):
        decoder.decode(payloads[1], len(packets[1]))


def test_per_packet_zlib_streams_are_refused() -> None:
    """A fresh zlib.compress() per packet is what QEMU's inflate rejects (spec §13.5)."""
    packets = sample_packets(8, [1, 1])
    decoder = ZlibDecoder()
    with pytest.raises(CodecError):
        decoder.decode(zlib.compress(packets[0], 1), PAGE)


def _peak_while(call: Callable[[], object]) -> tuple[int, float]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(CodecError):
            call()
        return tracemalloc.get_traced_memory()[1], time.perf_counter() - started
    finally:
        tracemalloc.stop()


def test_zstd_bomb_is_refused_without_expanding_it() -> None:
    expanded = 64 << 20
    bomb = zstd_stream([bytes(expanded)])[0]
    assert len(bomb) < 16 << 10, "a few KiB"
    peak, seconds = _peak_while(lambda: ZstdDecoder().decode(bomb, PACKET_PAGES * PAGE))
    assert peak < 4 << 20, f"peak {peak} bytes while refusing a {expanded}-byte bomb"
    assert seconds < 2


def test_zstd_bomb_after_good_packets() -> None:
    packets = sample_packets(9, [8])
    payloads = zstd_stream([*packets, bytes(64 << 20)])
    decoder = ZstdDecoder()
    assert decoder.decode(payloads[0], len(packets[0])) == packets[0]
    peak, _seconds = _peak_while(lambda: decoder.decode(payloads[1], PAGE))
    assert peak < 4 << 20


def test_zlib_bomb_is_refused_without_expanding_it() -> None:
    expanded = 64 << 20
    bomb = zlib_stream([bytes(expanded)])[0]
    peak, _seconds = _peak_while(lambda: ZlibDecoder().decode(bomb, PAGE))
    assert peak < 4 << 20, f"peak {peak} bytes while refusing a {expanded}-byte bomb"


def test_nocomp_decoder() -> None:
    data = bytes(range(256)) * 32
    assert NocompDecoder().decode(data, len(data)) == data
    with pytest.raises(CodecError):
        NocompDecoder().decode(data[:-1], len(data))


@pytest.mark.parametrize(
    ("flag", "kind"), [(NOCOMP, NocompDecoder), (Flag.ZLIB, ZlibDecoder), (Flag.ZSTD, ZstdDecoder)]
)
def test_decoder_for(flag: int, kind: type) -> None:
    assert isinstance(decoder_for(flag), kind)
    assert decoder_for(flag) is not decoder_for(flag), "one decoder per channel"


@pytest.mark.parametrize("flag", [Flag.QPL, Flag.UADK, Flag.QATZIP, 0x06])
def test_decoder_for_an_unsupported_codec(flag: int) -> None:
    with pytest.raises(CodecError, match="no decoder"):
        decoder_for(flag)

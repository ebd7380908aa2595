"""Per-channel payload decoders for the codecs QEMU's Debian builds send.

One decoder per channel, fed that channel's packets in order: zlib and zstd
keep one stream per channel for the whole migration (spec §5.2-5.3). Each
payload must decode to exactly ``normal_pages × page_size`` bytes; more output
than that is refused before it is produced (no decompression bombs).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import IO, Protocol, cast

import zstandard

from mfdcomp.errors import CodecError
from mfdcomp.wire.constants import MULTIFD_PACKET_SIZE, NOCOMP, Flag, codec_name


class PayloadDecoder(Protocol):
    def decode(self, payload: bytes, expected: int) -> bytes:
        """The normal pages of one packet, concatenated."""


class NocompDecoder:
    def decode(self, payload: bytes, expected: int) -> bytes:
        if len(payload) != expected:
            raise CodecError(f"nocomp payload is {len(payload)} bytes, expected {expected}")
        return payload


class ZlibDecoder:
    def __init__(self) -> None:
        self._inflate = zlib.decompressobj()

    def decode(self, payload: bytes, expected: int) -> bytes:
        try:
            out = self._inflate.decompress(payload, expected + 1)
        except zlib.error as exc:
            raise CodecError(f"zlib payload is corrupt: {exc}") from exc
        if self._inflate.eof:
            raise CodecError("zlib stream was finished; QEMU keeps one open stream per channel")
        if len(out) != expected or self._inflate.unconsumed_tail:
            raise CodecError(f"zlib payload decoded to {len(out)} bytes or more, expected {expected}")
        return out


class _BoundedSink:
    """Collects decoder output and refuses anything past ``limit`` bytes."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.limit = 0

    def write(self, data: bytes) -> int:
        if len(self.out) + len(data) > self.limit:
            raise CodecError(f"zstd payload decodes to more than the expected {self.limit} bytes")
        self.out += data
        return len(data)


class ZstdDecoder:
    def __init__(self) -> None:
        self._sink = _BoundedSink()
        # An output buffer larger than any packet's pages: zstd then hands out
        # everything a payload decodes to in one pass, and a bomb overflows it
        # into the bounded sink at once.
        self._stream = zstandard.ZstdDecompressor().stream_writer(
            cast(IO[bytes], self._sink), write_size=MULTIFD_PACKET_SIZE + 1, write_return_read=True
        )

    def decode(self, payload: bytes, expected: int) -> bytes:
        self._sink.out = bytearray()
        self._sink.limit = expected
        try:
            self._stream.write(payload)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd payload is corrupt: {exc}") from exc
        if len(self._sink.out) != expected:
            raise CodecError(f"zstd payload decoded to {len(self._sink.out)} bytes, expected {expected}")
        return bytes(self._sink.out)


DECODERS: dict[int, Callable[[], PayloadDecoder]] = {
    NOCOMP: NocompDecoder,
    Flag.ZLIB: ZlibDecoder,
    Flag.ZSTD: ZstdDecoder,
}


def decoder_for(codec_flag: int) -> PayloadDecoder:
    factory = DECODERS.get(codec_flag)
    if factory is None:
        raise CodecError(f"no decoder for codec {codec_name(codec_flag)} in this replay")
    return factory()

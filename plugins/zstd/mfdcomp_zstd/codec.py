"""QEMU's multifd zstd (spec §5.3): one zstd frame per channel, block-flushed per packet.

The sender feeds the packet's pages (adjacent ones as one piece) into the
channel's compression stream and ends the packet with a block flush
(ZSTD_e_flush): the frame header opens the channel's first payload and the
frame is never ended. The receiver decompresses with one stream per channel,
in packet order, into the packet's pages in target memory.

Two implementations: python-zstandard, the reference, and where it was built
at install the compiled ``_zstdpages`` on the system's libzstd (the library
QEMU links), which compresses a packet and decodes a payload straight into its
pages in one call each, without the GIL. MFDCOMP_PURE_PYTHON=1 chooses the
reference; the conformance suite and the fuzz tests run each against the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import IO, cast

import zstandard
from typing_extensions import Buffer

from mfdcomp import speedups
from mfdcomp.errors import CodecError
from mfdcomp.methods import (
    CodecInfo,
    CodecPath,
    MultiFDMethods,
    PacketCompressor,
    PacketDecompressor,
    PageViews,
    PathProbe,
    PayloadSource,
    SendPayload,
)
from mfdcomp.methods.impls import Implementations
from mfdcomp.methods.probed import ProbedCodec
from mfdcomp.wire import MULTIFD_PACKET_SIZE, Flag, RamPacket

ZSTD_INFO = CodecInfo(
    name="zstd",
    qemu_flag=int(Flag.ZSTD),
    wire_format="zstd-stream",
    stateful=True,
    paths=(CodecPath.SOFTWARE,),
    levels=(0, 20),
    default_level=1,
    description="zstd: one zstd frame per channel, a block flush at every packet end (QEMU's zstd)",
)

FRAME_MAGIC = b"\x28\xb5\x2f\xfd"

# The largest window a QEMU level (at most 20) asks for; a frame that wants
# more memory is refused instead of being given it.
MAX_WINDOW = 1 << 25


def window_for(level: int) -> int:
    """The window a streaming zstd sender at ``level`` uses (size unknown, as QEMU's ZSTD_initCStream).

    A receiver that knows the session's level allows no more: a source that
    announces level 1 (512 KiB) cannot make each of 255 channels hold 32 MiB.
    """
    return min(MAX_WINDOW, 1 << zstandard.ZstdCompressionParameters.from_level(level).window_log)


# The decompressor's output buffer, larger than any packet's pages: a packet's
# output then leaves the decoder within its write() (none is held back for the
# next packet), and a payload that fills the buffer has decoded to too much.
_OUTPUT_SIZE = MULTIFD_PACKET_SIZE + 1


class _TooMuch(Exception):
    """The payload decoded past the packet's pages."""


class _Corrupt(Exception):
    """The library refused the payload; the message is the library's."""


LIBZSTD = "libzstd"
PYTHON_ZSTANDARD = "python-zstandard"
ZSTD_IMPLS = Implementations(env="MFDCOMP_ZSTD_IMPL", names=(LIBZSTD, PYTHON_ZSTANDARD))


def _load_compiled() -> ModuleType | str:
    """The compiled streams, or why python-zstandard runs: mfdcomp's MFDCOMP_PURE_PYTHON switch holds here too."""
    return speedups.import_compiled("mfdcomp_zstd._zstdpages")


def _spans(pages: Sequence[memoryview]) -> Sequence[memoryview]:
    """The pages in order, adjacent ones as one view when the engine tells which are adjacent."""
    return pages.runs() if isinstance(pages, PageViews) else pages


class _PageSink:
    """Takes the decompressor's output into the packet's pages, and not a byte more."""

    def __init__(self) -> None:
        self.spans: Sequence[memoryview] = ()
        self.limit = 0
        self.written = 0
        self._index = 0  # the span being filled
        self._offset = 0  # and how much of it is

    def start(self, pages: Sequence[memoryview], limit: int) -> None:
        self.spans = _spans(pages)
        self.limit = limit
        self.written = 0
        self._index = self._offset = 0

    def write(self, data: bytes) -> int:
        size = len(data)
        if self.written + size > self.limit:
            raise _TooMuch
        view = memoryview(data)
        index, offset = self._index, self._offset
        done = 0
        while done < size:
            span = self.spans[index]
            count = min(len(span) - offset, size - done)
            span[offset : offset + count] = view[done : done + count]
            done += count
            offset += count
            if offset == len(span):
                index, offset = index + 1, 0
        self._index, self._offset = index, offset
        self.written += size
        return size


class ZstdMethods(MultiFDMethods):
    """One channel's zstd stream, one direction.

    A packet that fails leaves the stream out of step with the peer's, so the
    stream is dropped then and every later packet of the channel is refused.
    """

    info = ZSTD_INFO

    def __init__(self, page_size: int, level: int | None, compiled: ModuleType | None = None) -> None:
        super().__init__(page_size, level)
        # A session's level bounds the decoder's window; with none (the tap, a capture: QEMU's level is
        # not on the wire) any QEMU level's window is allowed.
        self._max_window = MAX_WINDOW if level is None else window_for(level)
        self._compiled = compiled  # mfdcomp_zstd._zstdpages, or None for python-zstandard
        # The channel's stream in one direction: a python-zstandard object or a compiled one.
        self._compress: zstandard.ZstdCompressionObj | object | None = None
        self._decompress: zstandard.ZstdDecompressionWriter | object | None = None
        self._sink = _PageSink()
        self._started = False

    @property
    def implementation(self) -> str:
        """Which library runs this channel's stream (the engine counts packets by it)."""
        return LIBZSTD if self._compiled is not None else PYTHON_ZSTANDARD

    def send_setup(self, channel: int) -> None:
        super().send_setup(channel)
        assert self.level is not None, "ZSTD_INFO has a default level"
        if self._compiled is not None:
            self._compress = self._compiled.CStream(self.level)
        else:
            # Library defaults otherwise, as ZSTD_initCStream(level): no checksum, unknown content size.
            self._compress = zstandard.ZstdCompressor(level=self.level).compressobj()

    def send_prepare(self, pages: Sequence[memoryview]) -> SendPayload:
        self.owner.check()
        compress = self._compress
        if compress is None:
            raise self._closed()
        self._compress = None
        try:
            chunks = self._compress_packet(compress, _spans(pages))
        except _Corrupt as exc:
            raise CodecError(f"zstd compression failed: {exc}") from exc.__cause__
        self._compress = compress
        buffers: list[Buffer] = [chunk for chunk in chunks if chunk]
        return SendPayload(buffers=buffers, size=sum(map(len, chunks)), path=CodecPath.SOFTWARE)

    def packet_compressor(self) -> PacketCompressor | None:
        """The compiled stream as the engine's compiled send path calls it (the same stream as send_prepare's)."""
        if self._compiled is None or self._compress is None:
            return None
        return PacketCompressor(self._compress.packet_compressor(), CodecPath.SOFTWARE)  # type: ignore[attr-defined]

    def _compress_packet(self, compress: object, spans: Sequence[memoryview]) -> list[bytes] | list[memoryview]:
        """The packet's payload, in pieces: the spans fed to the stream, then a block flush."""
        if self._compiled is not None:
            try:
                return [cast(memoryview, compress.compress(spans))]  # type: ignore[attr-defined]
            except self._compiled.Error as exc:
                raise _Corrupt(str(exc)) from exc
        reference = cast("zstandard.ZstdCompressionObj", compress)
        try:
            # Straight from the pages, with no copy into one buffer; the stream
            # buffers up to a block anyway, so how the input is split does not matter.
            chunks = [reference.compress(span) for span in spans]
            chunks.append(reference.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        except zstandard.ZstdError as exc:
            raise _Corrupt(str(exc)) from exc
        return chunks

    def send_cleanup(self) -> None:
        self._compress = None

    def recv_setup(self, channel: int) -> None:
        super().recv_setup(channel)
        if self._compiled is not None:
            self._decompress = self._compiled.DStream(self._max_window.bit_length() - 1, _OUTPUT_SIZE, channel)
            return
        decompressor = zstandard.ZstdDecompressor(max_window_size=self._max_window)
        self._decompress = decompressor.stream_writer(
            cast(IO[bytes], self._sink), write_size=_OUTPUT_SIZE, closefd=False
        )

    def recv(self, packet: RamPacket, source: PayloadSource, pages: Sequence[memoryview]) -> CodecPath:
        self.owner.check()
        decompress = self._decompress
        if decompress is None:
            raise self._closed()
        # The compiled stream keeps its state itself: the compiled receive loop may have taken packets.
        compiled = self._compiled is not None
        if compiled and decompress.broken:  # type: ignore[attr-defined]
            raise self._closed()
        self._decompress = None
        payload = source.read()
        started = decompress.started if compiled else self._started  # type: ignore[attr-defined]
        if compiled:
            decompress.broken = True  # type: ignore[attr-defined]  # until this packet decoded whole
        # A block header never starts with these bytes, so only a sender that
        # ended its frame and began another writes them after the first packet.
        if started and payload[: len(FRAME_MAGIC)] == FRAME_MAGIC:
            raise self._bad(packet, pages, "starts a new zstd frame, but QEMU keeps one open frame per channel")
        limit = len(pages) * self.page_size
        try:
            written = self._decode(decompress, payload, _spans(pages), limit)
        except _Corrupt as exc:  # the library's own error is the cause
            raise self._bad(packet, pages, f"is corrupt or unsupported: {exc}") from exc.__cause__
        if written > limit:
            raise self._bad(packet, pages, f"decodes to more than {limit} bytes")
        if written != limit:
            raise self._bad(packet, pages, f"decodes to {written} bytes, short of {limit}")
        if compiled:
            decompress.broken = False  # type: ignore[attr-defined]
            decompress.started = True  # type: ignore[attr-defined]
        self._started = True
        self._decompress = decompress
        return CodecPath.SOFTWARE

    def packet_decompressor(self) -> PacketDecompressor | None:
        """The compiled stream as the engine's compiled receive loop calls it (the same stream as recv's)."""
        if self._compiled is None or self._decompress is None:
            return None
        return PacketDecompressor(self._decompress.packet_decompressor(), CodecPath.SOFTWARE)  # type: ignore[attr-defined]

    def _decode(self, decompress: object, payload: bytes | memoryview, spans: Sequence[memoryview], limit: int) -> int:
        """All of the payload into the spans: the bytes it decoded to, more than ``limit`` if too many."""
        if self._compiled is not None:
            try:
                return cast(int, decompress.decompress_into(payload, spans))  # type: ignore[attr-defined]
            except self._compiled.Error as exc:
                raise _Corrupt(str(exc)) from exc
        sink = self._sink
        sink.start(spans, limit)
        try:
            cast("zstandard.ZstdDecompressionWriter", decompress).write(payload)
        except zstandard.ZstdError as exc:
            raise _Corrupt(str(exc)) from exc
        except _TooMuch:
            return limit + 1
        finally:
            sink.spans = ()
        return sink.written

    def recv_cleanup(self) -> None:
        self._decompress = None

    def _bad(self, packet: RamPacket, pages: Sequence[memoryview], problem: str) -> CodecError:
        return CodecError(
            f"zstd payload of packet {packet.packet_num} (pages: {len(pages)} × {self.page_size} bytes) {problem}"
        )

    def _closed(self) -> CodecError:
        return CodecError(
            f"the zstd stream of channel {self.owner.channel} is closed (cleaned up, or an earlier packet failed)"
        )


class ZstdCodec(ProbedCodec):
    """The registered codec. ``impl`` forces ``libzstd`` or ``python-zstandard`` over ``MFDCOMP_ZSTD_IMPL``.

    Unset, the compiled streams on the system's libzstd where they were built
    and MFDCOMP_PURE_PYTHON is not set; python-zstandard otherwise.
    """

    info = ZSTD_INFO
    impls = ZSTD_IMPLS

    def __init__(self, impl: str | None = None) -> None:
        super().__init__()
        self.impl = impl
        self._compiled: ModuleType | None = None  # set by the probe when the compiled streams run
        self._chosen: str | None = None  # set by the probe

    def _probe(self) -> list[PathProbe]:
        reference = f"python-zstandard {zstandard.__version__} ({zstandard.backend} backend)"
        try:
            forced = ZSTD_IMPLS.forced(self.impl)
        except ValueError as exc:
            return [PathProbe(CodecPath.SOFTWARE, False, str(exc))]
        compiled = _load_compiled()
        if forced == LIBZSTD and isinstance(compiled, str):
            reason = f"{LIBZSTD} is forced, but the compiled streams do not run: {compiled}"
            return [PathProbe(CodecPath.SOFTWARE, False, reason, LIBZSTD)]
        why = "forced" if forced is not None else "the default"
        if forced != PYTHON_ZSTANDARD and not isinstance(compiled, str):
            self._compiled, self._chosen = compiled, LIBZSTD
            version = str(compiled.version())
            reason = (
                f"compiled mfdcomp_zstd._zstdpages on the system's libzstd {version} ({why}; reference: {reference})"
            )
        else:
            self._chosen = PYTHON_ZSTANDARD
            version = ".".join(map(str, zstandard.ZSTD_VERSION))
            reason = f"{reference} with its libzstd {version} ({why if forced else compiled})"
        return [PathProbe(CodecPath.SOFTWARE, True, reason, library="libzstd", version=version)]

    @property
    def implementation(self) -> str | None:
        self.probe()
        return self._chosen

    def implementations(self) -> dict[str, ZstdCodec]:
        """The other implementation when it runs here (the conformance suite cross-decodes them)."""
        mine = self.implementation
        runs = {PYTHON_ZSTANDARD} | ({LIBZSTD} if not isinstance(_load_compiled(), str) else set())
        return {name: ZstdCodec(impl=name) for name in ZSTD_IMPLS.names if name != mine and name in runs}

    def methods(self, page_size: int, level: int | None, path: CodecPath = CodecPath.SOFTWARE) -> ZstdMethods:
        if path is not CodecPath.SOFTWARE:
            raise CodecError(f"zstd has only the software path, not {path}")
        self.require_path(path)
        return ZstdMethods(page_size, level, self._compiled)

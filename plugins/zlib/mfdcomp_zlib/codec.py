"""QEMU's multifd zlib (spec §5.2): one deflate stream per channel, sync-flushed per packet.

The sender feeds the packet's pages (adjacent ones as one piece) into the
channel's deflate stream and ends the packet with Z_SYNC_FLUSH, so the
payload stops on a byte boundary with the empty stored block ``00 00 ff ff``
and the stream goes on in the next packet. The receiver inflates with one
stream per channel, in packet order, into the packet's pages in target memory.

Two libraries implement the stream (:mod:`mfdcomp.methods.deflate`): ISA-L
(python-isal), the default when it imports, about 6x zlib's level-1 speed,
and Python's zlib. ``MFDCOMP_ZLIB_IMPL=isal|zlib`` (or ``ZlibCodec(impl=)``)
forces one. Both write a standard zlib stream (windowBits 15, header, no
trailer), which QEMU's inflate takes; ISA-L's levels 0-3 stand in for zlib's
1-9 as :func:`mfdcomp.methods.deflate.isal_level` maps them, and level 0
(stored blocks, which ISA-L lacks) always runs on zlib.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from typing_extensions import Buffer

from mfdcomp.errors import CodecError
from mfdcomp.methods import CodecInfo, CodecPath, MultiFDMethods, PageViews, PathProbe, PayloadSource, SendPayload
from mfdcomp.methods import deflate as libs
from mfdcomp.methods.deflate import Compressor, Decompressor, Deflate
from mfdcomp.methods.impls import Implementations
from mfdcomp.methods.probed import ProbedCodec
from mfdcomp.wire import Flag, RamPacket

ZLIB_INFO = CodecInfo(
    name="zlib",
    qemu_flag=int(Flag.ZLIB),
    wire_format="zlib-stream",
    stateful=True,
    paths=(CodecPath.SOFTWARE,),
    levels=(0, 9),
    default_level=1,
    description="zlib: one deflate stream per channel, Z_SYNC_FLUSH at every packet end (QEMU's zlib)",
)

# Fastest first: the default is the first that imports.
ZLIB_IMPLS = Implementations(env="MFDCOMP_ZLIB_IMPL", names=(libs.ISAL, libs.ZLIB))

# What Z_SYNC_FLUSH leaves at the end of every packet: an empty stored block.
SYNC_FLUSH_MARKER = b"\x00\x00\xff\xff"


def _spans(pages: Sequence[memoryview]) -> Sequence[memoryview]:
    """The pages in order, adjacent ones as one view when the engine tells which are adjacent."""
    return pages.runs() if isinstance(pages, PageViews) else pages


class ZlibMethods(MultiFDMethods):
    """One channel's zlib stream, one direction.

    A packet that fails leaves the stream out of step with the peer's, so the
    stream is dropped then and every later packet of the channel is refused.
    """

    info = ZLIB_INFO

    def __init__(self, page_size: int, level: int | None, lib: Deflate = libs.STDLIB) -> None:
        super().__init__(page_size, level)
        # Level 0 is stored blocks, which only zlib writes; ISA-L still inflates.
        self._send_lib = libs.STDLIB if self.level == 0 else lib
        self._recv_lib = lib
        self._deflate: Compressor | None = None
        self._inflate: Decompressor | None = None
        self._lib = lib

    @property
    def implementation(self) -> str:
        """``isal`` or ``zlib``: the library of the stream set up last (the sending one at level 0 is zlib)."""
        return self._lib.name

    def send_setup(self, channel: int) -> None:
        super().send_setup(channel)
        assert self.level is not None, "ZLIB_INFO has a default level"
        # windowBits 15, memLevel 8, default strategy: QEMU's deflateInit(level).
        self._lib = self._send_lib
        self._deflate = self._send_lib.compressobj(self.level)

    def send_prepare(self, pages: Sequence[memoryview]) -> SendPayload:
        self.owner.check()
        deflate = self._deflate
        if deflate is None:
            raise self._closed()
        self._deflate = None
        try:
            # Straight from the pages, with no copy into one buffer (zlib's
            # output does not depend on how its input is cut; ISA-L's blocks
            # do, but any cut is a valid stream of the same bytes).
            chunks = [deflate.compress(span) for span in _spans(pages)]
            chunks.append(deflate.flush(zlib.Z_SYNC_FLUSH))
        except self._lib.error as exc:
            raise CodecError(f"{self._lib.name} deflate failed: {exc}") from exc
        self._deflate = deflate
        buffers: list[Buffer] = [chunk for chunk in chunks if chunk]
        return SendPayload(buffers=buffers, size=sum(map(len, chunks)), path=CodecPath.SOFTWARE)

    def send_cleanup(self) -> None:
        self._deflate = None

    def recv_setup(self, channel: int) -> None:
        super().recv_setup(channel)
        self._lib = self._recv_lib
        self._inflate = self._recv_lib.decompressobj()

    def recv(self, packet: RamPacket, source: PayloadSource, pages: Sequence[memoryview]) -> CodecPath:
        self.owner.check()
        inflate = self._inflate
        if inflate is None:
            raise self._closed()
        self._inflate = None
        expected = len(pages) * self.page_size
        payload = source.read()
        try:
            # One byte of room past the pages: enough to tell "too much" from
            # "exact" (and to take in the flush marker), never a bomb's worth.
            out = inflate.decompress(payload, expected + 1)
        except self._lib.error as exc:
            raise self._bad(packet, pages, f"is corrupt: {exc}") from exc
        if inflate.eof:
            raise self._bad(packet, pages, "ends the zlib stream, but QEMU keeps one open stream per channel")
        if len(out) > expected:
            raise self._bad(packet, pages, f"decodes to more than {expected} bytes")
        if len(out) < expected:
            raise self._bad(packet, pages, f"decodes to {len(out)} bytes, short of {expected}")
        if payload[-len(SYNC_FLUSH_MARKER) :] != SYNC_FLUSH_MARKER:
            raise self._bad(packet, pages, "does not end with the sync-flush marker 00 00 ff ff: truncated?")
        view = memoryview(out)
        start = 0
        for span in _spans(pages):
            end = start + len(span)
            span[:] = view[start:end]
            start = end
        self._inflate = inflate
        return CodecPath.SOFTWARE

    def recv_cleanup(self) -> None:
        self._inflate = None

    def _bad(self, packet: RamPacket, pages: Sequence[memoryview], problem: str) -> CodecError:
        return CodecError(
            f"zlib payload of packet {packet.packet_num} (pages: {len(pages)} × {self.page_size} bytes) {problem}"
        )

    def _closed(self) -> CodecError:
        return CodecError(
            f"the zlib stream of channel {self.owner.channel} is closed (cleaned up, or an earlier packet failed)"
        )


class ZlibCodec(ProbedCodec):
    """The registered codec. ``impl`` forces ``isal`` or ``zlib`` over ``MFDCOMP_ZLIB_IMPL``; unset, the fastest."""

    info = ZLIB_INFO
    impls = ZLIB_IMPLS

    def __init__(self, impl: str | None = None) -> None:
        super().__init__()
        self.impl = impl
        self.lib: Deflate | None = None

    def _probe(self) -> list[PathProbe]:
        try:
            forced = ZLIB_IMPLS.forced(self.impl)
        except ValueError as exc:
            return [PathProbe(CodecPath.SOFTWARE, False, str(exc))]
        if forced is None:
            self.lib = libs.fastest()
            why = "the fastest installed" if self.lib.name == libs.ISAL else "python-isal is not installed"
        else:
            found = libs.named(forced)
            if not isinstance(found, Deflate):
                return [PathProbe(CodecPath.SOFTWARE, False, f"{ZLIB_IMPLS.env}={forced} but {found}", forced)]
            self.lib = found
            why = f"forced by {ZLIB_IMPLS.env}={forced}" if self.impl is None else "forced"
        what = "ISA-L's SIMD deflate (python-isal)" if self.lib.name == libs.ISAL else "Python's zlib module"
        reason = f"{what}, {self.lib.label} ({why})"
        return [PathProbe(CodecPath.SOFTWARE, True, reason, library=self.lib.name, version=self.lib.version)]

    @property
    def implementation(self) -> str | None:
        self.probe()
        return None if self.lib is None else self.lib.name

    def implementations(self) -> dict[str, ZlibCodec]:
        """Every other library that can run the stream here (the conformance suite cross-decodes them)."""
        mine = self.implementation
        return {
            name: ZlibCodec(impl=name)
            for name in ZLIB_IMPLS.names
            if name != mine and isinstance(libs.named(name), Deflate)
        }

    def methods(self, page_size: int, level: int | None, path: CodecPath = CodecPath.SOFTWARE) -> ZlibMethods:
        if path is not CodecPath.SOFTWARE:
            raise CodecError(f"zlib has only the software path, not {path}")
        self.require_path(path)
        assert self.lib is not None, "an available software path has its library"
        return ZlibMethods(page_size, level, self.lib)

"""nocomp: pages travel raw (spec §5.1); the one codec that lives in core, as in QEMU."""

from __future__ import annotations

from collections.abc import Sequence

from mfdcomp.errors import CodecError
from mfdcomp.methods.contract import (
    CodecInfo,
    CodecPath,
    MultiFDMethods,
    PageViews,
    PathProbe,
    PayloadSource,
    SendPayload,
)
from mfdcomp.wire import NOCOMP, RamPacket

NOCOMP_INFO = CodecInfo(
    name="none",
    qemu_flag=NOCOMP,
    wire_format="raw-pages",
    stateful=False,
    paths=(CodecPath.RAW,),
    description="no compression: normal pages sent as they are",
)


class NocompMethods(MultiFDMethods):
    info = NOCOMP_INFO

    def send_prepare(self, pages: Sequence[memoryview]) -> SendPayload:
        self.owner.check()
        # The page views go to sendmsg as they are: no copy, adjacent pages as one buffer.
        buffers = pages.runs() if isinstance(pages, PageViews) else list(pages)
        return SendPayload(buffers=list(buffers), size=len(pages) * self.page_size, path=CodecPath.RAW)

    def recv(self, packet: RamPacket, source: PayloadSource, pages: Sequence[memoryview]) -> CodecPath:
        self.owner.check()
        if source.size != len(pages) * self.page_size:
            raise CodecError(f"nocomp payload of {source.size} bytes for {len(pages)} pages")
        source.read_into(pages.runs() if isinstance(pages, PageViews) else pages)
        return CodecPath.RAW


class Nocomp:
    info = NOCOMP_INFO

    def probe(self) -> list[PathProbe]:
        return [PathProbe(CodecPath.RAW, True, "pages are sent as they are; nothing to load")]

    def methods(self, page_size: int, level: int | None, path: CodecPath = CodecPath.RAW) -> MultiFDMethods:
        if path is not CodecPath.RAW:
            raise CodecError(f"nocomp has only the raw path, not {path}")
        return NocompMethods(page_size, level)


def mfdcomp_methods() -> list[Nocomp]:
    """Hook implementation: nocomp registers through the entry points like any plugin."""
    return [Nocomp()]

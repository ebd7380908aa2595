"""mfdcomp-qpl: QEMU's qpl codec (flag 0x08), Intel QPL / IAA (spec §5.4).

Each normal page is compressed on its own into raw deflate (RFC 1951) with
a 4 KiB window; the payload is a big-endian u32 length per page, then the
blobs, and a length equal to the page size marks a page sent raw.

Importing this module loads no library and touches no device: the host is
looked at only by :meth:`QplCodec.probe`. Sending runs through zlib (the
software twin); decoding needs nothing but zlib, whoever encoded.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from mfdcomp.methods import CodecInfo, CodecPath, MultiFDMethods, PathProbe, PayloadSource, SendPayload
from mfdcomp.methods.pagetable import RAW_DEFLATE_WBITS, decode_pages, encode_pages
from mfdcomp.methods.probed import ProbedCodec
from mfdcomp.wire import Flag, RamPacket
from mfdcomp_qpl.host import probe_host

__all__ = ["QPL_INFO", "QplCodec", "QplMethods", "mfdcomp_methods"]

QPL_INFO = CodecInfo(
    name="qpl",
    qemu_flag=int(Flag.QPL),
    wire_format="qpl-page-deflate",
    stateful=False,
    paths=(CodecPath.HARDWARE, CodecPath.SOFTWARE),
    description="Intel QPL (IAA): each page raw deflate with a 4 KiB window after a u32 length table; "
    "pages that do not shrink go raw",
)

# IAA keeps only 4 KiB of history and QEMU asks QPL for level 1: the twin
# keeps both, so whatever it sends an IAA decoder can take.
DEFLATE_LEVEL = 1
DEFLATE_WBITS = -12


def deflate_page(page: memoryview) -> bytes:
    return zlib.compress(page, DEFLATE_LEVEL, DEFLATE_WBITS)


class QplMethods(MultiFDMethods):
    """One channel of qpl that sends through the software twin (zlib)."""

    info = QPL_INFO

    def send_prepare(self, pages: Sequence[memoryview]) -> SendPayload:
        self.owner.check()
        buffers, size = encode_pages(pages, self.page_size, deflate_page)
        return SendPayload(buffers=buffers, size=size, path=CodecPath.SOFTWARE)

    def recv(self, packet: RamPacket, source: PayloadSource, pages: Sequence[memoryview]) -> CodecPath:
        self.owner.check()
        compressed = decode_pages(self.info, packet, source, pages, self.page_size, RAW_DEFLATE_WBITS)
        return CodecPath.SOFTWARE if compressed else CodecPath.RAW


class QplCodec(ProbedCodec):
    info = QPL_INFO

    def _probe(self) -> list[PathProbe]:
        return probe_host()

    def methods(self, page_size: int, level: int | None, path: CodecPath) -> MultiFDMethods:
        self.require_path(path)
        return QplMethods(page_size, level)


def mfdcomp_methods() -> list[QplCodec]:
    """Hook implementation, found through the ``mfdcomp.methods`` entry point."""
    return [QplCodec()]

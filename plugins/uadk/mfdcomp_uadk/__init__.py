"""mfdcomp-uadk: QEMU's uadk codec (flag 0x10), HiSilicon UADK (spec §5.5).

The payload is a big-endian u32 length per normal page, then one blob per
page: a zlib (RFC 1950) stream of the page, or the page itself when its
length equals the page size.

Importing this module loads no library and touches no device: the host is
looked at only by :meth:`UadkCodec.probe`. With no device QEMU sends every
page raw under the uadk flag, and so does this codec; compressed pages from
a peer with hardware decode with zlib.
"""

from __future__ import annotations

from collections.abc import Sequence

from mfdcomp.methods import CodecInfo, CodecPath, MultiFDMethods, PathProbe, PayloadSource, SendPayload
from mfdcomp.methods.pagetable import ZLIB_WBITS, decode_pages, raw_pages
from mfdcomp.methods.probed import ProbedCodec
from mfdcomp.wire import Flag, RamPacket
from mfdcomp_uadk.host import probe_host

__all__ = ["UADK_INFO", "UadkCodec", "UadkMethods", "mfdcomp_methods"]

UADK_INFO = CodecInfo(
    name="uadk",
    qemu_flag=int(Flag.UADK),
    wire_format="uadk-page-zlib",
    stateful=False,
    paths=(CodecPath.HARDWARE, CodecPath.RAW),
    description="HiSilicon UADK: each page zlib after a u32 length table; without a device every page "
    "is sent raw, as QEMU does",
)


class UadkMethods(MultiFDMethods):
    """One channel of uadk that sends every page raw and decodes compressed pages with zlib."""

    info = UADK_INFO

    def send_prepare(self, pages: Sequence[memoryview]) -> SendPayload:
        self.owner.check()
        buffers, size = raw_pages(pages, self.page_size)
        return SendPayload(buffers=buffers, size=size, path=CodecPath.RAW)

    def recv(self, packet: RamPacket, source: PayloadSource, pages: Sequence[memoryview]) -> CodecPath:
        self.owner.check()
        compressed = decode_pages(self.info, packet, source, pages, self.page_size, ZLIB_WBITS)
        return CodecPath.SOFTWARE if compressed else CodecPath.RAW


class UadkCodec(ProbedCodec):
    info = UADK_INFO

    def _probe(self) -> list[PathProbe]:
        return probe_host()

    def methods(self, page_size: int, level: int | None, path: CodecPath) -> MultiFDMethods:
        self.require_path(path)
        return UadkMethods(page_size, level)


def mfdcomp_methods() -> list[UadkCodec]:
    """Hook implementation, found through the ``mfdcomp.methods`` entry point."""
    return [UadkCodec()]

"""mfdcomp-uadk: QEMU's uadk codec (flag 0x10), HiSilicon UADK (spec §5.5).

The payload is a big-endian u32 length per normal page, then one blob per
page: a zlib (RFC 1950) stream of the page, or the page itself when its
length equals the page size.

Importing this module loads no library and touches no device: the host is
looked at only by :meth:`UadkCodec.probe`, which loads libwd_comp and calls
its init once per process. Where init succeeds, the hardware path compresses
each page with a libwd_comp session (one per channel and direction). With no
device QEMU sends every page raw under the uadk flag, and so does this codec;
compressed pages from a peer with hardware decode with the device when there
is one, else with ISA-L (python-isal) when it imports, else with zlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mfdcomp.methods import CodecInfo, CodecPath, MultiFDMethods, PathProbe, PayloadSource, SendPayload
from mfdcomp.methods import deflate as libs
from mfdcomp.methods.pagetable import ZLIB_WBITS, PageInflater, decode_pages, deflate_inflater, raw_pages
from mfdcomp.methods.probed import ProbedCodec
from mfdcomp.wire import Flag, RamPacket
from mfdcomp_uadk.host import probe_host

if TYPE_CHECKING:
    from mfdcomp.diagnosis import DoctorSection, Identity
    from mfdcomp_uadk.binding import Runtime
    from mfdcomp_uadk.sessions import ChannelSession

__all__ = ["UADK_INFO", "UadkCodec", "UadkMethods", "mfdcomp_doctor", "mfdcomp_methods"]

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
    """One channel of uadk: a libwd_comp session on the hardware path, else every page raw.

    Received compressed pages go through the channel's decompress session
    when the hardware path runs, else through ISA-L (or zlib without python-isal).
    """

    info = UADK_INFO

    def __init__(
        self, page_size: int, level: int | None, path: CodecPath = CodecPath.RAW, runtime: Runtime | None = None
    ) -> None:
        super().__init__(page_size, level)
        self.path = path
        self._runtime = runtime if path is CodecPath.HARDWARE else None
        self._session: ChannelSession | None = None
        # Without a device: the fastest software inflate (any zlib stream decodes with any).
        self._inflater = libs.fastest()
        self._receiving = False

    @property
    def implementation(self) -> str:
        """``libwd_comp`` on the device; receiving without one, ``isal`` or ``zlib``; sending raw pages, ""."""
        if self._runtime is not None:
            return "libwd_comp"
        return self._inflater.name if self._receiving else ""

    def _open(self, *, compress: bool) -> None:
        if self._runtime is not None:
            from mfdcomp_uadk.sessions import ChannelSession  # needs ctypes: only on the hardware path

            self._session = ChannelSession(self._runtime, self.page_size, compress=compress)

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def send_setup(self, channel: int) -> None:
        super().send_setup(channel)
        self._open(compress=True)

    def send_cleanup(self) -> None:
        self._close()

    def recv_setup(self, channel: int) -> None:
        super().recv_setup(channel)
        self._receiving = True
        self._open(compress=False)

    def recv_cleanup(self) -> None:
        self._close()

    def send_prepare(self, pages: Sequence[memoryview]) -> SendPayload:
        self.owner.check()
        if self._session is None:
            buffers, size = raw_pages(pages, self.page_size)
            return SendPayload(buffers=buffers, size=size, path=CodecPath.RAW)
        buffers, size, _raw = self._session.encode(pages)
        return SendPayload(buffers=buffers, size=size, path=CodecPath.HARDWARE)

    def recv(self, packet: RamPacket, source: PayloadSource, pages: Sequence[memoryview]) -> CodecPath:
        self.owner.check()
        inflate: PageInflater | None
        if self._session is not None:
            inflate = self._session.inflate
        elif self._inflater is not libs.STDLIB:
            inflate = deflate_inflater(self._inflater, self.page_size, ZLIB_WBITS)
        else:
            inflate = None  # decode_pages' own zlib
        compressed = decode_pages(self.info, packet, source, pages, self.page_size, ZLIB_WBITS, inflate)
        if not compressed:
            return CodecPath.RAW
        return CodecPath.SOFTWARE if self._session is None else CodecPath.HARDWARE


class UadkCodec(ProbedCodec):
    info = UADK_INFO

    def __init__(self) -> None:
        super().__init__()
        self.runtime: Runtime | None = None

    def _probe(self) -> list[PathProbe]:
        found = probe_host()
        self.runtime = found.runtime
        return list(found.probes)

    def methods(self, page_size: int, level: int | None, path: CodecPath) -> MultiFDMethods:
        self.require_path(path)
        return UadkMethods(page_size, level, path, self.runtime)


def mfdcomp_methods() -> list[UadkCodec]:
    """Hook implementation, found through the ``mfdcomp.methods`` entry point."""
    return [UadkCodec()]


def mfdcomp_doctor(root: Path, identity: Identity) -> list[DoctorSection]:
    """Hook implementation for ``mfdcomp doctor``: the HiSilicon UADK section (devices, uacce, nodes, libraries)."""
    from mfdcomp_uadk.diagnosis import doctor_sections  # only when the doctor runs

    return doctor_sections(root, identity)

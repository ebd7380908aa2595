"""mfdcomp-qpl: QEMU's qpl codec (flag 0x08), Intel QPL / IAA (spec §5.4).

Each normal page is compressed on its own into raw deflate (RFC 1951); the
payload is a big-endian u32 length per page, then the blobs, and a length
equal to the page size marks a page sent raw.

Two implementations write that format:

* libqpl (:mod:`mfdcomp_qpl.binding`), as QEMU drives it: one job per
  channel and direction, flags FIRST|LAST|OMIT_VERIFY, level 1, fixed
  Huffman, output room page size - 1 so a page that does not shrink goes raw.
  The hardware path runs ``qpl_path_hardware`` jobs (a page whose queue
  stays busy, or whose submission fails, goes through the software job);
  the software path runs ``qpl_path_software`` jobs.
* the ISA-L writer (python-isal): ISA-L at level 1 with a 4 KiB window, used
  when libqpl is absent and python-isal imports, or ``MFDCOMP_QPL_IMPL=isal``.
* the zlib writer: zlib at level 1 with a 4 KiB window, used when neither
  loads or ``MFDCOMP_QPL_IMPL=zlib``.

Receivers inflate with what writes (libqpl, ISA-L or zlib); every one
checks each page decodes to exactly the page size.

Importing this module loads no library and touches no device: the host is
looked at only by :meth:`QplCodec.probe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mfdcomp.methods import CodecInfo, CodecPath, MultiFDMethods, PathProbe, PayloadSource, SendPayload
from mfdcomp.methods import deflate as libs
from mfdcomp.methods.deflate import Deflate
from mfdcomp.methods.pagetable import (
    RAW_DEFLATE_WBITS,
    PageInflater,
    decode_pages,
    deflate_inflater,
    encode_pages,
)
from mfdcomp.methods.probed import ProbedCodec
from mfdcomp.wire import Flag, RamPacket
from mfdcomp_qpl import host
from mfdcomp_qpl.host import probe_host

if TYPE_CHECKING:
    from mfdcomp.diagnosis import DoctorSection, Identity
    from mfdcomp_qpl.binding import Library
    from mfdcomp_qpl.jobs import ChannelJobs

__all__ = ["QPL_INFO", "QplCodec", "QplMethods", "mfdcomp_doctor", "mfdcomp_methods"]

QPL_INFO = CodecInfo(
    name="qpl",
    qemu_flag=int(Flag.QPL),
    wire_format="qpl-page-deflate",
    stateful=False,
    paths=(CodecPath.HARDWARE, CodecPath.SOFTWARE),
    description="Intel QPL (IAA): each page raw deflate after a u32 length table; pages that do not shrink go raw",
)

# IAA keeps only 4 KiB of history and QEMU asks QPL for level 1: the zlib
# and ISA-L writers keep both, so whatever they send an IAA decoder can take.
# (A 4 KiB page can never reach further back than 4 KiB anyway: for such
# pages any window gives the same bytes; it matters for larger pages.)
DEFLATE_LEVEL = 1
DEFLATE_WBITS = -12


def deflate_page(page: memoryview, writer: Deflate = libs.STDLIB) -> bytes:
    return writer.compress(page, DEFLATE_LEVEL, DEFLATE_WBITS)


class QplMethods(MultiFDMethods):
    """One channel of qpl, one direction: libqpl jobs when the library is loaded, else ``writer`` (ISA-L or zlib).

    ``page_paths`` counts, over the channel's life, the pages compressed or
    inflated by the hardware job, by the software (libqpl's software job or
    zlib), and the pages sent or received raw. A packet's own path is
    HARDWARE only when the hardware job ran for every page of it.
    """

    info = QPL_INFO

    def __init__(
        self,
        page_size: int,
        level: int | None,
        path: CodecPath = CodecPath.SOFTWARE,
        library: Library | None = None,
        writer: Deflate = libs.STDLIB,
    ) -> None:
        super().__init__(page_size, level)
        self.path = path
        self._library = library
        self._writer = writer
        self._jobs: ChannelJobs | None = None
        self.page_paths = {CodecPath.HARDWARE: 0, CodecPath.SOFTWARE: 0, CodecPath.RAW: 0}

    @property
    def implementation(self) -> str:
        """``libqpl``, ``isal`` or ``zlib``: what writes and reads this context's pages."""
        return self._writer.name if self._library is None else host.IMPL_LIBQPL

    def _open_jobs(self) -> None:
        if self._library is not None:
            from mfdcomp_qpl.jobs import ChannelJobs  # needs ctypes: only once libqpl has loaded

            self._jobs = ChannelJobs(self._library, self.page_size, hardware=self.path is CodecPath.HARDWARE)

    def _close_jobs(self) -> None:
        if self._jobs is not None:
            self._jobs.close()
            self._jobs = None

    def send_setup(self, channel: int) -> None:
        super().send_setup(channel)
        self._open_jobs()

    def send_cleanup(self) -> None:
        self._close_jobs()

    def recv_setup(self, channel: int) -> None:
        super().recv_setup(channel)
        self._open_jobs()

    def recv_cleanup(self) -> None:
        self._close_jobs()

    def send_prepare(self, pages: Sequence[memoryview]) -> SendPayload:
        self.owner.check()
        counts = self.page_paths
        if self._jobs is None:
            writer = self._writer
            buffers, size = encode_pages(pages, self.page_size, lambda page: deflate_page(page, writer))
            raw = sum(1 for b in buffers[1:] if memoryview(b).nbytes == self.page_size)
            counts[CodecPath.SOFTWARE] += len(pages) - raw
            counts[CodecPath.RAW] += raw
            return SendPayload(buffers=buffers, size=size, path=CodecPath.SOFTWARE)
        encoded = self._jobs.encode(pages)
        counts[CodecPath.HARDWARE] += encoded.hardware_compressed
        counts[CodecPath.SOFTWARE] += len(pages) - encoded.raw - encoded.hardware_compressed
        counts[CodecPath.RAW] += encoded.raw
        path = CodecPath.HARDWARE if pages and encoded.hardware == len(pages) else CodecPath.SOFTWARE
        return SendPayload(buffers=encoded.buffers, size=encoded.size, path=path)

    def recv(self, packet: RamPacket, source: PayloadSource, pages: Sequence[memoryview]) -> CodecPath:
        self.owner.check()
        jobs = self._jobs
        before = 0 if jobs is None else jobs.inflated_on_hardware
        inflate: PageInflater | None
        if jobs is not None:
            inflate = jobs.inflate
        elif self._writer is not libs.STDLIB:
            inflate = deflate_inflater(self._writer, self.page_size, RAW_DEFLATE_WBITS)
        else:
            inflate = None  # decode_pages' own zlib
        compressed = decode_pages(self.info, packet, source, pages, self.page_size, RAW_DEFLATE_WBITS, inflate)
        on_hardware = 0 if jobs is None else jobs.inflated_on_hardware - before
        self.page_paths[CodecPath.RAW] += len(pages) - compressed
        self.page_paths[CodecPath.HARDWARE] += on_hardware
        self.page_paths[CodecPath.SOFTWARE] += compressed - on_hardware
        if not compressed:
            return CodecPath.RAW
        return CodecPath.HARDWARE if on_hardware == compressed else CodecPath.SOFTWARE


class QplCodec(ProbedCodec):
    """The registered codec. ``impl`` forces ``libqpl``, ``isal`` or ``zlib`` over ``MFDCOMP_QPL_IMPL``."""

    info = QPL_INFO
    impls = host.QPL_IMPLS

    def __init__(self, impl: str | None = None) -> None:
        super().__init__()
        self.impl = impl
        self.library: Library | None = None
        self.writer: Deflate = libs.STDLIB

    def _probe(self) -> list[PathProbe]:
        found = probe_host(impl=self.impl)
        self.library = found.library
        self.writer = found.writer
        return found.probes

    @property
    def implementation(self) -> str | None:
        """``libqpl``, ``isal`` or ``zlib`` (what the channels run), None when the software path cannot run."""
        if not self.probe()[1].available:
            return None
        return host.IMPL_LIBQPL if self.library is not None else self.writer.name

    def implementations(self) -> dict[str, QplCodec]:
        """Every other implementation that runs here (libqpl, the ISA-L writer, the zlib writer), by label."""
        mine = self.implementation
        others = {}
        for name in host.IMPLEMENTATIONS:
            if name != mine and name != self.impl:
                other = QplCodec(impl=name)
                if other.probe()[1].available:
                    others[name if name == host.IMPL_LIBQPL else f"{name} writer"] = other
        return others

    def methods(self, page_size: int, level: int | None, path: CodecPath) -> QplMethods:
        self.require_path(path)
        return QplMethods(page_size, level, path, self.library, self.writer)


def mfdcomp_methods() -> list[QplCodec]:
    """Hook implementation, found through the ``mfdcomp.methods`` entry point."""
    return [QplCodec()]


def mfdcomp_doctor(root: Path, identity: Identity) -> list[DoctorSection]:
    """Hook implementation for ``mfdcomp doctor``: the Intel IAA section (devices, work queues, nodes, libraries)."""
    from mfdcomp_qpl.diagnosis import doctor_sections  # only when the doctor runs

    return doctor_sections(root, identity)

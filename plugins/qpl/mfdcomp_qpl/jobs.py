"""One channel's libqpl jobs, as QEMU drives them (spec §5.4), per page.

Imported only once libqpl has loaded (it needs ctypes): the codec's
contexts make a :class:`ChannelJobs` in ``send_setup``/``recv_setup`` and
close it in the cleanups. A job is not thread safe; the context is bound to
its channel's thread, so each job is too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from typing_extensions import Buffer

from mfdcomp.errors import CodecError
from mfdcomp.methods.pagetable import LENGTH_SIZE, length_table
from mfdcomp_qpl.binding import (
    PATH_HARDWARE,
    PATH_SOFTWARE,
    STS_DST_IS_SHORT_ERR,
    STS_MORE_OUTPUT_NEEDED,
    STS_OK,
    STS_QUEUES_ARE_BUSY_ERR,
    Job,
    Library,
    address,
    status_name,
)

# A busy IAA queue is tried this many more times before the page goes to the software job (as QEMU does).
BUSY_RETRIES = 3
# "The page does not fit in page size - 1 bytes": it is sent raw.
DOES_NOT_FIT = frozenset((STS_MORE_OUTPUT_NEEDED, STS_DST_IS_SHORT_ERR))

T = TypeVar("T", bound=tuple[int, ...])


def _busy_retried(run: Callable[[], T]) -> T:
    result = run()
    for _ in range(BUSY_RETRIES):
        if result[0] != STS_QUEUES_ARE_BUSY_ERR:
            break
        result = run()
    return result


@dataclass(slots=True)
class Encoded:
    """One packet's payload and which job handled its pages."""

    buffers: list[Buffer]
    size: int
    hardware: int  # pages the hardware job ran to the end (compressed, or found not to shrink)
    hardware_compressed: int  # of those, the pages sent compressed
    raw: int  # pages sent raw


class ChannelJobs:
    """A software job, plus a hardware job on the hardware path; scratch buffers sized for one page."""

    def __init__(self, library: Library, page_size: int, *, hardware: bool) -> None:
        self.page_size = page_size
        self.software: Job = library.job(PATH_SOFTWARE)
        self.hardware: Job | None = None
        if hardware:
            try:
                self.hardware = library.job(PATH_HARDWARE)
            except CodecError:
                self.software.close()
                raise
        self._arena = bytearray()  # the compressed blobs of the packet being sent
        self._scratch = bytearray(page_size)  # a read-only page copied in, or a page being inflated
        self.inflated_on_hardware = 0

    def close(self) -> None:
        for job in (self.hardware, self.software):
            if job is not None:
                job.close()
        self.hardware = None

    # ------------------------------------------------------------ compress

    def encode(self, pages: Sequence[memoryview]) -> Encoded:
        """The payload of one packet: length table, then each page's blob or the page itself."""
        ps = self.page_size
        room = ps - 1  # a page that cannot shrink by one byte goes raw (QEMU's rule)
        if len(self._arena) < len(pages) * room:
            self._arena = bytearray(len(pages) * room)
        arena = memoryview(self._arena)
        arena_address = address(arena)
        lengths: list[int] = []
        buffers: list[Buffer] = [b""]
        offset = hardware = hardware_compressed = raw = 0
        for index, page in enumerate(pages):
            if page.readonly:  # ctypes takes only writable buffers by address: copy this one
                self._scratch[:] = page
                source = address(memoryview(self._scratch))
            else:
                source = address(page)
            status, written, on_hardware = self._compress(source, arena_address + offset, room)
            hardware += on_hardware
            if status == STS_OK and written < ps:
                buffers.append(arena[offset : offset + written])
                lengths.append(written)
                offset += written
                hardware_compressed += on_hardware
            elif status in DOES_NOT_FIT:
                buffers.append(page)  # the page itself, no copy
                lengths.append(ps)
                raw += 1
            else:
                raise CodecError(
                    f"libqpl could not compress page {index} of {len(pages)}: qpl_execute_job returned "
                    f"{status_name(status)}"
                )
        buffers[0] = length_table(lengths)
        return Encoded(buffers, LENGTH_SIZE * len(lengths) + sum(lengths), hardware, hardware_compressed, raw)

    def _compress(self, source: int, destination: int, room: int) -> tuple[int, int, bool]:
        """(status, bytes written, whether the hardware job did it): hardware first, software if that fails."""
        hardware = self.hardware
        if hardware is not None:
            status, written = _busy_retried(lambda: hardware.compress(source, self.page_size, destination, room))
            if status == STS_OK or status in DOES_NOT_FIT:
                return status, written, True
        status, written = self.software.compress(source, self.page_size, destination, room)
        return status, written, False

    # ------------------------------------------------------------ decompress

    def inflate(self, blob: memoryview) -> Buffer:
        """One page's stream into the scratch page; a ValueError saying what is wrong with it otherwise.

        The caller copies the scratch page into target memory only after this
        returns, so a bad stream writes nothing there.
        """
        ps = self.page_size
        data = memoryview(bytearray(blob)) if blob.readonly else blob  # libqpl only reads it
        source = address(data)
        target = address(memoryview(self._scratch))
        status, read, written = -1, 0, 0
        hardware = self.hardware
        if hardware is not None:
            status, read, written = _busy_retried(lambda: hardware.decompress(source, len(blob), target, ps))
            if status in (STS_OK, STS_MORE_OUTPUT_NEEDED):
                self.inflated_on_hardware += 1
        if status not in (STS_OK, STS_MORE_OUTPUT_NEEDED):
            status, read, written = self.software.decompress(source, len(blob), target, ps)
        if status == STS_MORE_OUTPUT_NEEDED:
            raise ValueError(f"compressed stream of {len(blob)} bytes decodes to more than the page size {ps}")
        if status != STS_OK:
            raise ValueError(f"corrupt compressed stream: libqpl returned {status_name(status)}")
        if read != len(blob):
            raise ValueError(f"{len(blob) - read} bytes follow the end of the compressed stream")
        if written != ps:
            # libqpl does not insist on the final end-of-block code; a page of the right length is accepted.
            raise ValueError(f"compressed stream decodes to {written} bytes, not the page size {ps}")
        return self._scratch

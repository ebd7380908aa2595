"""One channel's libwd_comp session, per page, as QEMU drives it (spec §5.5).

Imported only once libwd_comp has loaded and its init succeeded (it needs
ctypes). Compression: one synchronous request per page into room for two
pages; a result not smaller than the page is sent raw. A request that fails
is an error, as in QEMU. Decompression: each page must come out exactly one
page long.
"""

from __future__ import annotations

from collections.abc import Sequence

from typing_extensions import Buffer

from mfdcomp.errors import CodecError
from mfdcomp.methods.pagetable import LENGTH_SIZE, length_table
from mfdcomp_uadk.binding import WD_DIR_COMPRESS, WD_DIR_DECOMPRESS, Runtime, Session, address


class ChannelSession:
    """A compress or decompress session and a scratch buffer for one channel."""

    def __init__(self, runtime: Runtime, page_size: int, *, compress: bool) -> None:
        self.page_size = page_size
        self.session = Session(runtime, WD_DIR_COMPRESS if compress else WD_DIR_DECOMPRESS)
        # Compressed pages of one packet; each gets room for two pages, as the device may overshoot.
        self._arena = bytearray()
        self._scratch = bytearray(page_size)

    def close(self) -> None:
        self.session.close()

    def encode(self, pages: Sequence[memoryview]) -> tuple[list[Buffer], int, int]:
        """(buffers, size, raw pages) of one packet's payload."""
        ps = self.page_size
        room = 2 * ps
        if len(self._arena) < len(pages) * room:
            self._arena = bytearray(len(pages) * room)
        arena = memoryview(self._arena)
        base = address(arena)
        lengths: list[int] = []
        buffers: list[Buffer] = [b""]
        offset = raw = 0
        for index, page in enumerate(pages):
            if page.readonly:
                self._scratch[:] = page
                source = address(memoryview(self._scratch))
            else:
                source = address(page)
            rc, status, written = self.session.run(source, ps, base + offset, room)
            if rc or status:
                raise CodecError(f"uadk page {index} of {len(pages)}: wd_do_comp_sync returned {rc}, status {status}")
            if written < ps:
                buffers.append(arena[offset : offset + written])
                lengths.append(written)
                offset += written
            else:
                buffers.append(page)
                lengths.append(ps)
                raw += 1
        buffers[0] = length_table(lengths)
        return buffers, LENGTH_SIZE * len(lengths) + sum(lengths), raw

    def inflate(self, blob: memoryview) -> Buffer:
        """One page's zlib stream through the device into the scratch page; a ValueError otherwise."""
        data = memoryview(bytearray(blob)) if blob.readonly else blob
        target = address(memoryview(self._scratch))
        rc, status, written = self.session.run(address(data), len(blob), target, self.page_size)
        if rc or status:
            raise ValueError(f"corrupt compressed stream: wd_do_comp_sync returned {rc}, status {status}")
        if written != self.page_size:
            raise ValueError(f"compressed stream decodes to {written} bytes, not the page size {self.page_size}")
        return self._scratch

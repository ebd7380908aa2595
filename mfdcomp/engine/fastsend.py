"""A nocomp source channel's packets through the compiled path (mfdcomp/_sendloop.c).

The Python path in mfdcomp.engine.source (zero-page scan, QEMU's partition,
RamPacket encoding, the stream's send_all, the page hashing) is the reference;
here one call does all of it for a packet with the GIL released once. Used when
the compiled module is there, the codec is nocomp and the channel is a plain
socket (not TLS); MFDCOMP_PURE_PYTHON=1 turns it off with the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from mfdcomp import speedups
from mfdcomp.methods import CodecPath
from mfdcomp.methods.nocomp import NocompMethods
from mfdcomp.pagedigest import PageDigests, zero_page_digest
from mfdcomp.transport.base import DescriptorStream
from mfdcomp.wire.constants import RAMBLOCK_NAME_LEN

if TYPE_CHECKING:
    from mfdcomp.engine.source import PageBlock, _SendChannel
    from mfdcomp.transport.base import Stream


class FastSend:
    """One source channel's compiled packet path; :meth:`send` says False where the Python path must run."""

    def __init__(
        self,
        stream: DescriptorStream,
        *,
        page_size: int,
        capacity: int,
        detect_zero_pages: bool,
        page_digests: PageDigests | None,
        packet_num: Callable[[], int],
    ) -> None:
        self._stream = stream  # channel thread only, like everything here
        self._page_size = page_size
        self._capacity = capacity
        self._detect_zero = detect_zero_pages
        self._digests = page_digests
        self._packet_num = packet_num
        self._zero_digest = zero_page_digest(page_size) if page_digests is not None else bytes(16)
        self._names: dict[str, bytes | None] = {}

    @classmethod
    def for_channel(
        cls,
        channel: _SendChannel[Stream],
        *,
        page_size: int,
        capacity: int,
        detect_zero_pages: bool,
        page_digests: PageDigests | None,
        packet_num: Callable[[], int],
    ) -> FastSend | None:
        """The compiled path for ``channel``, or None where only the Python path applies."""
        if (
            speedups.compiled() is None
            # What the compiled path does is NocompMethods.send_prepare: any other (a subclass's, a test's) runs.
            or getattr(channel.method.send_prepare, "__func__", None) is not NocompMethods.send_prepare
            or not isinstance(channel.stream, DescriptorStream)
        ):
            return None
        return cls(
            channel.stream,
            page_size=page_size,
            capacity=capacity,
            detect_zero_pages=detect_zero_pages,
            page_digests=page_digests,
            packet_num=packet_num,
        )

    def send(self, channel: _SendChannel[Stream], block: PageBlock, offsets: list[int]) -> bool:
        """Write one packet of ``offsets`` (reordered in place, normal pages first, as the Python path does)."""
        compiled = speedups.compiled()
        field = self._name_field(block.name)
        fd = self._stream.writable_fd()
        if compiled is None or field is None or fd is None or len(offsets) > self._capacity:
            return False
        table = None if self._digests is None else self._digests.tables[block.name]
        normal, zero, written, err, ordered = compiled.send_nocomp(
            fd,
            block.memory,
            offsets,
            self._page_size,
            self._capacity,
            self._detect_zero,
            self._packet_num(),
            field,
            table,
            self._zero_digest,
        )
        offsets[:] = ordered
        if err:  # as the Python path's send_all: nothing counted for a packet that did not go out whole
            error = OSError(err, os.strerror(err))
            raise self._stream.send_error(error) from error
        stats = channel.stats
        stats.packets += 1
        stats.normal_pages += normal
        stats.zero_pages += zero
        stats.payload_bytes += normal * self._page_size
        stats.wire_bytes += written
        if normal:
            stats.count(CodecPath.RAW, channel.method.implementation)
        return True

    def _name_field(self, name: str) -> bytes | None:
        """The block name as a RAM packet carries it, or None for one the Python path refuses (too long)."""
        if name not in self._names:
            raw = name.encode()
            ok = len(raw) < RAMBLOCK_NAME_LEN and b"\0" not in raw
            self._names[name] = raw.ljust(RAMBLOCK_NAME_LEN, b"\0") if ok else None
        return self._names[name]

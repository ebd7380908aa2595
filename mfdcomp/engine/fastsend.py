"""A nocomp source channel's packets through the compiled path (mfdcomp/_sendloop.c).

The Python path in mfdcomp.engine.source (zero-page scan, QEMU's partition,
RamPacket encoding, the stream's send_all, the page hashing) is the reference;
here one call does all of it for a packet with the GIL released once. Used when
the compiled module is there, the codec is nocomp and the channel is a plain
socket (not TLS); MFDCOMP_PURE_PYTHON=1 turns it off with the rest.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mfdcomp import speedups
from mfdcomp.methods.nocomp import NocompMethods
from mfdcomp.pagedigest import zero_page_digest
from mfdcomp.transport.base import DescriptorStream
from mfdcomp.wire.constants import RAMBLOCK_NAME_LEN

if TYPE_CHECKING:
    from mfdcomp.engine.source import PageBlock, SourceEngine, _SendChannel
    from mfdcomp.transport.base import Stream


class FastSend:
    """One source channel's compiled packet path; :meth:`send` says None where the Python path must run."""

    def __init__(self, engine: SourceEngine, stream: DescriptorStream) -> None:
        self._engine = engine  # set once; its page size, capacity, zero-page choice and digests are read
        self._stream = stream  # channel thread only, like everything here
        self._zero_digest = zero_page_digest(engine.page_size) if engine.page_digests is not None else bytes(16)
        self._names: dict[str, bytes | None] = {}

    @classmethod
    def for_channel(cls, engine: SourceEngine, channel: _SendChannel[Stream]) -> FastSend | None:
        """The compiled path for ``channel``, or None where only the Python path applies."""
        if (
            speedups.compiled() is None
            # What the compiled path does is NocompMethods.send_prepare: any other (a subclass's, a test's) runs.
            or getattr(channel.method.send_prepare, "__func__", None) is not NocompMethods.send_prepare
            or not isinstance(channel.stream, DescriptorStream)
        ):
            return None
        return cls(engine, channel.stream)

    def send(self, block: PageBlock, offsets: list[int]) -> tuple[int, int, int] | None:
        """Write one packet of ``offsets`` (reordered in place, normal pages first, as the Python path does).

        Returns its normal and zero pages and the bytes written, or None if the Python path must send it.
        """
        compiled = speedups.compiled()
        engine = self._engine
        field = self._name_field(block.name)
        fd = self._stream.writable_fd()
        if compiled is None or field is None or fd is None or len(offsets) > engine.capacity:
            return None
        digests = engine.page_digests
        normal, zero, written, err, ordered = compiled.send_nocomp(
            fd,
            block.memory,
            offsets,
            engine.page_size,
            engine.capacity,
            engine.detect_zero_pages,
            engine.next_packet_num(),
            field,
            None if digests is None else digests.tables[block.name],
            self._zero_digest,
        )
        offsets[:] = ordered
        if err:  # as the Python path's send_all: nothing counted for a packet that did not go out whole
            error = OSError(err, os.strerror(err))
            raise self._stream.send_error(error) from error
        return normal, zero, written

    def _name_field(self, name: str) -> bytes | None:
        """The block name as a RAM packet carries it, or None for one the Python path refuses (too long)."""
        if name not in self._names:
            raw = name.encode()
            ok = len(raw) < RAMBLOCK_NAME_LEN and b"\0" not in raw
            self._names[name] = raw.ljust(RAMBLOCK_NAME_LEN, b"\0") if ok else None
        return self._names[name]

"""A source channel's packets through the compiled path (mfdcomp/_sendloop.c).

The Python path in mfdcomp.engine.source (zero-page scan, QEMU's partition,
the codec's send_prepare, RamPacket encoding, the stream's send_all, the page
hashing) is the reference; here one call does all of it for a packet with the
GIL released once. Used when the compiled module is there, the codec is nocomp
or its context offers a compiled compressor (MultiFDMethods.packet_compressor);
MFDCOMP_PURE_PYTHON=1 turns it off with the rest. A socket is written by the
call itself; any other stream (TLS) gets the packet packed into one buffer and
sends it whole. Its pages are hashed as they are packed, while in the cache,
not after the send as the Python path does: a send that fails then has its
pages' digests recorded, but it fails the channel, and the session with it,
whose digests are never compared.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mfdcomp import speedups
from mfdcomp.errors import ChannelError, CodecError
from mfdcomp.methods import CodecPath, MultiFDMethods, PacketCompressor
from mfdcomp.methods.nocomp import NocompMethods
from mfdcomp.pagedigest import zero_page_digest
from mfdcomp.transport.base import DescriptorStream, Stream
from mfdcomp.wire import ram_packet_size
from mfdcomp.wire.constants import RAMBLOCK_NAME_LEN

if TYPE_CHECKING:
    from mfdcomp.engine.source import PageBlock, SourceEngine, _SendChannel


class FastSend:
    """One source channel's compiled packet path; :meth:`send` says None where the Python path must run."""

    def __init__(
        self, engine: SourceEngine, stream: Stream, method: MultiFDMethods, compressor: PacketCompressor
    ) -> None:
        self._engine = engine  # set once; its page size, capacity, zero-page choice and digests are read
        self._stream = stream  # channel thread only, like everything here
        # Looked at once: isinstance against a Protocol costs tens of microseconds.
        self._descriptor = stream if isinstance(stream, DescriptorStream) else None
        # A stream without a descriptor: packets packed here (room for a payload twice the pages, past any
        # codec's bound), then sent whole.
        self._out = (
            None
            if self._descriptor is not None
            else bytearray(ram_packet_size(engine.page_size) + 2 * engine.capacity * engine.page_size)
        )
        self._flags = method.flag
        self._compressor = compressor
        self._zero_digest = zero_page_digest(engine.page_size) if engine.page_digests is not None else bytes(16)
        self._names: dict[str, bytes | None] = {}

    @classmethod
    def for_channel(cls, engine: SourceEngine, channel: _SendChannel[Stream]) -> FastSend | None:
        """The compiled path for ``channel``, or None where only the Python path applies."""
        method = channel.method
        if speedups.compiled() is None:
            return None
        # What the compiled path does for nocomp is NocompMethods.send_prepare: any other (a subclass's, a
        # test's) runs; another codec's context must offer its compiled twin of send_prepare.
        if getattr(method.send_prepare, "__func__", None) is NocompMethods.send_prepare:
            compressor = PacketCompressor(None, CodecPath.RAW)
        else:
            offered = method.packet_compressor()
            # A QEMU codec only (an extension's header carries its id), and not where every packet must
            # prove a hardware path: the Python path's check refuses those packets with its own error.
            if offered is None or method.extension_id or engine.require_hw:
                return None
            compressor = offered
        return cls(engine, channel.stream, method, compressor)

    def send(self, block: PageBlock, offsets: list[int]) -> tuple[int, int, int, int, CodecPath] | None:
        """Write one packet of ``offsets`` (reordered in place, normal pages first, as the Python path does).

        Returns its normal and zero pages, the bytes written, the payload's size and its path, or None if
        the Python path must send it.
        """
        compiled = speedups.compiled()
        engine = self._engine
        field = self._name_field(block.name)
        if compiled is None or field is None or len(offsets) > engine.capacity:
            return None
        digests = engine.page_digests
        stream = self._stream
        fd = -1
        if self._descriptor is not None:
            writable = self._descriptor.writable_fd()
            if writable is None:
                return None
            fd = writable
        normal, zero, written, err, ordered, payload, problem = compiled.send_packet(
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
            self._flags,
            self._compressor.capsule,
            self._out,
        )
        offsets[:] = ordered
        if problem is not None:  # the codec's own words, as its send_prepare raises them
            raise CodecError(problem)
        if err and self._descriptor is not None:
            # As the Python path's send_all: nothing counted for a packet that did not go out whole.
            error = OSError(err, os.strerror(err))
            raise self._descriptor.send_error(error) from error
        if err:
            raise ChannelError(f"{stream.name}: a payload of {payload} bytes does not fit the packing buffer")
        if self._out is not None:
            stream.send_all([memoryview(self._out)[:written]])
        return normal, zero, written, payload, self._compressor.path

    def _name_field(self, name: str) -> bytes | None:
        """The block name as a RAM packet carries it, or None for one the Python path refuses (too long)."""
        if name not in self._names:
            raw = name.encode()
            ok = len(raw) < RAMBLOCK_NAME_LEN and b"\0" not in raw
            self._names[name] = raw.ljust(RAMBLOCK_NAME_LEN, b"\0") if ok else None
        return self._names[name]

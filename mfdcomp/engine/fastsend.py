"""A source channel's packets through the compiled path (mfdcomp/_sendloop.c).

The Python path in mfdcomp.engine.source (zero-page scan, QEMU's partition,
the codec's send_prepare, RamPacket encoding, the stream's send_all, the page
hashing) is the reference; here one call does all of it for a channel's next
GROUP packets with the GIL released once. Used when the compiled module is
there, the codec is nocomp or its context offers a compiled compressor
(MultiFDMethods.packet_compressor); MFDCOMP_PURE_PYTHON=1 turns it off with the
rest. A socket is written by the call itself, and so is a TLS session where the
OpenSSL of Python's ssl is bound (mfdcomp/_tlsdirect.c: the pieces of each packet
through SSL_write, the small ones gathered); any other stream gets the packets
packed into one buffer and sends them whole. Pages are hashed while in
the cache: as they are packed, and a codec's before it reads them, not after
the send as the Python path does; a send that fails then has its pages' digests
recorded, but it fails the channel, and the session with it, whose digests are
never compared.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mfdcomp import speedups
from mfdcomp.errors import ChannelError, CodecError
from mfdcomp.methods import CodecPath, MultiFDMethods, PacketCompressor
from mfdcomp.methods.nocomp import NocompMethods
from mfdcomp.pagedigest import zero_page_digest
from mfdcomp.transport.base import DescriptorStream, DirectTlsStream, Stream
from mfdcomp.wire import ram_packet_size
from mfdcomp.wire.constants import RAMBLOCK_NAME_LEN

if TYPE_CHECKING:
    from mfdcomp.engine.source import PageBlock, SourceEngine, _SendChannel


GROUP = 8
"""Batches a channel takes and sends in one call: the Python around a packet (taking its batch, the call,
counting it) was about 25 us, a tenth of a nocomp channel's CPU on the 2-core VM."""

_PACKED = 4
"""Packets a packing buffer (a TLS channel's where OpenSSL isn't bound) holds, besides room for one payload over
its pages."""

_TLS_REASON = -1
"""send_packets' errno when OpenSSL failed a write, its reason being the problem."""


@dataclass(frozen=True)
class Sent:
    """What some packets written whole came to."""

    packets: int
    pages_packets: int  # of them, those with normal pages
    normal: int
    zero: int
    wire: int
    payload: int


class FastSend:
    """One source channel's compiled packet path; :meth:`send` says False where the Python path must run."""

    def __init__(
        self,
        engine: SourceEngine,
        stream: Stream,
        method: MultiFDMethods,
        compressor: PacketCompressor,
        on_sent: Callable[[Sent, CodecPath], None],
    ) -> None:
        self._engine = engine  # set once; its page size, capacity, zero-page choice and digests are read
        self._stream = stream  # channel thread only, like everything here
        self._on_sent = on_sent  # set once: counts packets written whole
        # Looked at once: isinstance against a Protocol costs tens of microseconds.
        self._descriptor = stream if isinstance(stream, DescriptorStream) else None
        # A TLS session is written by the call itself where OpenSSL is bound (mfdcomp/_tlsdirect.c).
        self._tls = stream if isinstance(stream, DirectTlsStream) and speedups.bind_tls() is None else None
        # Any other stream without a descriptor: packets packed here (_PACKED of them, and room for a payload
        # twice the pages, past any codec's bound), then sent whole. Made at the first packing.
        self._out: bytearray | None = None
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
        return cls(
            engine, channel.stream, method, compressor, lambda sent, path: engine.count_sent(channel, sent, path)
        )

    def send(self, block: PageBlock, batches: list[list[int]]) -> bool:
        """Write a packet of each batch of ``batches`` (pages of ``block``), the GIL released once for them.

        False if the Python path must send them (nothing was sent). The packets written whole are counted
        (on_sent), a failure's after those before it, as the Python path counts each packet it wrote.
        """
        compiled = speedups.compiled()
        engine = self._engine
        field = self._name_field(block.name)
        if compiled is None or field is None or any(len(offsets) > engine.capacity for offsets in batches):
            return False
        digests = engine.page_digests
        stream = self._stream
        fd = -1
        if self._descriptor is not None:
            writable = self._descriptor.writable_fd()
            if writable is None:
                return False
            fd = writable
        table = None if digests is None else digests.tables[block.name]
        number = engine.next_packet_nums(len(batches))  # one counter over all channels: none skipped
        while batches:
            with self._tls.direct_session(writing=True) if self._tls is not None else contextlib.nullcontext() as tls:
                out = None if self._descriptor is not None or tls is not None else self._packing()
                packets, pages_packets, normal, zero, written, payload, err, problem = compiled.send_packets(
                    fd,
                    block.memory,
                    batches,
                    engine.page_size,
                    engine.capacity,
                    engine.detect_zero_pages,
                    number,
                    field,
                    table,
                    self._zero_digest,
                    self._flags,
                    self._compressor.capsule,
                    out,
                    tls,
                )
            if out is not None and packets:
                stream.send_all([memoryview(out)[:written]])
            if packets:
                self._on_sent(Sent(packets, pages_packets, normal, zero, written, payload), self._compressor.path)
            batches = batches[packets:]
            number += packets
            # As the Python path's send_all: nothing counted for a packet that did not go out whole.
            if err == _TLS_REASON and self._tls is not None:
                raise self._tls.direct_failed(0, problem, writing=True)
            if problem is not None:  # the codec's own words, as its send_prepare raises them
                raise CodecError(problem)
            if err and tls is not None and self._tls is not None:
                raise self._tls.direct_failed(err, None, writing=True)
            if err and self._descriptor is not None:
                error = OSError(err, os.strerror(err))
                raise self._descriptor.send_error(error) from error
            if err:
                size = len(out or b"")
                raise ChannelError(f"{stream.name}: a packet does not fit the {size}-byte packing buffer")
        return True

    def _packing(self) -> bytearray:
        if self._out is None:
            pages = self._engine.capacity * self._engine.page_size
            self._out = bytearray(_PACKED * (ram_packet_size(self._engine.page_size) + pages) + pages)
        return self._out

    def _name_field(self, name: str) -> bytes | None:
        """The block name as a RAM packet carries it, or None for one the Python path refuses (too long)."""
        if name not in self._names:
            raw = name.encode()
            ok = len(raw) < RAMBLOCK_NAME_LEN and b"\0" not in raw
            self._names[name] = raw.ljust(RAMBLOCK_NAME_LEN, b"\0") if ok else None
        return self._names[name]

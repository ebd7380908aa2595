"""A destination channel's packets through the compiled loop (mfdcomp/_recvloop.c).

The Python loop in mfdcomp.engine.destination is the reference; this one reads
packet after packet from a plain socket or a TLS session (through the OpenSSL
Python's ssl loaded: mfdcomp/_tlsdirect.c) without the GIL (where that OpenSSL
can't be bound, through the TLS stream's read_some, the GIL taken for each
read), and leaves to it every
packet it does not take whole (a device-state packet, one that fails a check,
the end of the stream), handing back the bytes it read of that packet. Used
when the compiled module is there, the codec is nocomp or its context offers a
compiled decompressor (MultiFDMethods.packet_decompressor), and the stream is a
socket or a TLS stream; MFDCOMP_PURE_PYTHON=1 turns it off with the rest. A
payload the codec's decompressor refuses is its CodecError, as recv's would be.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from mfdcomp import speedups
from mfdcomp.errors import CodecError
from mfdcomp.methods import CodecPath, PacketDecompressor
from mfdcomp.methods.nocomp import NocompMethods
from mfdcomp.pagedigest import zero_page_digest
from mfdcomp.transport.base import DescriptorStream, DirectTlsStream, ReaderStream
from mfdcomp.wire import NOCOMP, Flag, ram_packet_size

if TYPE_CHECKING:
    from mfdcomp.engine.destination import RecvChannel

# Packets per call: progress and the stream's queued bytes are looked at in between (32 MiB of 4 KiB pages).
# Each return takes the GIL back from the other channels: 8 a call cost 512 MiB over 4 TCP channels 0.2894 s
# against 0.2776 s for 32 and 0.2857 s against 0.2780 s for 32 against 64 (8 alternating pairs each).
BATCH = 64

_MORE, _SYNC, _SLOW, _FAILED, _STORE_FAILED, _CODEC_FAILED, _RAISED, _TLS_FAILED = range(8)


class FastReceive:
    """One channel's compiled loop; :meth:`run` returns when the next packet is the Python loop's."""

    def __init__(
        self,
        channel: RecvChannel,
        stream: DescriptorStream | ReaderStream,
        header: memoryview,
        staging: memoryview,
        decoder: PacketDecompressor,
        payload: bytearray,
    ) -> None:
        self._channel = channel  # channel thread only, like everything here
        self._stream = stream
        self._header = header
        self._staging = staging
        self._decoder = decoder  # capsule None: nocomp, the pages are the payload
        self._payload = payload  # a compressed payload's bytes (the Python loop's buffer for them)
        # A socket is read by the loop itself, a TLS session too where OpenSSL is bound, any other stream through
        # its read_some. Looked at once: isinstance against a Protocol costs tens of microseconds.
        self._descriptor = stream if isinstance(stream, DescriptorStream) else None
        self._reader = None if isinstance(stream, DescriptorStream) else stream.read_some
        self._tls = stream if isinstance(stream, DirectTlsStream) and speedups.bind_tls() is None else None
        self._codec_args: tuple[object, ...] = (
            (0, None, None) if decoder.capsule is None else (channel.limits.codec_flag, payload, decoder.capsule)
        )
        limits = channel.limits
        assert limits.ramblocks is not None
        self._names = list(limits.ramblocks)
        self._blocks = channel.memory.descriptors(limits.ramblocks)
        self._header_size = ram_packet_size(limits.page_size)
        digests = channel.memory.page_digests
        self._zero_digest = zero_page_digest(limits.page_size) if digests is not None else bytes(16)

    @classmethod
    def for_channel(
        cls, channel: RecvChannel, header: memoryview, staging: memoryview, payload: bytearray
    ) -> FastReceive | None:
        """The compiled loop for ``channel``, or None where only the Python loop applies."""
        limits = channel.limits
        stream = channel.stream
        method = channel.method
        if (
            speedups.compiled() is None
            or limits.ramblocks is None
            or not set(limits.ramblocks) <= set(channel.memory.blocks)
            or not isinstance(stream, (DescriptorStream, ReaderStream))
        ):
            return None
        # What the compiled loop does for nocomp is NocompMethods.recv: any other recv (a subclass's, a
        # test's) runs; another codec's context must offer its compiled twin of recv, for the session's codec.
        if getattr(method.recv, "__func__", None) is NocompMethods.recv and limits.codec_flag == NOCOMP:
            return cls(channel, stream, header, staging, PacketDecompressor(None, CodecPath.RAW), payload)
        decoder = method.packet_decompressor()
        if (
            decoder is None
            or not limits.codec_flag
            or limits.codec_flag != method.flag
            or method.extension_id
            or limits.codec_flag & Flag.SYNC
        ):
            return None
        return cls(channel, stream, header, staging, decoder, payload)

    def run(self, arrive: Callable[[], None]) -> None:
        """Take packets until the next one is the Python loop's (its bytes put back in front of the stream).

        ``arrive`` is called after each SYNC packet (the channel's barrier). A failed read raises the
        stream's error for it; a failed write the target's, as the Python loop would.
        """
        compiled = speedups.compiled()
        assert compiled is not None
        channel = self._channel
        limits = channel.limits
        ps = limits.page_size
        stats = channel.stats
        while True:
            fd = -1
            if self._descriptor is not None:
                readable = self._descriptor.readable_fd()
                if readable is None:  # bytes are queued in front of the socket: the Python loop takes them
                    return
                fd = readable
            with self._tls.direct_session() if self._tls is not None else contextlib.nullcontext() as tls:
                status, back, err, packets, syncs, pages_packets, normal, zero, payload, wire, failed, problem = (
                    compiled.recv_packets(
                        fd,
                        self._header,
                        self._staging,
                        self._blocks,
                        ps,
                        limits.capacity,
                        BATCH,
                        self._zero_digest,
                        *self._codec_args,
                        self._reader if tls is None else None,
                        tls,
                    )
                )
            stats.packets += packets
            stats.sync_packets += syncs
            stats.normal_pages += normal
            stats.zero_pages += zero
            stats.payload_bytes += payload
            stats.wire_bytes += wire
            if pages_packets:
                stats.count(self._decoder.path, channel.method.implementation, pages_packets)
            if channel.on_packet is not None and normal + zero:
                channel.on_packet((normal + zero) * ps)
            if status == _SYNC:
                arrive()
            elif status == _SLOW:
                self._give_back(back)
                return
            elif status == _FAILED and self._descriptor is not None:
                error = OSError(err, os.strerror(err))
                raise self._descriptor.recv_error(error) from error
            elif status in (_FAILED, _TLS_FAILED):  # a TLS session's own read: its errno, or OpenSSL's reason
                assert self._tls is not None
                raise self._tls.direct_failed(err, problem if status == _TLS_FAILED else None)
            elif status == _RAISED:  # the reader's own error, as the Python loop's read raises it
                assert isinstance(problem, BaseException)
                raise problem
            elif status == _STORE_FAILED:
                error = OSError(err, os.strerror(err))
                raise channel.memory.store_error(self._names[back], failed, error) from error
            elif status == _CODEC_FAILED:  # the codec's words, as its recv raises them
                raise CodecError(problem)

    def _give_back(self, count: int) -> None:
        if count:
            read = bytes(self._header[: min(count, self._header_size)])
            if count > self._header_size:
                payload = self._staging if self._decoder.capsule is None else memoryview(self._payload)
                read += bytes(payload[: count - self._header_size])
            self._stream.unread(read)

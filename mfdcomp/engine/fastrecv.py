"""A nocomp destination channel's packets through the compiled loop (mfdcomp/_recvloop.c).

The Python loop in mfdcomp.engine.destination is the reference; this one reads
packet after packet from a plain socket without the GIL, and leaves to it every
packet it does not take whole (a device-state packet, one that fails a check,
the end of the stream), handing back the bytes it read of that packet. Used
when the compiled module is there, the codec is nocomp and the stream is a
plain socket (not TLS); MFDCOMP_PURE_PYTHON=1 turns it off with the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from mfdcomp import speedups
from mfdcomp.methods import CodecPath
from mfdcomp.methods.nocomp import NocompMethods
from mfdcomp.pagedigest import zero_page_digest
from mfdcomp.transport.base import DescriptorStream
from mfdcomp.wire import NOCOMP, ram_packet_size

if TYPE_CHECKING:
    from mfdcomp.engine.destination import RecvChannel

# Packets per call: progress and the run's state are looked at in between (4 MiB of 4 KiB pages).
BATCH = 8

_MORE, _SYNC, _SLOW, _FAILED, _STORE_FAILED = range(5)


class FastReceive:
    """One channel's compiled loop; :meth:`run` returns when the next packet is the Python loop's."""

    def __init__(self, channel: RecvChannel, stream: DescriptorStream, header: memoryview, staging: memoryview) -> None:
        self._channel = channel  # channel thread only, like everything here
        self._stream = stream
        self._header = header
        self._staging = staging
        limits = channel.limits
        assert limits.ramblocks is not None
        self._names = list(limits.ramblocks)
        self._blocks = channel.memory.descriptors(limits.ramblocks)
        self._header_size = ram_packet_size(limits.page_size)
        digests = channel.memory.page_digests
        self._zero_digest = zero_page_digest(limits.page_size) if digests is not None else bytes(16)

    @classmethod
    def for_channel(cls, channel: RecvChannel, header: memoryview, staging: memoryview) -> FastReceive | None:
        """The compiled loop for ``channel``, or None where only the Python loop applies."""
        limits = channel.limits
        stream = channel.stream
        if (
            speedups.compiled() is None
            # What the compiled loop does is NocompMethods.recv: any other recv (a subclass's, a test's) runs.
            or getattr(channel.method.recv, "__func__", None) is not NocompMethods.recv
            or limits.codec_flag != NOCOMP
            or limits.ramblocks is None
            or not set(limits.ramblocks) <= set(channel.memory.blocks)
            or not isinstance(stream, DescriptorStream)
        ):
            return None
        return cls(channel, stream, header, staging)

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
        while (fd := self._stream.readable_fd()) is not None:
            status, back, err, packets, syncs, pages_packets, normal, zero, payload, wire, failed = (
                compiled.recv_packets(
                    fd, self._header, self._staging, self._blocks, ps, limits.capacity, BATCH, self._zero_digest
                )
            )
            stats.packets += packets
            stats.sync_packets += syncs
            stats.normal_pages += normal
            stats.zero_pages += zero
            stats.payload_bytes += payload
            stats.wire_bytes += wire
            if pages_packets:
                stats.count(CodecPath.RAW, channel.method.implementation, pages_packets)
            if channel.on_packet is not None and normal + zero:
                channel.on_packet((normal + zero) * ps)
            if status == _SYNC:
                arrive()
            elif status == _SLOW:
                self._give_back(back)
                return
            elif status == _FAILED:
                error = OSError(err, os.strerror(err))
                raise self._stream.recv_error(error) from error
            elif status == _STORE_FAILED:
                error = OSError(err, os.strerror(err))
                raise channel.memory.store_error(self._names[back], failed, error) from error

    def _give_back(self, count: int) -> None:
        if count:
            read = bytes(self._header[: min(count, self._header_size)])
            if count > self._header_size:
                read += bytes(self._staging[: count - self._header_size])
            self._stream.unread(read)

"""Two properties the rest of the suite could lose unnoticed (mutation testing found them).

* packet_num: the bytes a source really sends, recorded per connection, must
  number every RAM and SYNC packet of every channel from one shared counter,
  as QEMU 10 does (spec: "packet_num is global across channels", SYNC packets
  use numbers too): unique across channels, strictly increasing on each,
  together exactly 0..N-1.
* Barrier.flush: a FLUSH while a channel has ended before its SYNC must end
  the destination with an error, promptly; without the wake-up it would wait
  forever. The test is bounded: it stops a hung destination itself.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from typing_extensions import Buffer

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine.migrate import MigrateOptions
from mfdcomp.errors import MfdcompError
from mfdcomp.imagegen import fill_memory, parse_mix
from mfdcomp.registry import get_codec
from mfdcomp.testing import run_loopback
from mfdcomp.testing.loopback import ForwardingStream
from mfdcomp.transport.base import Stream
from mfdcomp.wire import EndOfStream, RamData, RamPacket, ReceiverLimits, Sync
from mfdcomp.wire.reader import ChannelReader
from tests.test_hostile_peer import Peer

PS = 4096


class Recording(ForwardingStream):
    """Keeps a copy of every byte the source sends on this connection."""

    def __init__(self, inner: Stream, log: bytearray) -> None:
        super().__init__(inner)
        self.log = log

    def send_all(self, buffers: Sequence[Buffer]) -> None:
        for buffer in buffers:
            self.log += memoryview(buffer).cast("B")
        super().send_all(buffers)


def numbered_packets(data: bytes, limits: ReceiverLimits) -> list[tuple[int, str]]:
    """(packet_num, 'ram' or 'sync') of every RAM and SYNC packet of one recorded channel, in order."""
    reader = ChannelReader(limits)
    reader.feed(data)
    reader.feed_eof()
    found: list[tuple[int, str]] = []
    for event in reader:
        if isinstance(event, Sync):
            found.append((event.packet.packet_num, "sync"))
        elif isinstance(event, RamData):
            found.append((event.packet.packet_num, "ram"))
        elif isinstance(event, EndOfStream):
            break
    return found


@pytest.mark.parametrize(("codec", "channels", "zero"), [("none", 3, "multifd"), ("zstd", 2, "legacy")])
def test_packet_numbers_are_one_counter_over_all_channels(tmp_path: Path, codec: str, channels: int, zero: str) -> None:
    logs: dict[int, bytearray] = {}

    def record(index: int, stream: Stream) -> Stream:
        logs[index] = bytearray()
        return Recording(stream, logs[index])

    rounds = 3
    with RamClient.anonymous([("ram0", 4 << 20), ("vga", 1 << 20)]) as ram:
        for block in ram.blocks.values():
            fill_memory(block.memory, parse_mix("zero=10,text=40,random=30,half=20"), 7, PS)
        options = MigrateOptions(channels=channels, zero_page_detection=zero, rounds=rounds, dirty_fraction=0.3)
        outcome = run_loopback(ram, get_codec(codec), options, workdir=tmp_path, wrap=record)
        outcome.raise_for_errors()
        blocks = {name: block.size for name, block in ram.blocks.items()}
    flag = get_codec(codec).info.qemu_flag or 0
    limits = ReceiverLimits(page_size=PS, channels=channels, ramblocks=blocks, codec_flag=flag)
    assert bytes(logs[0][:4]) == b"MFDM" and len(logs) == channels + 1
    per_channel = {index: numbered_packets(bytes(logs[index]), limits) for index in range(1, channels + 1)}
    numbers: list[int] = []
    for index, packets in per_channel.items():
        nums = [n for n, _ in packets]
        assert nums == sorted(set(nums)), f"connection {index}: packet_num not strictly increasing: {nums}"
        syncs = [n for n, kind in packets if kind == "sync"]
        assert len(syncs) >= rounds, f"connection {index}: {len(syncs)} SYNC packets for {rounds} rounds"
        assert sum(1 for _, kind in packets if kind == "ram") > 0
        numbers += nums
    # One counter shared by every channel, SYNCs included: no number twice, none skipped.
    assert sorted(numbers) == list(range(len(numbers))), "packet_num is not one counter over all channels"


def test_flush_after_a_channel_ended_before_its_sync_fails_promptly(tmp_path: Path) -> None:
    """Channel 0 reaches its SYNC, channel 1 ends without one, then FLUSH: an error within seconds, not a hang."""
    peer = Peer(tmp_path, channels=2)
    first, second = peer.channel(0), peer.channel(1)
    first.sendall(RamPacket.sync(0).encode())
    time.sleep(0.2)  # channel 0 waits at its SYNC
    second.shutdown(socket.SHUT_WR)  # channel 1 ends cleanly, on a packet boundary, before any SYNC
    time.sleep(0.2)
    peer.send_main(mc.Message.FLUSH)
    peer.thread.join(5.0)
    hung = peer.thread.is_alive()
    if hung:  # stop the destination ourselves, so that the test ends either way
        peer.incoming.state.fail(MfdcompError("test: destination still waiting at FLUSH after 5 s"))
    error = peer.finish()
    assert not hung, "the destination kept waiting at FLUSH for a channel that had ended"
    assert isinstance(error, MfdcompError), error
    assert "ended before reaching the SYNC point" in str(error), error


def test_flush_wakes_when_the_channel_ends_after_flush_began(tmp_path: Path) -> None:
    """The same, the other way round: FLUSH is already waiting when the channel ends."""
    peer = Peer(tmp_path, channels=2)
    first, second = peer.channel(0), peer.channel(1)
    first.sendall(RamPacket.sync(0).encode())
    peer.send_main(mc.Message.FLUSH)
    time.sleep(0.3)  # the main thread waits in Barrier.flush
    second.shutdown(socket.SHUT_WR)
    peer.thread.join(5.0)
    hung = peer.thread.is_alive()
    if hung:
        peer.incoming.state.fail(MfdcompError("test: destination still waiting at FLUSH after 5 s"))
    error = peer.finish()
    assert not hung, "the destination kept waiting at FLUSH for a channel that had ended"
    assert isinstance(error, MfdcompError) and "ended before reaching the SYNC point" in str(error), error


def test_threads_left() -> None:
    assert not [t for t in threading.enumerate() if t.name == "hostile-destination"]

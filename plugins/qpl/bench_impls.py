"""MB/s of the qpl codec per page: libqpl's software path, the ISA-L writer and the zlib writer.

64 MiB of mixed pages (mfdcomp.imagegen, seed 1), 128 pages a packet, one
channel, send_prepare then recv; the decoded image is checked equal.
Run: .venv/bin/python plugins/qpl/bench_impls.py
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from mfdcomp_qpl import QplCodec

from mfdcomp.imagegen import generate_image
from mfdcomp.methods import CodecPath, PageViews
from mfdcomp.wire import Flag, RamPacket

PS = 4096
SIZE = 64 << 20
PER_PACKET = 128


class Source:
    def __init__(self, data: bytearray) -> None:
        self.data = data
        self.size = len(data)

    def read(self) -> memoryview:
        return memoryview(self.data)

    def read_into(self, views: Sequence[memoryview]) -> None:
        raise AssertionError("qpl reads the whole payload")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "img"
        generate_image(path, SIZE, {"zero": 10, "text": 40, "random": 20, "half": 30}, 1, PS)
        image = bytearray(path.read_bytes())
    memory = memoryview(image)
    offsets = list(range(0, SIZE, PS))
    packets = [offsets[i : i + PER_PACKET] for i in range(0, len(offsets), PER_PACKET)]
    for label, impl in (("libqpl", "libqpl"), ("isal writer", "isal"), ("zlib writer", "zlib")):
        codec = QplCodec(impl=impl)
        if not codec.probe()[1].available:
            print(f"{label:12s} NOT RUN: {codec.probe()[1].reason}")
            continue
        sender = codec.methods(PS, None, CodecPath.SOFTWARE)
        sender.send_setup(0)
        wires: list[bytearray] = []
        start = time.perf_counter()
        for packet_offsets in packets:
            payload = sender.send_prepare(PageViews(memory, packet_offsets, PS))
            wires.append(bytearray(b"".join(bytes(b) for b in payload.buffers)))
        compress = time.perf_counter() - start
        sender.send_cleanup()
        out = bytearray(SIZE)
        receiver = codec.methods(PS, None, CodecPath.SOFTWARE)
        receiver.recv_setup(0)
        start = time.perf_counter()
        for packet_offsets, wire in zip(packets, wires, strict=True):
            packet = RamPacket.data(
                flags=Flag.QPL, ramblock="r", normal=packet_offsets, next_packet_size=len(wire), packet_num=0
            )
            receiver.recv(packet, Source(wire), PageViews(memoryview(out), packet_offsets, PS))
        decompress = time.perf_counter() - start
        receiver.recv_cleanup()
        assert out == image
        software = codec.probe()[1]
        print(
            f"{label:12s} compress {SIZE / compress / 1e6:7.1f} MB/s  decompress {SIZE / decompress / 1e6:7.1f} MB/s  "
            f"payload/RAM {sum(map(len, wires)) / SIZE:.3f}  ({software.library} {software.version})"
        )


if __name__ == "__main__":
    main()

"""Send/receive throughput of the qatzip codec's implementations on the same pages, one thread.

Usage: python plugins/qatzip/benchmark.py [--size-mib 64] [--level 1] [--repeats 3] [--json]

The pages are a packet's normal pages as mfdcomp.imagegen makes them (text,
random and half-zero pages in the default mix's proportions; zero pages never
reach a codec), cut into packets of 128 pages of 4 KiB. For each way:

* ``libqatzip``: the plugin's channel context over the real library;
* ``python``: the plugin's pure-Python GZIP_EXT writer and zlib reader;
* ``zlib-1``: plain ``zlib.compress(packet, 1)`` / ``zlib.decompress``, the baseline.

send = compressing every packet, recv = decoding every payload into the pages;
MB/s counts page bytes (10**6), best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mfdcomp_qatzip import QatzipCodec

from mfdcomp.imagegen import generate_image
from mfdcomp.methods import CodecPath, MultiFDMethods
from mfdcomp.testing.checks import BytesSource
from mfdcomp.wire import Flag, RamPacket

PS = 4096
PACKET_PAGES = 128
MIX = {"text": 45.0, "random": 33.0, "half": 22.0}  # the default mix (10/40/30/20) without its zero pages


def _best(repeats: int, run: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def _codec_way(codec: QatzipCodec, memory: memoryview, level: int, repeats: int) -> tuple[float, float, int]:
    packets = [
        [memory[o : o + PS] for o in range(start, min(start + PACKET_PAGES * PS, len(memory)), PS)]
        for start in range(0, len(memory), PACKET_PAGES * PS)
    ]
    sender = codec.methods(PS, level, CodecPath.SOFTWARE)
    sender.send_setup(0)

    def send() -> list[bytes]:
        return [b"".join(bytes(b) for b in sender.send_prepare(pages).buffers) for pages in packets]

    send_seconds, payloads = _best(repeats, send)
    sender.send_cleanup()
    target = bytearray(len(memory))
    view = memoryview(target)
    receiver: MultiFDMethods = codec.methods(PS, level, CodecPath.SOFTWARE)
    receiver.recv_setup(0)
    step = PACKET_PAGES * PS
    offsets = [list(range(i * step, i * step + len(p) * PS, PS)) for i, p in enumerate(packets)]
    headers = [
        RamPacket.data(
            flags=Flag.QATZIP, ramblock="ram0", normal=o, next_packet_size=len(b), packet_num=i, page_size=PS
        )
        for i, (o, b) in enumerate(zip(offsets, payloads, strict=True))
    ]

    def recv() -> None:
        for header, offs, payload in zip(headers, offsets, payloads, strict=True):
            receiver.recv(header, BytesSource(payload), [view[o : o + PS] for o in offs])

    recv_seconds, _ = _best(repeats, recv)
    receiver.recv_cleanup()
    assert target == memory, "round trip"
    return send_seconds, recv_seconds, sum(len(p) for p in payloads)


def _zlib_way(memory: memoryview, level: int, repeats: int) -> tuple[float, float, int]:
    step = PACKET_PAGES * PS
    packets = [memory[start : start + step] for start in range(0, len(memory), step)]
    send_seconds, payloads = _best(repeats, lambda: [zlib.compress(p, level) for p in packets])
    recv_seconds, decoded = _best(
        repeats, lambda: [zlib.decompress(b, bufsize=len(p)) for b, p in zip(payloads, packets, strict=True)]
    )
    assert b"".join(decoded) == memory, "round trip"
    return send_seconds, recv_seconds, sum(len(p) for p in payloads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "pages"
        generate_image(image, args.size_mib << 20, MIX, 1, PS)
        memory = memoryview(image.read_bytes())
    library = QatzipCodec()
    software = next(p for p in library.probe() if p.path is CodecPath.SOFTWARE)
    if library.library is None:
        raise SystemExit(f"libqatzip is not loaded ({software.reason}); run ci/system/qatzip.sh as root")
    ways: dict[str, Callable[[], tuple[float, float, int]]] = {
        "libqatzip": lambda: _codec_way(library, memory, args.level, args.repeats),
        "python": lambda: _codec_way(QatzipCodec(list), memory, args.level, args.repeats),
        f"zlib-{args.level}": lambda: _zlib_way(memory, args.level, args.repeats),
    }
    rows = []
    for name, run in ways.items():
        send_seconds, recv_seconds, wire = run()
        rows.append(
            {
                "way": name,
                "send_mb_s": round(len(memory) / send_seconds / 1e6, 1),
                "recv_mb_s": round(len(memory) / recv_seconds / 1e6, 1),
                "ratio": round(wire / len(memory), 4),
            }
        )
    if args.json:
        print(json.dumps({"size_mib": args.size_mib, "level": args.level, "library": software.library, "rows": rows}))
        return
    print(f"{args.size_mib} MiB of pages {MIX}, level {args.level}")
    print(f"libqatzip {software.version} at {software.library}")
    print(f"{'way':<11} {'send MB/s':>10} {'recv MB/s':>10} {'ratio':>7}")
    for row in rows:
        print(f"{row['way']:<11} {row['send_mb_s']:>10} {row['recv_mb_s']:>10} {row['ratio']:>7}")


if __name__ == "__main__":
    main()

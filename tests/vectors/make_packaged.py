#!/usr/bin/env python3
"""Build mfdcomp/testing/vectors (package data) from the full recordings in ../shared/vectors.

The full captures are ~100 MB; the package carries a few real packets of each:

* stateless codecs (none, qpl, uadk, qatzip): channel 0's smallest data
  packet of ram0, the zero-page-only packet and the
  SYNC packets, each record exactly as QEMU sent it;
* stream codecs (zlib, zstd): channel 0's records up to its first data
  packet (their payloads only decode from the start of the channel's stream).

Each channel's kept records (with its init packet) are stored as one zstd
frame, ``ch<ID>.bin.zst``. manifest.json names the source capture and, for
every kept data packet, the sha256 of the pages it must decode to, taken
from QEMU's guest RAM after the migration. The qatzip library payloads are
copied as they are. The running-source capture is left out (its guest
rewrote pages after sending them). Run: python3 tests/vectors/make_packaged.py [SHARED]
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import sys
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "mfdcomp" / "testing" / "vectors"
HEADER = 1344
INIT = 64
SMALL_PACKETS = 1
STREAM_CODECS = ("zlib", "zstd")


def records(data: bytes) -> list[tuple[int, int, dict[str, object]]]:
    """(start, end, fields) of every record after the init packet."""
    found = []
    at = INIT
    while at < len(data):
        flags, _, normal, size, num, zero = struct.unpack_from(">IIIIQI", data, at + 8)
        name = data[at + 64 : at + 320].split(b"\0", 1)[0].decode()
        offsets = struct.unpack_from(f">{normal + zero}Q", data, at + 320)
        end = at + HEADER + (size if normal else 0)
        found.append((at, end, {"flags": flags, "normal": offsets[:normal], "zero": zero, "num": num, "block": name}))
        at = end
    return found


def reference_ram(capture: Path, manifest: dict) -> bytes:
    ram = bytearray(zstandard.ZstdDecompressor().decompress((capture / manifest["ram0"]["image_file"]).read_bytes()))
    overrides = manifest["ram0"].get("final_overrides")
    if overrides:
        blob = (capture / "ram0.final-overrides.bin").read_bytes()
        for k, page in enumerate(overrides["pages"]):
            ram[page * 4096 : (page + 1) * 4096] = blob[k * 4096 : (k + 1) * 4096]
    assert hashlib.sha256(ram).hexdigest() == manifest["ram0"]["final_sha256"]
    return bytes(ram)


def trim(capture: Path, out: Path) -> int:
    manifest = json.loads((capture / "manifest.json").read_text())
    ram = reference_ram(capture, manifest)
    ps = manifest["page_size"]
    out.mkdir(parents=True)
    channels: dict[str, dict] = {}
    stateful = manifest["codec"] in STREAM_CODECS
    for key, entry in sorted(manifest["multifd_channels"].items()):
        if stateful and key != "0":
            continue
        data = (capture / entry["file"]).read_bytes()
        recs = records(data)
        if stateful:
            first = next(i for i, r in enumerate(recs) if r[2]["normal"] and r[2]["block"] == "ram0")
            keep = list(range(first + 1))
        else:
            data_ram0 = [i for i, r in enumerate(recs) if r[2]["normal"] and r[2]["block"] == "ram0"]
            # One data packet per capture, on channel 0: the package stays at a few MB.
            small = sorted(data_ram0, key=lambda i: recs[i][1] - recs[i][0])[:SMALL_PACKETS] if key == "0" else []
            others = [i for i, r in enumerate(recs) if not r[2]["normal"]]  # SYNCs, zero-page-only packets
            keep = sorted(set(small) | set(others))
        kept = data[:INIT] + b"".join(data[recs[i][0] : recs[i][1]] for i in keep)
        expected = []
        for i in keep:
            fields = recs[i][2]
            if fields["normal"]:
                pages = b"".join(ram[o : o + ps] for o in fields["normal"])
                expected.append({"packet_num": fields["num"], "pages": len(fields["normal"]),
                                 "sha256": hashlib.sha256(pages).hexdigest()})  # fmt: skip
        name = f"{entry['file']}.zst"
        (out / name).write_bytes(zstandard.ZstdCompressor(level=19, write_checksum=True).compress(kept))
        channels[key] = {"file": name, "bytes": len(kept), "records": len(keep), "data_packets": expected}
    blocks = manifest["main_channel"]["ramblocks"]
    small = {
        "format": "mfdcomp-trimmed-capture/1",
        "source_capture": capture.name,
        "qemu_version": manifest["qemu_version"],
        "codec": manifest["codec"],
        "level": manifest["level"],
        "page_size": ps,
        "channels": manifest["channels"],
        "ramblocks": {b["name"]: b["used_length"] for b in blocks},
        "reference": "sha256 of each data packet's normal pages in QEMU's ram0 after the migration",
        "multifd_channels": channels,
    }
    (out / "manifest.json").write_text(json.dumps(small, indent=1) + "\n")
    return sum((out / c["file"]).stat().st_size for c in channels.values())


def main() -> None:
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "vectors"
    if (OUT / "qemu").exists():
        shutil.rmtree(OUT / "qemu")
    total = 0
    for capture in sorted((shared / "qemu").iterdir()):
        if "running" in capture.name:
            continue  # a running guest rewrote pages after they were sent: its final RAM is no reference per packet
        size = trim(capture, OUT / "qemu" / capture.name)
        print(f"{capture.name}: {size} bytes")
        total += size
    if (OUT / "qatzip").exists():
        shutil.rmtree(OUT / "qatzip")
    for case in ("text-1p", "mixed-37p"):  # the two small cases; the others add 1.7 MB
        shutil.copytree(shared / "qatzip" / case, OUT / "qatzip" / case)
    print(f"total {total} bytes of channels")


if __name__ == "__main__":
    main()

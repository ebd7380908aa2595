"""``mfdcomp inspect``: summarise recorded multifd channels, optionally replay them."""

from __future__ import annotations

import argparse
import json
import sys
import uuid as uuidlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mfdcomp.errors import MfdcompError, WireError
from mfdcomp.qemu.capture import ChannelSummary, split_connections, summarize_channel
from mfdcomp.qemu.mainstream import MainStream, PageRecord, ZeroPageRecord, parse_main_stream
from mfdcomp.qemu.replay import check_block_present, main_records_applier, replay
from mfdcomp.units import format_bytes, parse_size
from mfdcomp.wire import DEFAULT_PAGE_SIZE, ChannelIds, ReceiverLimits

DESCRIPTION = """\
Read recorded multifd connections (one file per connection, as a recording
proxy writes them: ch0.bin, ch1.bin, ...) and print what each channel carried:
packets, SYNC packets, normal and zero pages, payload bytes, codec, ramblocks.
Every packet is checked as a QEMU destination would check it; the first
violation is reported with its file and byte offset.

With --replay IMAGE --block NAME, the payloads (none, zlib, zstd) are decoded
with one decompressor per channel, and the pages of block NAME are applied to
IMAGE epoch by epoch (SYNC barriers respected). IMAGE is created zeroed when
absent. The last line printed is "sha256 <hex>" of IMAGE.

Give QEMU's main stream too (main.bin, told apart by its "QEVM" magic) and
its RAM part is parsed: the ramblock table then checks every packet's block
and offsets, sizes IMAGE, and zero pages sent on the main channel (legacy
zero-page detection, QEMU 7.2) are applied in their epoch.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "inspect",
        help="summarise (and replay) recorded multifd channel streams",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("captures", nargs="+", type=Path, metavar="CAPTURE", help="recorded connection files")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--page-size", type=parse_size, default=DEFAULT_PAGE_SIZE, help="target page size (4096)")
    parser.add_argument("--channels", type=int, help="refuse channel ids at or above this count")
    parser.add_argument("--uuid", type=uuidlib.UUID, help="refuse channels whose init packet has another uuid")
    parser.add_argument("--replay", type=Path, metavar="IMAGE", help="apply the pages of --block to IMAGE")
    parser.add_argument("--block", metavar="NAME", help="ramblock to replay (for example ram0)")
    parser.add_argument(
        "--size",
        type=parse_size,
        help="size of IMAGE (default: the block's length from the main stream, else the largest page written)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.replay is not None and args.block is None:
        raise MfdcompError("--replay needs --block NAME (the ramblock to apply, e.g. ram0)")
    multifd, main = split_connections(args.captures)
    if not multifd:
        raise MfdcompError("no multifd channel among the files given (they start with 11 22 33 44)")
    if len(main) > 1:
        raise MfdcompError(f"more than one main stream given: {', '.join(map(str, main))}")
    stream = _parse_main(main[0], args.page_size) if main else None
    limits = ReceiverLimits(
        page_size=args.page_size,
        channels=args.channels,
        uuid=args.uuid.bytes if args.uuid else None,
        ramblocks=stream.ramblocks if stream is not None else None,
    )
    ids = ChannelIds()
    summaries = sorted((summarize_channel(path, limits, ids) for path in multifd), key=lambda s: s.channel_id)
    report: dict[str, Any] = {
        "channels": [_channel_json(s) for s in summaries],
        "totals": _totals(summaries),
        "main_stream": _main_json(main[0], stream) if stream is not None else None,
    }
    if args.replay is not None:
        if stream is None:
            # No ramblock table: the blocks present are those the channels' packets name.
            blocks = {name for s in summaries for name in s.ramblocks}
            check_block_present(args.block, blocks, "the multifd packets")
        size = args.size
        if size is None and stream is not None:
            size = stream.ramblocks.get(args.block)
        result = replay(
            multifd,
            args.replay,
            args.block,
            limits=limits,
            size=size,
            main_epoch=main_records_applier(stream, args.block) if stream is not None else None,
        )
        report["replay"] = asdict(result) | {"image": str(args.replay), "block": args.block}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        _print_tables(summaries, report)
    if args.replay is not None:
        print(f"sha256 {report['replay']['sha256']}")
    return 0


def _parse_main(path: Path, page_size: int) -> MainStream:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MfdcompError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return parse_main_stream(data, page_size)
    except WireError as exc:
        raise type(exc)(f"{path}: {exc}", field=exc.field, value=exc.value, limit=exc.limit) from exc


def _main_json(path: Path, stream: MainStream) -> dict[str, Any]:
    return {
        "file": str(path),
        "machine_type": stream.machine_type,
        "ramblocks": dict(stream.ramblocks),
        "sync_mode": stream.sync_mode,
        "sync_points": stream.sync_points,
        "zero_page_records": sum(isinstance(r, ZeroPageRecord) for r in stream.records),
        "page_records": sum(isinstance(r, PageRecord) for r in stream.records),
    }


def _channel_json(summary: ChannelSummary) -> dict[str, Any]:
    data = asdict(summary)
    data["codecs"] = dict(summary.codecs)
    return data


_TOTAL_FIELDS = (
    "packets",
    "sync_packets",
    "data_packets",
    "normal_pages",
    "zero_pages",
    "payload_bytes",
    "device_state_packets",
)


def _totals(summaries: list[ChannelSummary]) -> dict[str, int]:
    return {name: sum(getattr(s, name) for s in summaries) for name in _TOTAL_FIELDS}


def _print_tables(summaries: list[ChannelSummary], report: dict[str, Any]) -> None:
    header = (
        f"{'ch':>3} {'file':<24} {'packets':>7} {'SYNC':>5} {'data':>5} "
        f"{'normal':>7} {'zero':>6} {'payload':>11}  codec"
    )
    print(header)
    for s in summaries:
        codecs = ",".join(f"{name}×{count}" for name, count in sorted(s.codecs.items())) or "-"
        print(
            f"{s.channel_id:>3} {Path(s.file).name:<24} {s.packets:>7} {s.sync_packets:>5} {s.data_packets:>5} "
            f"{s.normal_pages:>7} {s.zero_pages:>6} {format_bytes(s.payload_bytes):>11}  {codecs}"
        )
    t = report["totals"]
    print(
        f"{'all':>3} {'':<24} {t['packets']:>7} {t['sync_packets']:>5} {t['data_packets']:>5} "
        f"{t['normal_pages']:>7} {t['zero_pages']:>6} {format_bytes(t['payload_bytes']):>11}"
    )
    print()
    print(f"{'ramblock':<28} {'packets':>7} {'normal':>7} {'zero':>6}")
    blocks: dict[str, list[int]] = {}
    for s in summaries:
        for name, count in s.ramblocks.items():
            row = blocks.setdefault(name, [0, 0, 0])
            row[0] += count.packets
            row[1] += count.normal_pages
            row[2] += count.zero_pages
    for name, (packets, normal, zero) in sorted(blocks.items()):
        print(f"{name:<28} {packets:>7} {normal:>7} {zero:>6}")
    main = report["main_stream"]
    if main is not None:
        print(
            f"\nmain stream {Path(main['file']).name}: {main['machine_type'] or 'unknown machine'}, "
            f"{main['sync_mode']} sync ({main['sync_points']} sync points), "
            f"{main['zero_page_records']} zero-page and {main['page_records']} page records"
        )
        for name, size in main["ramblocks"].items():
            print(f"  ramblock {name:<26} {format_bytes(size):>10}")
    if "replay" in report:
        r = report["replay"]
        print(
            f"\nreplayed {r['normal_pages']} normal and {r['zero_pages']} zero pages of {r['block']} from the "
            f"multifd channels over {r['epochs']} epochs into {r['image']} ({format_bytes(r['size'])})"
        )

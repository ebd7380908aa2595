"""``mfdcomp send``: the source end of a transfer."""

from __future__ import annotations

import argparse
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mfdcomp.cli.common import add_codec_options, add_path_options, chosen_codec, peak_rss, print_json
from mfdcomp.clients.ram import DIGESTS, RamClient
from mfdcomp.engine.mappedram import save_to_file
from mfdcomp.engine.migrate import ZERO_PAGE_MODES, MigrateOptions, migrate
from mfdcomp.errors import MfdcompError
from mfdcomp.progress import Progress
from mfdcomp.transport.address import Address, parse_address
from mfdcomp.transport.base import Stream
from mfdcomp.transport.sockets import connect
from mfdcomp.transport.tls import TlsClient
from mfdcomp.units import format_bytes, parse_size

DESCRIPTION = """\
Send memory images to an `mfdcomp recv` over parallel multifd channels, the
way a QEMU source migrates RAM: the image is cut into packets of up to 512 KiB
of pages, handed to the first idle channel, zero pages detected (per
--zero-page-detection), compressed by the chosen codec, and every round ends
with a SYNC packet on each channel and a FLUSH on the main channel.

IMAGE is PATH or NAME=PATH; blocks are named ram0, ram1, ... by default.
The image files are never modified: later rounds (--rounds) change a
--dirty-fraction of the pages in a private copy and send them again.

Addresses: tcp:HOST:PORT, tcp:[V6]:PORT, unix:PATH, vsock:CID:PORT, fd:N,
and file:PATH, which writes QEMU's mapped-ram layout (pages at fixed offsets,
written by every channel with pwritev; codec none only) for a later
`mfdcomp recv --listen file:PATH`. The file is marked complete only at the end.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "send",
        help="send memory images over multifd channels",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image file, or NAME=PATH")
    parser.add_argument("--to", required=True, metavar="ADDRESS", help="where `mfdcomp recv` listens")
    parser.add_argument("--multifd-channels", type=int, default=2, metavar="N", help="channels, 1-255 (2)")
    add_codec_options(parser)
    add_path_options(parser)
    parser.add_argument(
        "--zero-page-detection",
        choices=ZERO_PAGE_MODES,
        default="multifd",
        help="multifd: in the channel threads (QEMU's default); legacy: on the main channel; none: send all",
    )
    parser.add_argument("--rounds", type=int, default=1, metavar="N", help="dirty rounds to send (1)")
    parser.add_argument("--dirty-fraction", type=float, default=0.05, metavar="F", help="pages changed per round")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dirty-page choice")
    parser.add_argument("--page-size", type=parse_size, default=4096, help="page size (4096)")
    parser.add_argument("--uuid", type=uuidlib.UUID, help="session uuid (random by default)")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="fail when no byte can be sent on a channel or the main channel for S seconds (a destination that "
        "accepted and stopped reading), or the destination does not accept the session within S seconds "
        "(default: wait as QEMU does; the session's acceptance still ends after --result-timeout)",
    )
    parser.add_argument(
        "--result-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the destination's verdict after the last page (60); the destination hashes "
        "its copy meanwhile, so allow for its hashing speed on large images",
    )
    parser.add_argument(
        "--tls-creds",
        type=Path,
        metavar="DIR",
        help="TLS on the main channel and every multifd channel, with QEMU's x509 layout in DIR (ca-cert.pem, "
        "client-cert.pem, client-key.pem): the destination's certificate must be signed by the CA",
    )
    parser.add_argument(
        "--tls-hostname",
        metavar="NAME",
        help="the name the destination's certificate must carry (default: the --to address's host, as QEMU)",
    )
    parser.add_argument(
        "--digest",
        choices=DIGESTS,
        default="xxh3-128",
        help="how both ends prove the copy equal (xxh3-128, the default: XXH3-128 of every page, hashed as the "
        "pages are sent and written, so no image is read again after the transfer; blake3 and sha256: the "
        "whole images hashed after it; sha256 is also what an mfdcomp older than main-channel version 3 "
        "verifies with)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    codec, level = chosen_codec(args)
    options = MigrateOptions(
        channels=args.multifd_channels,
        level=level,
        zero_page_detection=args.zero_page_detection,
        rounds=args.rounds,
        dirty_fraction=args.dirty_fraction,
        seed=args.seed,
        page_size=args.page_size,
        require_hw=args.require_hw,
        force_sw=args.force_sw,
        result_timeout=args.result_timeout,
        idle_timeout=args.idle_timeout,
        digest=args.digest,
        **({"uuid": args.uuid.bytes} if args.uuid else {}),
    )
    try:
        address = parse_address(args.to)
    except ValueError as exc:
        raise MfdcompError(str(exc)) from exc
    connect_to = _connector(args, address)
    with RamClient.from_images(args.images, page_size=args.page_size) as ram:
        total = sum(block.size for block in ram.blocks.values())
        with Progress(total, "send") as progress:
            if address.kind == "file":
                assert address.path is not None
                result = save_to_file(ram, Path(address.path), codec, options, on_progress=progress.update)
            else:
                result = migrate(
                    ram,
                    connect_to,
                    codec,
                    options,
                    on_progress=progress.update,
                )
    summary = result.as_dict()
    total_bytes = sum(block["normal_pages"] + block["zero_pages"] for block in summary["channels"]) * args.page_size
    summary["guest_bytes"] = total_bytes + result.main_zero_pages * args.page_size
    # Speed of the transfer itself; "seconds" also holds both ends' verification (connect to verified end).
    transfer = result.transfer_seconds
    summary["gb_per_s"] = summary["guest_bytes"] / transfer / 1e9 if transfer else 0.0
    summary["peak_rss_bytes"] = peak_rss()
    if args.json:
        print_json(summary)
    else:
        t = summary["totals"]
        print(
            f"sent {format_bytes(summary['guest_bytes'])} of pages in {transfer:.2f} s "
            f"({summary['gb_per_s']:.2f} GB/s) over {options.channels} channels, {t['packets']} packets "
            f"({t['sync_packets']} SYNC), {format_bytes(t['wire_bytes'])} on the wire; "
            f"{result.seconds:.2f} s with verification"
        )
        path = summary["path"]
        by_path = ", ".join(f"{name} {count}" for name, count in t["paths"].items()) or "none"
        print(f"codec {codec.info.name}: sent through the {path['chosen']} path; packets by path: {by_path}")
        for reason in path["passed_over"]:
            print(f"  passed over {reason}")
        for name, digest in result.digests.items():
            print(f"{result.digest} {digest} {name}")
        print("destination: " + ("identical" if result.ok else "DIFFERS"))
    return 0 if result.ok else 1


def _connector(args: argparse.Namespace, address: Address) -> Callable[[], Stream]:
    """How each channel connects: plain, or with TLS (its own handshake on every channel, as QEMU)."""
    if args.tls_creds is None:
        if args.tls_hostname is not None:
            raise MfdcompError("--tls-hostname needs --tls-creds")
        return lambda: connect(address, send_idle_timeout=args.idle_timeout)
    if address.kind == "file":
        raise MfdcompError("--tls-creds applies to connections, not to file: (QEMU: no TLS with mapped-ram)")
    tls = TlsClient.load(args.tls_creds, args.tls_hostname)
    return lambda: tls.connect(address, send_idle_timeout=args.idle_timeout)

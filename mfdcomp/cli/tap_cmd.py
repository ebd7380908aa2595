"""``mfdcomp tap``: sit between a QEMU migration source and its destination."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from mfdcomp.cli.common import print_json
from mfdcomp.qemu.tap import Tap, TapError, TapSummary, render_table
from mfdcomp.units import format_bytes, parse_size
from mfdcomp.wire import DEFAULT_PAGE_SIZE

DESCRIPTION = """\
Forward one QEMU migration from --listen (where the source migrates to) to
--to (the destination's incoming address), one destination connection per
source connection, in the same order. Connections are told apart by their
first 4 bytes, as QEMU's destination does: the main channel ("QEVM") is
forwarded untouched both ways; every multifd channel is parsed and checked
packet by packet, and each data payload is decoded with the registered codec
of its flag (one decoder per channel). On a terminal, per-channel figures are
shown live on stderr; at the end a summary is printed (JSON with --json).

--record DIR writes one file per connection as the source sent it (main.bin,
ch<ID>.bin and manifest.json: the layout `mfdcomp inspect` and
mfdcomp.qemu.replay read).

--transcode CODEC re-encodes every data packet with mfdcomp's CODEC encoder
(one stream per channel) and rewrites the codec flag and next_packet_size in
its header; init, SYNC and zero-page information and packet numbers pass
unchanged. Start the destination with multifd-compression CODEC: it then
decodes mfdcomp's bytes. With --record, DIR/transcoded holds what the
destination received.

With --tls-creds DIR (both QEMUs started with -object tls-creds-x509 and
migrate parameter tls-creds), the tap terminates each TLS connection from the
source, main channel included, and opens its own to the destination, in the
same order: the multifd records in between are plaintext, so they are decoded,
recorded and transcoded as without TLS.

The tap ends when the main channel and every multifd channel have closed,
or at the first error, which closes both sides of every connection.

Example (destination: -incoming defer, then migrate-incoming tcp:127.0.0.1:4445;
source: migrate tcp:127.0.0.1:4444):
  mfdcomp tap --listen tcp:127.0.0.1:4444 --to tcp:127.0.0.1:4445 --record cap/
"""

# Seconds between two redraws of the live view.
_REFRESH = 0.5


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "tap",
        help="forward a QEMU migration, parsing (and optionally transcoding) its multifd channels",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--listen", required=True, metavar="ADDR", help="where the source connects (tcp: or unix:)")
    parser.add_argument("--to", required=True, metavar="ADDR", help="the destination's incoming address")
    parser.add_argument("--record", type=Path, metavar="DIR", help="record every connection into DIR")
    parser.add_argument("--transcode", metavar="CODEC", help="re-encode multifd payloads with mfdcomp's CODEC")
    parser.add_argument(
        "--tls-creds",
        type=Path,
        metavar="DIR",
        help="terminate the source's TLS (server-cert.pem) and open TLS to the destination (client-cert.pem): "
        "QEMU's x509 layout in DIR, as both QEMUs' tls-creds-x509 objects use",
    )
    parser.add_argument(
        "--tls-hostname",
        metavar="NAME",
        help="the name the destination's certificate must carry (default: the --to address's host, as QEMU)",
    )
    parser.add_argument("--json", action="store_true", help="print the final summary as JSON")
    parser.add_argument("--page-size", type=parse_size, default=DEFAULT_PAGE_SIZE, help="target page size (4096)")
    parser.add_argument(
        "--connect-timeout", type=float, default=10.0, metavar="S", help="seconds to reach the destination"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    tap = Tap(
        args.listen,
        args.to,
        record=args.record,
        transcode=args.transcode,
        page_size=args.page_size,
        connect_timeout=args.connect_timeout,
        tls_creds=args.tls_creds,
        tls_hostname=args.tls_hostname,
    )
    with tap:
        bound = tap.start()
        print(f"mfdcomp tap: listening on {bound}, forwarding to {args.to}", file=sys.stderr, flush=True)
        live = _LiveView(sys.stderr) if sys.stderr.isatty() else None
        while not tap.finished(_REFRESH):
            if live is not None:
                live.draw(render_table(tap.snapshot(), tap.page_size))
        summary = tap.close()
    if args.json:
        print_json(summary.as_dict())
    else:
        _print_summary(summary)
    if summary.error is not None:
        raise TapError(summary.error)
    return 0


class _LiveView:
    """Redraws a block of lines in place on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.height = 0

    def draw(self, lines: list[str]) -> None:
        up = f"\x1b[{self.height}F" if self.height else ""
        self.stream.write(up + "".join(f"{line}\x1b[K\n" for line in lines))
        self.stream.flush()
        self.height = len(lines)


def _print_summary(summary: TapSummary) -> None:
    for line in render_table(summary.connections, summary.page_size):
        print(line)
    totals = summary.totals()

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    transcoded = f", transcoded to {summary.transcode}" if summary.transcode else ""
    print(
        f"{totals['channels']} multifd channels{transcoded}: {totals['packets']} packets "
        f"({totals['data_packets']} with pages, {totals['sync_packets']} SYNC), "
        f"{totals['normal_pages']} normal and {totals['zero_pages']} zero pages, "
        f"ratio in {ratio(totals['ratio_in'])} out {ratio(totals['ratio_out'])}; "
        f"{format_bytes(totals['bytes_in'])} in, {format_bytes(totals['bytes_out'])} out in {summary.seconds:.2f} s "
        f"({format_bytes(totals['throughput_bytes_per_s'])}/s)"
    )
    if summary.record is not None:
        print(f"recorded in {summary.record}")

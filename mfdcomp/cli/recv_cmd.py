"""``mfdcomp recv``: the destination end of a transfer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mfdcomp.cli.common import peak_rss, print_json
from mfdcomp.clients.ram import RamClient
from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine.incoming import Incoming, IncomingResult
from mfdcomp.engine.mappedram import load_from_file
from mfdcomp.errors import MfdcompError
from mfdcomp.progress import Progress
from mfdcomp.registry import get_codec
from mfdcomp.transport.address import parse_address
from mfdcomp.transport.sockets import listen

DESCRIPTION = """\
Receive one transfer from `mfdcomp send` and write it to image files. The
session (page size, channels, codec, blocks) comes from the sender's main
channel; every multifd packet is checked as a QEMU destination would check it,
and the first error ends both sides. The last line is "sha256 <hex>" of the
received image; the exit code is 0 only when it equals the source's.

With --listen file:PATH, the blocks are read back from a complete mapped-ram
file written by `mfdcomp send --to file:PATH` (by --channels threads) and
checked against the digests stored in it; an unfinished file is refused.

With one block, --out is the image file; with several, --out is a directory
and each block is written to NAME.img in it.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "recv",
        help="receive memory images over multifd channels",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        required=True,
        metavar="ADDRESS",
        help="tcp:HOST:PORT, unix:PATH, vsock:CID:PORT, fd:N, or file:PATH to read a mapped-ram file",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="PATH", help="image file (or directory)")
    parser.add_argument(
        "--channels", type=int, metavar="N", help="reader threads for file: (default: the writer's channels)"
    )
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="seconds for channels to join")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="fail when a connection sends nothing for S seconds, e.g. a peer stalled mid-packet (default: "
        "wait forever, as QEMU); must exceed the longest quiet spell of a good run (a round's preparation)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(run=run)


def target_paths(out: Path, blocks: list[tuple[str, int]]) -> dict[str, Path]:
    if len(blocks) == 1:
        return {blocks[0][0]: out}
    out.mkdir(parents=True, exist_ok=True)
    return {name: out / (name.replace("/", "_").strip("_") + ".img") for name, _ in blocks}


def run(args: argparse.Namespace) -> int:
    try:
        address = parse_address(args.listen)
    except ValueError as exc:
        raise MfdcompError(str(exc)) from exc
    clients: list[RamClient] = []
    progress = Progress(0, "recv")

    def make_targets(session: mc.Session) -> Any:
        paths = target_paths(args.out, session.blocks)
        client = RamClient.create_targets(session.blocks, lambda name: paths[name], page_size=session.page_size)
        clients.append(client)
        progress.total = sum(size for _, size in session.blocks)
        return client.blocks

    result: IncomingResult
    try:
        if address.kind == "file":
            assert address.path is not None
            result = load_from_file(
                Path(address.path),
                make_targets,
                lambda: clients[0].digests(),
                channels=args.channels,
                on_progress=progress.update,
            )
        else:
            listener = listen(address, idle_timeout=args.idle_timeout)
            # Said at once, so a script (or a person) using port 0 learns where to send.
            print(f"mfdcomp recv: listening on {listener.address}", file=sys.stderr, flush=True)
            incoming = Incoming(
                listener,
                make_targets=make_targets,
                digests=lambda: clients[0].digests(),
                find_codec=get_codec,
                connect_timeout=args.connect_timeout,
                on_progress=progress.update,
            )
            result = incoming.run()
    finally:
        progress.close()
        for client in clients:
            client.close()
    if args.json:
        print_json(result.as_dict() | {"peak_rss_bytes": peak_rss()})
    else:
        for name, digest in result.digests.items():
            source = result.source_digests.get(name)
            verdict = "matches the source" if digest == source else "DIFFERS from the source"
            print(f"{name}: {verdict}")
        digests = list(result.digests.values())
        if len(digests) == 1:
            print(f"sha256 {digests[0]}")
        else:
            for name, digest in result.digests.items():
                print(f"sha256 {digest} {name}")
    return 0 if result.ok else 1

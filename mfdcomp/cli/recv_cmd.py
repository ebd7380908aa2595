"""``mfdcomp recv``: the destination end of a transfer."""

from __future__ import annotations

import argparse
import contextlib
import os
import string
import sys
import tempfile
from pathlib import Path
from typing import Any

from mfdcomp.cli.common import peak_rss, print_json
from mfdcomp.clients.ram import RamClient
from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine.incoming import HANDSHAKE_TIMEOUT, Incoming, IncomingResult
from mfdcomp.engine.mappedram import load_from_file
from mfdcomp.engine.threads import signals_held
from mfdcomp.errors import MfdcompError, SessionError, TargetError
from mfdcomp.progress import Progress
from mfdcomp.registry import get_codec
from mfdcomp.transport.address import parse_address
from mfdcomp.transport.sockets import listen
from mfdcomp.transport.tls import TlsServer, is_loopback
from mfdcomp.units import format_bytes, parse_size

DESCRIPTION = """\
Receive one transfer from `mfdcomp send` and write it to image files. The
session (page size, channels, codec, blocks) comes from the sender's main
channel; every multifd packet is checked as a QEMU destination would check it,
and the first error ends both sides. The last line is "<digest> <hex>" of the
received image, by the digest the source chose (xxh3-128 by default, blake3 or sha256);
the exit code is 0 only when it equals the source's.

With --listen file:PATH, the blocks are read back from a complete mapped-ram
file written by `mfdcomp send --to file:PATH` (by --channels threads) and
checked against the digests stored in it; an unfinished file is refused.

With one block, --out is the image file; with several, --out is a directory
and each block is written to NAME.img in it, NAME being the block's name with
every byte other than letters, digits and -_.+,=@: (and a leading dot) written
%XX, so distinct blocks always get distinct files inside the directory.

Each file is written as a temporary .NAME.mfdcomp-XXXXXXXX.part beside its
final name and renamed over it only when the transfer is verified (digests
equal); any failure, Ctrl-C or SIGTERM removes it, and a file already at the
final name is left untouched. Only SIGKILL, which allows no clean-up, leaves
the .part file behind. All blocks' space is allocated before the first page.

With --multifd-compression, a sender using another codec is refused (both
ends report it); without it, any codec is accepted.

With --tls-creds DIR (QEMU's x509 layout: ca-cert.pem, server-cert.pem,
server-key.pem), every connection must shake hands in TLS 1.2+ with a client
certificate of the same CA (and, with --tls-authz, one of those names as its
CN or a DNS name); any other connection is dropped with a line saying why, and
the receiver goes on waiting for a valid source. --max-size refuses a session
whose blocks total more, before anything is allocated; without it the limit is
the free space of --out's filesystem.
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
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=HANDSHAKE_TIMEOUT,
        metavar="S",
        help="seconds a new connection has to say what it is (main or multifd channel) before it is dropped; "
        f"a stranger's idle or garbage connection costs only that, never the session (default {HANDSHAKE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--multifd-compression",
        metavar="CODEC",
        help="accept only a sender using this codec, as QEMU sets it on both ends (default: any codec)",
    )
    parser.add_argument(
        "--tls-creds",
        type=Path,
        metavar="DIR",
        help="require TLS with client certificates on every connection; DIR in QEMU's x509 layout (ca-cert.pem, "
        "server-cert.pem, server-key.pem)",
    )
    parser.add_argument(
        "--tls-authz",
        type=lambda text: [name for name in text.split(",") if name],
        metavar="NAME[,NAME]",
        help="accept only client certificates with one of these names (CN or DNS name); default: any the CA signed",
    )
    parser.add_argument(
        "--max-size",
        type=parse_size,
        metavar="SIZE",
        help="refuse a session whose blocks total more than SIZE, before allocating anything (e.g. 8G)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(run=run)


# Kept as they are in a block's file name; any other byte becomes %XX.
_SAFE = frozenset(string.ascii_letters + string.digits + "-_.+,=@:")
_NAME_MAX = 255


def block_file_name(name: str) -> str:
    """``NAME.img`` for a block: injective (``%`` is always escaped, so the escapes decode one way only) and safe.

    No ``/``, no NUL, no leading dot (so never ``.``, ``..``, a hidden file or
    one of the ``.part`` files): a hostile sender cannot name a file outside
    --out, and blocks such as ``x`` and ``_x`` no longer share one.
    """
    encoded = "".join(
        chr(byte) if chr(byte) in _SAFE and not (index == 0 and byte == ord(".")) else f"%{byte:02X}"
        for index, byte in enumerate(name.encode())
    )
    file_name = encoded + ".img"
    if len(file_name) > _NAME_MAX:
        raise TargetError(f"ramblock name {name!r} makes a file name of {len(file_name)} bytes (at most {_NAME_MAX})")
    return file_name


def target_paths(out: Path, blocks: list[tuple[str, int]]) -> dict[str, Path]:
    """Where each block ends up: ``out`` itself for one block, else one file per block inside ``out``."""
    if len(blocks) == 1:
        return {blocks[0][0]: out}
    return {name: out / block_file_name(name) for name, _ in blocks}


def check_out(out: Path) -> None:
    """Refuse, before listening, an --out whose directory is missing or cannot take a new file."""
    if out.is_dir():
        directory = out  # several blocks go in it; one block is refused with the session's layout
    elif out.exists() and not out.is_file():
        raise TargetError(f"--out {out} exists and is neither a regular file nor a directory")
    else:
        directory = out.parent
        if not directory.is_dir():
            raise TargetError(f"--out {out}: directory {directory} does not exist")
    # A real new file, as the targets will be: permissions, a read-only mount, no inode left.
    try:
        fd, probe = tempfile.mkstemp(prefix=".mfdcomp-probe-", dir=directory)
    except OSError as exc:
        raise TargetError(f"--out {out}: cannot create files in {directory}: {exc.strerror or exc}") from exc
    os.close(fd)
    os.unlink(probe)


def _make_out_dir(out: Path, blocks: int) -> bool:
    """The directory of a session of several blocks; True when it was made here (to remove on failure)."""
    if out.is_dir():
        return False
    if out.exists():
        raise TargetError(f"--out {out} is not a directory, and this session has {blocks} blocks (one file each)")
    try:
        out.mkdir()
    except OSError as exc:
        raise TargetError(f"cannot create directory {out}: {exc.strerror or exc}") from exc
    return True


def check_max_size(limit: int | None, session: mc.Session) -> None:
    """Refuse, with both sizes, a session announcing more than ``limit`` bytes (None: no limit)."""
    total = sum(size for _, size in session.blocks)
    if limit is not None and total > limit:
        raise SessionError(
            f"the session's {len(session.blocks)} block(s) total {total} bytes ({format_bytes(total)}), more than "
            f"this destination's --max-size {limit} bytes ({format_bytes(limit)})",
            field="size",
            value=total,
            expected=limit,
        )


def _check_codec(wanted: str | None, session: mc.Session) -> None:
    if wanted is not None and session.codec != wanted:
        raise SessionError(
            f"the source uses multifd compression {session.codec!r}; this destination accepts only {wanted!r}"
            " (--multifd-compression)",
            field="codec",
            value=session.codec,
            expected=wanted,
        )


def run(args: argparse.Namespace) -> int:
    # Ctrl-C and SIGTERM arrive as KeyboardInterrupt (mfdcomp.cli.main): the finally below removes the targets.
    try:
        address = parse_address(args.listen)
    except ValueError as exc:
        raise MfdcompError(str(exc)) from exc
    if args.multifd_compression is not None:
        get_codec(args.multifd_compression)  # an unknown name is refused now, not when a sender arrives
    check_out(args.out)
    if args.tls_authz and args.tls_creds is None:
        raise MfdcompError("--tls-authz needs --tls-creds")
    tls = None
    if args.tls_creds is not None:
        if address.kind == "file":
            raise MfdcompError("--tls-creds applies to connections, not to file: (QEMU: no TLS with mapped-ram)")
        tls = TlsServer.load(args.tls_creds, args.tls_authz)
    clients: list[RamClient] = []
    made_dirs: list[Path] = []
    progress = Progress(0, "recv")

    def make_targets(session: mc.Session) -> Any:
        # A typed error raised here reaches the source as the destination's error.
        check_max_size(args.max_size, session)  # first: nothing is made for a session that is too large
        _check_codec(args.multifd_compression, session)
        paths = target_paths(args.out, session.blocks)
        if len(session.blocks) > 1 and _make_out_dir(args.out, len(session.blocks)):
            made_dirs.append(args.out)
        client = RamClient.create_targets(
            session.blocks,
            lambda name: paths[name],
            page_size=session.page_size,
            staged=True,
            # A socket's pages are written with pwrite (ENOSPC is an error, not a SIGBUS), and pages never
            # sent stay holes, as in QEMU's sparse RAM file; a mapped-ram load writes through the mapping.
            reserve=address.kind == "file",
        )
        clients.append(client)
        progress.total = sum(size for _, size in session.blocks)
        return client.blocks

    result: IncomingResult
    committed = False

    def commit() -> None:
        # Before the source hears "ok": a rename that fails reaches it as this side's error.
        nonlocal committed
        for client in clients:
            client.commit()
        committed = True

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
            if tls is None and address.kind == "tcp" and not is_loopback(address.host):
                print(
                    f"mfdcomp recv: warning: {listener.address} is reachable from other hosts and TLS is off: "
                    "anyone who connects can write into --out; use --tls-creds (and --max-size)",
                    file=sys.stderr,
                    flush=True,
                )
            incoming = Incoming(
                listener,
                make_targets=make_targets,
                digests=lambda algorithm: clients[0].digests(algorithm),
                find_codec=get_codec,
                connect_timeout=args.connect_timeout,
                on_progress=progress.update,
                handshake_timeout=args.handshake_timeout,
                on_verified=commit,
                tls=tls,
            )
            result = incoming.run()
        if result.ok and not committed:
            commit()
    finally:
        with signals_held():  # removing the targets must not be interrupted half-way
            progress.close()
            for client in clients:
                client.close()  # removes the .part files not committed
            if not committed:
                for directory in made_dirs:
                    with contextlib.suppress(OSError):  # only if empty: never someone else's file
                        directory.rmdir()
    if args.json:
        print_json(result.as_dict() | {"peak_rss_bytes": peak_rss()})
    else:
        for name, digest in result.digests.items():
            source = result.source_digests.get(name)
            verdict = "matches the source" if digest == source else "DIFFERS from the source"
            print(f"{name}: {verdict}")
        digests = list(result.digests.values())
        algorithm = result.session.digest  # the source's choice, named so the line can be checked by hand
        if len(digests) == 1:
            print(f"{algorithm} {digests[0]}")
        else:
            for name, digest in result.digests.items():
                print(f"{algorithm} {digest} {name}")
    return 0 if result.ok else 1

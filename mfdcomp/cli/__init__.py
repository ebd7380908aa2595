"""``mfdcomp`` command line: one sub-command per module of this package."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

from mfdcomp import __version__
from mfdcomp.cli import (
    bench_cmd,
    codecs_cmd,
    conformance_cmd,
    doctor_cmd,
    gen_image_cmd,
    inspect_cmd,
    qemu_check_cmd,
    recv_cmd,
    send_cmd,
    tap_cmd,
)
from mfdcomp.cli.common import quiet_on_broken_pipe
from mfdcomp.engine.state import Terminated
from mfdcomp.errors import MfdcompError

COMMANDS = (
    conformance_cmd,
    send_cmd,
    recv_cmd,
    inspect_cmd,
    gen_image_cmd,
    codecs_cmd,
    doctor_cmd,
    tap_cmd,
    qemu_check_cmd,
    bench_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfdcomp",
        description=(
            "Hardware-offload compression for multi-channel memory transfer, "
            "byte-compatible with QEMU's multifd live migration."
        ),
    )
    parser.add_argument("--version", action="version", version=f"mfdcomp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(commands)
    return parser


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    # Once: a second SIGTERM must not cut the clean-up of the first short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(f"signal {signum}")


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread, so the
    engine tells the peer and every ``finally`` runs, as for Ctrl-C; the old handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@quiet_on_broken_pipe  # `mfdcomp codecs | head -1`: exit 141, no traceback
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _sigterm_raises():
            code: int = args.run(args)
    except MfdcompError as exc:
        print(f"mfdcomp {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"mfdcomp {args.command}: interrupted by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"mfdcomp {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    return code


if __name__ == "__main__":
    sys.exit(main())

"""``mfdcomp`` command line: one sub-command per module of this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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


@quiet_on_broken_pipe  # `mfdcomp codecs | head -1`: exit 141, no traceback
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except MfdcompError as exc:
        print(f"mfdcomp {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mfdcomp {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

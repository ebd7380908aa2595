"""Pieces shared by the sub-commands: codec options, JSON output, peak memory."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mfdcomp.methods import Codec
from mfdcomp.procinfo import kib_field
from mfdcomp.registry import default_registry


def add_codec_options(parser: argparse.ArgumentParser) -> None:
    registry = default_registry()
    names = ", ".join(sorted(registry.codecs))
    parser.add_argument(
        "--multifd-compression",
        default="none",
        metavar="CODEC",
        help=f"codec for the multifd channels (registered here: {names}; see `mfdcomp codecs`)",
    )
    for name, codec in sorted(registry.codecs.items()):
        if codec.info.levels is not None:
            low, high = codec.info.levels
            parser.add_argument(
                f"--multifd-{name}-level",
                type=int,
                metavar="N",
                help=f"{name} level {low}-{high} (default {codec.info.default_level})",
            )


def add_path_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--require-hw",
        action="store_true",
        help="fail unless the codec's hardware path is available and produces every packet",
    )
    group.add_argument(
        "--force-sw",
        action="store_true",
        help="send through the codec's software twin even where the hardware is present",
    )


def chosen_codec(args: argparse.Namespace) -> tuple[Codec, int | None]:
    codec = default_registry().get(args.multifd_compression)
    level = getattr(args, f"multifd_{codec.info.name}_level".replace("-", "_"), None)
    return codec, codec.info.check_level(level)


def peak_rss() -> int | None:
    """This process's peak resident memory in bytes (VmHWM), or None where the kernel does not say.

    Not getrusage's ru_maxrss: that starts from the peak of the process that
    forked this one, so a small program started by a large one reports the
    large one's peak.
    """
    return kib_field("/proc/self/status", "VmHWM")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    print()

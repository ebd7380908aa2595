"""Pieces shared by the sub-commands: codec options, JSON output, peak memory."""

from __future__ import annotations

import argparse
import functools
import json
import os
import select
import sys
from collections.abc import Callable
from typing import Any, ParamSpec

from mfdcomp.errors import CodecError
from mfdcomp.methods import Codec
from mfdcomp.procinfo import kib_field
from mfdcomp.registry import default_registry

P = ParamSpec("P")

# What a shell reports for a program killed by SIGPIPE (128 + 13), as `cat file | head -1` leaves `cat`.
BROKEN_PIPE_EXIT = 141


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


def _level_dest(name: str) -> str:
    """argparse's attribute for ``--multifd-NAME-level``."""
    return f"multifd_{name}_level".replace("-", "_")


def chosen_codec(args: argparse.Namespace) -> tuple[Codec, int | None]:
    """The --multifd-compression codec and its level; another codec's level option is an error, not ignored."""
    registry = default_registry()
    codec = registry.get(args.multifd_compression)
    chosen = codec.info.name
    for name in sorted(registry.codecs):
        if name != chosen and getattr(args, _level_dest(name), None) is not None:
            raise CodecError(f"--multifd-{name}-level applies to {name}, not {chosen}")
    level = getattr(args, _level_dest(chosen), None)
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


def quiet_on_broken_pipe(main: Callable[P, int]) -> Callable[P, int]:
    """``main``, returning 141 without a traceback when its reader closed stdout (``mfdcomp codecs | head -1``).

    The recipe of Python's signal docs (note on SIGPIPE): stdout is flushed
    here so the error comes up inside the try rather than at interpreter exit,
    then pointed at /dev/null, as the interpreter flushes it once more on its way out.
    """

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            try:
                return main(*args, **kwargs)
            finally:
                # Also after SystemExit (argparse's --help), whose text is still in the buffer.
                sys.stdout.flush()
        except BrokenPipeError:
            if not _stdout_reader_gone():
                raise  # a socket's EPIPE that escaped translation is a bug to show, not a closed stdout
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass  # stdout without a descriptor (replaced in-process): nothing is flushed at exit
            return BROKEN_PIPE_EXIT

    return wrapper


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe or socket with no reader left (poll reports POLLERR on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))
    except (OSError, ValueError):
        return False

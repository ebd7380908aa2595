"""``mfdcomp gen-image``: write a deterministic test memory image."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mfdcomp.imagegen import DEFAULT_MIX, KINDS, generate_image, parse_mix
from mfdcomp.progress import Progress
from mfdcomp.units import format_bytes, parse_size

DESCRIPTION = f"""\
Write a memory image of --size bytes made of pages of four kinds, shuffled
over the image in the proportions of --mix:

  zero    every byte 0
  text    invented words with Zipf-like frequencies (no real text); every
          page differs, and zlib shrinks one to about 0.37 of its size
  random  uniform random bytes
  half    half a page of random bytes, then zeros

The mix is KIND=SHARE,... in percent (summing to 100) or fractions (summing
to 1.0); kinds left out get no pages. Page counts are exact: the floor of each
share, the remaining pages to the largest fractions. The same arguments always
give the same bytes. The last line is "sha256 <hex>" of the image.

Default mix: {DEFAULT_MIX}. An existing OUT is overwritten.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "gen-image",
        help="write a deterministic test memory image",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", metavar="OUT", help="image file to write")
    parser.add_argument("--size", required=True, type=parse_size, help="image size, e.g. 64M, 1G")
    parser.add_argument(
        "--mix", default=DEFAULT_MIX, metavar="MIX", help=f"page kinds ({', '.join(KINDS)}) and their shares"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the image (0)")
    parser.add_argument("--page-size", type=parse_size, default=4096, help="page size (4096)")
    parser.add_argument("--json", action="store_true", help="print the stats as one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    mix = parse_mix(args.mix)
    with Progress(args.size, "gen-image") as progress:
        stats = generate_image(args.out, args.size, mix, args.seed, page_size=args.page_size, progress=progress.update)
    if args.json:
        json.dump(stats.as_dict(), sys.stdout, indent=2)
        print()
        return 0
    print(
        f"wrote {stats.path}: {format_bytes(stats.size)}, {stats.pages} pages of {stats.page_size} B "
        f"in {stats.seconds:.2f} s ({stats.mb_per_s:.0f} MB/s)"
    )
    for kind in KINDS:
        count = stats.counts[kind]
        print(f"  {kind:<7} {count:>10} pages  {count / stats.pages * 100:6.2f} %")
    print(f"sha256 {stats.sha256}")
    return 0

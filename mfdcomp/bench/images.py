"""The bench's images: one per data kind and size, made once with `mfdcomp gen-image` and kept in a cache folder."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mfdcomp.bench.procs import MFDCOMP
from mfdcomp.errors import MfdcompError
from mfdcomp.imagegen import DEFAULT_MIX

__all__ = ["KIND_MIXES", "SEED", "Image", "ensure_image"]

# What each data kind is, as a gen-image mix. zero90 is the "90 %-zero image"
# of the targets: the default mix's other kinds in the default's proportions.
KIND_MIXES = {
    "zero": "zero=100",
    "text": "text=100",
    "random": "random=100",
    "half": "half=100",
    "mixed": DEFAULT_MIX,
    "zero90": "zero=90,text=4,random=3,half=3",
}
SEED = 1


@dataclass(frozen=True)
class Image:
    kind: str
    mix: str
    size: int
    seed: int
    path: str
    sha256: str
    counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensure_image(folder: Path, kind: str, size: int) -> Image:
    """The image of ``kind`` and ``size`` in ``folder``: reused when its record says it is that image."""
    mix = KIND_MIXES[kind]
    path = folder / f"{kind}-{size}.img"
    record = path.with_suffix(".json")
    if path.is_file() and record.is_file() and path.stat().st_size == size:
        try:
            known = Image(**json.loads(record.read_text()))
        except (ValueError, TypeError):
            known = None
        if known is not None and (known.mix, known.size, known.seed, known.path) == (mix, size, SEED, str(path)):
            return known
    record.unlink(missing_ok=True)  # a record is written only for a finished image
    done = subprocess.run(
        [*MFDCOMP, "gen-image", str(path), "--size", str(size), "--mix", mix, "--seed", str(SEED), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise MfdcompError(f"gen-image of the {kind} image failed: {done.stderr.strip()}")
    # On disk before any timing: the writeback of a fresh image would slow the runs that follow.
    with path.open("rb") as written:
        os.fsync(written.fileno())
    stats = json.loads(done.stdout)
    image = Image(kind, mix, size, SEED, str(path), stats["sha256"], stats["counts"])
    record.write_text(json.dumps(image.as_dict(), indent=2))
    return image

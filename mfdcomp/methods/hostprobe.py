"""Small pieces for codec probes: finding a vendor library, reading sysfs.

Nothing here loads anything at import time; ``ctypes`` is imported inside
the default loader, which a probe calls (tests pass their own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

Loader = Callable[[str], object]
Finder = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a probe looked for: whether it is there, and a sentence saying so."""

    found: bool
    detail: str
    name: str | None = None


def dlopen(name: str) -> object:
    import ctypes  # here, not at import time: importing a plugin loads nothing

    return ctypes.CDLL(name)


def ld_cache(stem: str) -> str | None:
    import ctypes.util

    return ctypes.util.find_library(stem)


def find_library(
    stem: str, names: Sequence[str], symbols: Sequence[str], load: Loader = dlopen, find: Finder = ld_cache
) -> Finding:
    """The first of the loader cache's answer and ``names`` that loads and exports ``symbols``."""
    candidates = list(dict.fromkeys([n for n in (find(stem),) if n] + list(names)))
    problems: list[str] = []
    for name in candidates:
        try:
            library = load(name)
        except OSError as exc:
            # A missing file is the common case and says nothing more than "not found".
            if "No such file" not in str(exc):
                problems.append(f"{name} does not load: {exc}")
            continue
        missing = [s for s in symbols if not hasattr(library, s)]
        if missing:
            problems.append(f"{name} lacks {', '.join(missing)}")
            continue
        return Finding(True, f"{name} loads", name)
    tried = ", ".join(candidates)
    return Finding(False, "; ".join(problems) if problems else f"lib{stem} not found (tried {tried})")


def read_text(path: Path) -> str:
    """A sysfs attribute's text, stripped; empty when it cannot be read."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""

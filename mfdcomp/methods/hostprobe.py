"""Small pieces for codec probes: finding a vendor library, reading sysfs.

Nothing here loads anything at import time; ``ctypes`` is imported inside
the default loader, which a probe calls (tests pass their own), and inside
:func:`library_candidates`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
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


# ---------------------------------------------------------------------------------------------------
# A vendor library that a plugin loads itself: ``$ENV_VAR``, else the loader cache, else a private build


def library_candidates(env_var: str, stem: str, private_lib: Path, origin: str) -> list[tuple[str, str]]:
    """(path or soname, where it came from), in the order to try.

    ``$env_var`` when set is the only candidate; else ``lib<stem>`` as the loader's cache knows it, then
    ``private_lib`` (the private build's file) when it exists, said to come from ``origin``.
    """
    forced = os.environ.get(env_var)
    if forced:
        return [(forced, f"${env_var}")]
    import ctypes.util  # here: importing a plugin must not import ctypes

    found: list[tuple[str, str]] = []
    system = ctypes.util.find_library(stem)
    if system:
        found.append((system, "the system's loader cache"))
    if private_lib.exists():
        found.append((str(private_lib), origin))
    return found


def header_root(private_include: Path, relative: str) -> Path | None:
    """The first include folder holding ``relative`` (the private build's, then the system's), or None."""
    for root in (private_include, Path("/usr/include"), Path("/usr/local/include")):
        if (root / relative).exists():
            return root
    return None


def load_first(
    candidates: Sequence[tuple[str, str]], load: Callable[[str], T], what: str, none_found: str
) -> tuple[T | None, str]:
    """The first candidate that ``load`` accepts, and where it came from; else None and why.

    ``load`` raises OSError or AttributeError for a file that is not ``what``; ``none_found`` is the
    reason when there was no candidate at all.
    """
    failures: list[str] = []
    for path, origin in candidates:
        try:
            return load(path), origin
        except (OSError, AttributeError) as exc:
            failures.append(f"{path} ({origin}) does not load as {what}: {exc}")
    if not failures:
        return None, none_found
    return None, "; ".join(failures)

"""Where libqpl is looked for (nothing here loads it).

Search order, the first that exists wins:

1. ``$MFDCOMP_QPL_LIB``: the path of a ``libqpl.so.1``; when set, the only candidate.
2. The host's own libqpl, as the loader's cache knows it (an IAA host usually has one).
3. The private build :data:`PRIVATE_PREFIX`: ``ci/system/qpl.sh`` builds QPL there from the
   team's upstream tarball when the host has none; the script reads the path from this module.
"""

from __future__ import annotations

from pathlib import Path

from mfdcomp.methods.hostprobe import header_root, library_candidates

PRIVATE_PREFIX = "/opt/mfdcomp/qpl"
ENV_VAR = "MFDCOMP_QPL_LIB"
SONAME = "libqpl.so.1"


def candidates() -> list[tuple[str, str]]:
    """(path or soname, where it came from), in the order to try."""
    private = Path(PRIVATE_PREFIX) / "lib" / SONAME
    return library_candidates(ENV_VAR, "qpl", private, f"the private build in {PRIVATE_PREFIX} (ci/system/qpl.sh)")


def header() -> Path | None:
    """The ``qpl/qpl.h`` that goes with the library found, for the layout test."""
    return header_root(Path(PRIVATE_PREFIX) / "include", "qpl/qpl.h")

"""Where libqpl is looked for (nothing here loads it).

Search order, the first that exists wins:

1. ``$MFDCOMP_QPL_LIB``: the path of a ``libqpl.so.1``; when set, the only candidate.
2. The host's own libqpl, as the loader's cache knows it (an IAA host usually has one).
3. The private build :data:`PRIVATE_PREFIX`: ``ci/system/qpl.sh`` builds QPL there from the
   team's upstream tarball when the host has none; the script reads the path from this module.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_PREFIX = "/opt/mfdcomp/qpl"
ENV_VAR = "MFDCOMP_QPL_LIB"
SONAME = "libqpl.so.1"


def candidates() -> list[tuple[str, str]]:
    """(path or soname, where it came from), in the order to try."""
    forced = os.environ.get(ENV_VAR)
    if forced:
        return [(forced, f"${ENV_VAR}")]
    import ctypes.util  # here: importing the plugin must not import ctypes

    found: list[tuple[str, str]] = []
    system = ctypes.util.find_library("qpl")
    if system:
        found.append((system, "the system's loader cache"))
    private = Path(PRIVATE_PREFIX) / "lib" / SONAME
    if private.exists():
        found.append((str(private), f"the private build in {PRIVATE_PREFIX} (ci/system/qpl.sh)"))
    return found


def header() -> Path | None:
    """The ``qpl/qpl.h`` that goes with the library found, for the layout test."""
    for root in (Path(PRIVATE_PREFIX) / "include", Path("/usr/include"), Path("/usr/local/include")):
        if (root / "qpl" / "qpl.h").exists():
            return root
    return None

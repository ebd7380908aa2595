"""Where libwd_comp is looked for (nothing here loads it).

Search order, the first that exists wins:

1. ``$MFDCOMP_UADK_LIB``: the path of a ``libwd_comp.so.2``; when set, the only candidate.
2. The host's own libwd_comp, as the loader's cache knows it (a Kunpeng host usually has one).
3. The private build :data:`PRIVATE_PREFIX`: ``ci/system/uadk.sh`` builds UADK there from the
   team's upstream tarball when the host has none; the script reads the path from this module.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_PREFIX = "/opt/mfdcomp/uadk"
ENV_VAR = "MFDCOMP_UADK_LIB"
SONAME = "libwd_comp.so.2"
# libwd_comp needs libwd's symbols; loaded first, from the same folder, globally.
DEPENDENCY = "libwd.so.2"


def candidates() -> list[tuple[str, str]]:
    """(path or soname, where it came from), in the order to try."""
    forced = os.environ.get(ENV_VAR)
    if forced:
        return [(forced, f"${ENV_VAR}")]
    import ctypes.util  # here: importing the plugin must not import ctypes

    found: list[tuple[str, str]] = []
    system = ctypes.util.find_library("wd_comp")
    if system:
        found.append((system, "the system's loader cache"))
    private = Path(PRIVATE_PREFIX) / "lib" / SONAME
    if private.exists():
        found.append((str(private), f"the private build in {PRIVATE_PREFIX} (ci/system/uadk.sh)"))
    return found


def header() -> Path | None:
    """The include folder holding ``uadk/wd_comp.h``, for the layout test."""
    for root in (Path(PRIVATE_PREFIX) / "include", Path("/usr/include"), Path("/usr/local/include")):
        if (root / "uadk" / "wd_comp.h").exists():
            return root
    return None

"""Where libwd_comp is looked for (nothing here loads it).

Search order, the first that exists wins:

1. ``$MFDCOMP_UADK_LIB``: the path of a ``libwd_comp.so.2``; when set, the only candidate.
2. The host's own libwd_comp, as the loader's cache knows it (a Kunpeng host usually has one).
3. The private build :data:`PRIVATE_PREFIX`: ``ci/system/uadk.sh`` builds UADK there from the
   team's upstream tarball when the host has none; the script reads the path from this module.
"""

from __future__ import annotations

from pathlib import Path

from mfdcomp.methods.hostprobe import header_root, library_candidates

PRIVATE_PREFIX = "/opt/mfdcomp/uadk"
ENV_VAR = "MFDCOMP_UADK_LIB"
SONAME = "libwd_comp.so.2"
# libwd_comp needs libwd's symbols; loaded first, from the same folder, globally.
DEPENDENCY = "libwd.so.2"


def candidates() -> list[tuple[str, str]]:
    """(path or soname, where it came from), in the order to try."""
    private = Path(PRIVATE_PREFIX) / "lib" / SONAME
    return library_candidates(ENV_VAR, "wd_comp", private, f"the private build in {PRIVATE_PREFIX} (ci/system/uadk.sh)")


def header() -> Path | None:
    """The include folder holding ``uadk/wd_comp.h``, for the layout test."""
    return header_root(Path(PRIVATE_PREFIX) / "include", "uadk/wd_comp.h")

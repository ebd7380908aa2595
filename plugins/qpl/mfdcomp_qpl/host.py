"""What this host offers the QPL codec: libqpl's two paths, and Intel IAA work queues.

Nothing here runs at import time: libqpl is loaded only inside
:func:`probe_host`, which the codec calls once from its probe(). The
hardware path is available when libqpl initialises a ``qpl_path_hardware``
job; without IAA that returns 501 or 503, and the probe reason carries the
status, what it means and what sysfs shows.

Which implementation writes the software path can be forced with
``MFDCOMP_QPL_IMPL``: ``libqpl`` (fail rather than fall back), ``isal`` (the
ISA-L writer) or ``zlib`` (the zlib writer; libqpl is never loaded for
either); unset, the fastest that runs: libqpl when it loads, else ISA-L when
python-isal imports, else zlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mfdcomp.methods import CodecPath, PathProbe
from mfdcomp.methods import deflate as libs
from mfdcomp.methods.deflate import Deflate
from mfdcomp.methods.hostprobe import Finding, load_first
from mfdcomp.methods.impls import Implementations
from mfdcomp_qpl import locate

# The IAA sysfs reading lives with the doctor's, so the probe and the doctor read the work queues alike.
from mfdcomp_qpl.diagnosis import find_iaa

if TYPE_CHECKING:
    from mfdcomp_qpl.binding import Library

IMPL_ENV = "MFDCOMP_QPL_IMPL"
IMPL_LIBQPL = "libqpl"
IMPL_ISAL = libs.ISAL
IMPL_ZLIB = libs.ZLIB
IMPLEMENTATIONS = (IMPL_LIBQPL, IMPL_ISAL, IMPL_ZLIB)
QPL_IMPLS = Implementations(env=IMPL_ENV, names=IMPLEMENTATIONS)


WRITERS = {
    IMPL_ZLIB: "zlib writer: raw deflate per page from zlib (level 1, 4 KiB window), the same wire format",
    IMPL_ISAL: "ISA-L writer: raw deflate per page from ISA-L (level 1, 4 KiB window), the same wire format",
}


@dataclass(frozen=True, slots=True)
class HostProbe:
    """The two PathProbes, and libqpl when it loaded (the codec's channels use it), else the deflate writer."""

    probes: list[PathProbe]
    library: Library | None
    writer: Deflate = libs.STDLIB


def chosen_implementation(forced: str | None = None) -> str | None:
    """``libqpl``, ``isal``, ``zlib`` or None (whichever works); a ValueError for anything else."""
    return QPL_IMPLS.forced(forced)


def load_library() -> tuple[Library | None, str]:
    """The first candidate of :mod:`mfdcomp_qpl.locate` that loads as libqpl, and where it came from (or why none)."""
    from mfdcomp_qpl.binding import Library  # ctypes only now, at probe time

    none = f"libqpl not found (no ${locate.ENV_VAR}, none in the loader cache, no {locate.PRIVATE_PREFIX})"
    return load_first(locate.candidates(), Library, "libqpl", none)


def probe_host(root: Path = Path("/"), impl: str | None = None) -> HostProbe:
    """One PathProbe per QPL path (hardware, then software), and the library they drive."""
    device = find_iaa(root)
    try:
        chosen = chosen_implementation(impl)
    except ValueError as exc:
        return HostProbe(
            [PathProbe(CodecPath.HARDWARE, False, str(exc)), PathProbe(CodecPath.SOFTWARE, False, str(exc))], None
        )
    if chosen in (IMPL_ZLIB, IMPL_ISAL):
        writer = libs.named(chosen)
        if not isinstance(writer, Deflate):
            why = f"{IMPL_ENV}={chosen} but {writer}"
            hardware = PathProbe(CodecPath.HARDWARE, False, f"{why}; {device.detail}")
            return HostProbe([hardware, PathProbe(CodecPath.SOFTWARE, False, why, chosen)], None)
        why = f"{IMPL_ENV}={chosen}: libqpl is not loaded"
        return HostProbe(_without_library(why, device, writer), None, writer)
    library, origin = load_library()
    if library is None:
        if chosen == IMPL_LIBQPL:
            why = f"{IMPL_ENV}=libqpl but {origin}"
            hardware = PathProbe(CodecPath.HARDWARE, False, f"{why}; {device.detail}")
            return HostProbe([hardware, PathProbe(CodecPath.SOFTWARE, False, why)], None)
        writer = libs.fastest()  # ISA-L when python-isal imports
        return HostProbe(_without_library(origin, device, writer), None, writer)
    return HostProbe(_with_library(library, origin, device), library)


def _without_library(why: str, device: Finding, writer: Deflate) -> list[PathProbe]:
    return [
        PathProbe(CodecPath.HARDWARE, False, f"needs libqpl, which is not loaded ({why}); {device.detail}", "libqpl"),
        PathProbe(CodecPath.SOFTWARE, True, f"{WRITERS[writer.name]} ({why})", writer.name, writer.version),
    ]


def _with_library(library: Library, origin: str, device: Finding) -> list[PathProbe]:
    from mfdcomp_qpl.binding import INIT_MEANINGS, PATH_HARDWARE, PATH_SOFTWARE, JobInitError

    name = f"libqpl {library.version or '(version unknown)'}"
    try:
        library.job(PATH_HARDWARE).close()
    except JobInitError as exc:
        meaning = INIT_MEANINGS.get(exc.status, "see qpl/c_api/status.h")
        hardware = PathProbe(
            CodecPath.HARDWARE, False, f"{exc}: {meaning}; {device.detail}", library.path, library.version
        )
    else:
        hardware = PathProbe(
            CodecPath.HARDWARE,
            True,
            f"{name} initialised a qpl_path_hardware job; {device.detail}",
            library.path,
            library.version,
        )
    try:
        library.job(PATH_SOFTWARE).close()
    except JobInitError as exc:
        software = PathProbe(CodecPath.SOFTWARE, False, str(exc), library.path, library.version)
    else:
        software = PathProbe(
            CodecPath.SOFTWARE,
            True,
            f"{name} qpl_path_software from {origin}: fixed-Huffman raw deflate per page, level 1",
            library.path,
            library.version,
        )
    return [hardware, software]

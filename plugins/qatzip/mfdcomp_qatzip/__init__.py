"""mfdcomp-qatzip: the QATzip codec (QEMU multifd flag 0x20) as an mfdcomp plugin.

Importing this package loads no library: libqatzip is looked for and loaded
the first time the codec is probed (see :mod:`mfdcomp_qatzip.locate` for where).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mfdcomp_qatzip.codec import QATZIP_INFO, QatzipCodec, QatzipMethods

if TYPE_CHECKING:
    from mfdcomp.diagnosis import DoctorSection, Identity
    from mfdcomp.methods import PathProbe

__all__ = ["QATZIP_INFO", "QatzipCodec", "QatzipMethods", "mfdcomp_doctor", "mfdcomp_methods"]


def mfdcomp_methods() -> list[QatzipCodec]:
    """Hook implementation (entry point group ``mfdcomp.methods``)."""
    return [QatzipCodec()]


def mfdcomp_doctor(
    root: Path, identity: Identity, memlock: int | None, probes: Mapping[str, Sequence[PathProbe]]
) -> list[DoctorSection]:
    """Hook implementation for ``mfdcomp doctor``: the Intel QAT section (devices, drivers, nodes, libraries)."""
    from mfdcomp_qatzip.diagnosis import doctor_sections  # only when the doctor runs

    return doctor_sections(root, identity, memlock, probes.get("qatzip", ()))

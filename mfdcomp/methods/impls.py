"""Which implementation of its wire format a codec runs: the fastest one installed, or the one a variable forces.

A codec with several implementations of one wire format (libqpl, ISA-L and
zlib all write qpl's per-page raw deflate) lists them fastest first in an
:class:`Implementations`; ``MFDCOMP_<CODEC>_IMPL`` (or the codec's ``impl``
argument) forces one, and a forced one that cannot run is an error rather
than a silent fallback. The codec object says what it chose through its
``implementation`` attribute, which ``mfdcomp codecs`` shows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Implementations:
    """A codec's implementations, fastest first, and the environment variable that forces one."""

    env: str
    names: tuple[str, ...]

    def forced(self, override: str | None = None) -> str | None:
        """The implementation forced by ``override`` or the variable; None when neither is set.

        A ValueError names the variable and the choices for anything else.
        """
        value = override if override is not None else os.environ.get(self.env, "")
        if not value:
            return None
        if value not in self.names:
            raise ValueError(f"{self.env}={value!r} is not one of {', '.join(self.names)}")
        return value


@runtime_checkable
class ChoosesImplementation(Protocol):
    """A codec that says which of its :class:`Implementations` it runs (after probing)."""

    impls: Implementations

    @property
    def implementation(self) -> str | None:
        """The implementation its channels use, None when none can run."""

    def implementations(self) -> Mapping[str, object]:
        """The other implementations that can run here, by label."""

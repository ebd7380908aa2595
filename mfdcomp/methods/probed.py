"""A base for codecs whose paths depend on the host: one probe, cached, and path checks."""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence

from mfdcomp.errors import CodecError
from mfdcomp.methods.contract import CodecInfo, CodecPath, PathProbe


class ProbedCodec(abc.ABC):
    """Probes once (the first caller does, under a lock) and answers from the cache after."""

    info: CodecInfo

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._probes: tuple[PathProbe, ...] | None = None  # under _lock

    @abc.abstractmethod
    def _probe(self) -> Sequence[PathProbe]:
        """Look at the host: the only place a vendor library may be loaded."""

    def probe(self) -> list[PathProbe]:
        with self._lock:
            if self._probes is None:
                self._probes = tuple(self._probe())
            return list(self._probes)

    def require_path(self, path: CodecPath) -> PathProbe:
        """The probe of ``path``; a CodecError saying why when the codec lacks it or it cannot run here."""
        found = next((p for p in self.probe() if p.path is path), None)
        if found is None:
            raise CodecError(f"codec {self.info.name} has no {path} path (it has {', '.join(self.info.paths)})")
        if not found.available:
            raise CodecError(f"the {self.info.name} {path} path cannot run here: {found.reason}")
        return found

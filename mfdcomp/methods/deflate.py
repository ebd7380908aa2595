"""Deflate libraries for the codecs whose wire format is deflate: ISA-L (python-isal) and Python's zlib.

``isal.isal_zlib`` mirrors the zlib module (compressobj/decompressobj,
wbits, Z_SYNC_FLUSH) on ISA-L's SIMD deflate: about 6x zlib's level-1
compression and 2x its inflate on mixed pages, at a somewhat larger output
(0.56 against 0.52 at level 1). Its output is standard deflate, so any
inflate (QEMU's zlib included) reads it, and it reads any deflate.

ISA-L has levels 0-3 and no stored mode, so a zlib level maps to it as
:func:`isal_level` says; zlib level 0 (stored blocks) stays with zlib.

Importing this module imports isal only when :func:`isal` is first called.
"""

from __future__ import annotations

import functools
import importlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from typing_extensions import Buffer

ISAL = "isal"
ZLIB = "zlib"


class Compressor(Protocol):
    def compress(self, data: Buffer, /) -> bytes: ...

    def flush(self, mode: int = ..., /) -> bytes: ...


class Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: Buffer, /, max_length: int = ...) -> bytes: ...


def isal_level(level: int) -> int:
    """The ISA-L level for a zlib level 1-9: 1 -> 1, 2-5 -> 2, 6-9 -> 3.

    Measured on mixed pages (64 MiB, 512 KiB packets): ISA-L 1 gives ratio
    0.558 at 610 MB/s (zlib 1: 0.520, 96 MB/s), ISA-L 2 0.546 at 600 MB/s
    (zlib 2-5: 0.514-0.491), ISA-L 3 0.504 at 370 MB/s (zlib 6-9: 0.488-0.487,
    33-48 MB/s): each band gets ISA-L's level nearest in ratio. ISA-L 0 is no
    faster than 1 there and compresses less, so nothing maps to it.
    """
    if not 1 <= level <= 9:
        raise ValueError(f"zlib level {level} has no ISA-L level (1-9 do; 0 means stored, which ISA-L lacks)")
    return 1 if level == 1 else 2 if level <= 5 else 3


@dataclass(frozen=True, slots=True)
class Deflate:
    """One deflate library: its name and version, its zlib-like calls, the level it runs for a zlib level."""

    name: str
    version: str
    module: Any  # zlib or isal.isal_zlib: the same functions
    error: type[Exception]
    level_of: Callable[[int], int]

    def compressobj(self, level: int, wbits: int = zlib.MAX_WBITS) -> Compressor:
        """A deflate stream at zlib ``level`` (mapped to this library's), windowBits ``wbits``, memLevel 8."""
        stream: Compressor = self.module.compressobj(self.level_of(level), zlib.DEFLATED, wbits)
        return stream

    def decompressobj(self, wbits: int = zlib.MAX_WBITS) -> Decompressor:
        stream: Decompressor = self.module.decompressobj(wbits)
        return stream

    def compress(self, data: Buffer, level: int, wbits: int) -> bytes:
        """One complete stream of ``data``."""
        out: bytes = self.module.compress(data, self.level_of(level), wbits)
        return out

    def decompress(self, data: Buffer, wbits: int, bufsize: int) -> bytes:
        """One complete stream of ``data``, decoded (``bufsize``: the expected size, a hint)."""
        out: bytes = self.module.decompress(data, wbits, bufsize)
        return out

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


STDLIB = Deflate(ZLIB, zlib.ZLIB_RUNTIME_VERSION, zlib, zlib.error, lambda level: level)


@functools.cache
def isal() -> Deflate | str:
    """ISA-L through python-isal, or why it cannot be used (imported on the first call only)."""
    try:
        module = importlib.import_module("isal.isal_zlib")
        version = str(importlib.import_module("isal").__version__)
    except ImportError as exc:
        return f"python-isal is not installed ({exc})"
    return Deflate(ISAL, version, module, module.error, isal_level)


def fastest() -> Deflate:
    """ISA-L when python-isal imports, else zlib."""
    found = isal()
    return found if isinstance(found, Deflate) else STDLIB


def named(name: str) -> Deflate | str:
    """The library called ``name`` (``isal`` or ``zlib``), or why it cannot be used."""
    if name == ZLIB:
        return STDLIB
    if name == ISAL:
        return isal()
    return f"no deflate library called {name!r} (isal, zlib)"

"""Which implementation of the per-packet hot paths runs: the compiled extension or pure Python.

``mfdcomp._speedups`` (mfdcomp/_speedups.c) is built by pip at install where a C
compiler and Python's headers are there; otherwise, or with
MFDCOMP_PURE_PYTHON=1 in the environment, the pure-Python code runs. The pure
path is the reference: tests run both and a differential fuzz test demands the
same outcome of each. ``mfdcomp doctor`` reports :func:`status`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from types import ModuleType

__all__ = ["ENV", "compiled", "load", "status"]

ENV = "MFDCOMP_PURE_PYTHON"


def load(environ: Mapping[str, str] = os.environ) -> tuple[ModuleType | None, str]:
    """The compiled module (or None) and a sentence saying which path runs and why."""
    if environ.get(ENV, "") not in ("", "0"):
        return None, f"pure Python ({ENV}={environ[ENV]} forces it)"
    try:
        module = importlib.import_module("mfdcomp._speedups")
    except ImportError as exc:
        return None, f"pure Python (the compiled mfdcomp._speedups is not built here: {exc})"
    # The page hashing's instruction set is picked when the module loads (mfdcomp/_xxh3_pages.h).
    return module, f"compiled (mfdcomp._speedups, {module.__file__}; page hashing: {module.xxh3_build()})"


# Decided once per process: the hot paths test this module attribute, not the environment, per call.
_MODULE, _STATUS = load()


def compiled() -> ModuleType | None:
    """The compiled module this process uses, or None for the pure-Python path."""
    return _MODULE


def status() -> str:
    return _STATUS

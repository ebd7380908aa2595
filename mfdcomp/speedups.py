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

__all__ = ["ENV", "bind_tls", "compiled", "import_compiled", "load", "status"]

ENV = "MFDCOMP_PURE_PYTHON"


def import_compiled(name: str, environ: Mapping[str, str] = os.environ) -> ModuleType | str:
    """The compiled module ``name``, or why the pure path runs instead (ENV set, or the module not built).

    Plugins with an extension of their own (the zstd plugin's) ask here too, so one switch turns every
    compiled path off.
    """
    if environ.get(ENV, "") not in ("", "0"):
        return f"{ENV}={environ[ENV]} forces it"
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        return f"the compiled {name} is not built here: {exc}"


def load(environ: Mapping[str, str] = os.environ) -> tuple[ModuleType | None, str]:
    """The compiled module (or None) and a sentence saying which path runs and why."""
    module = import_compiled("mfdcomp._speedups", environ)
    if isinstance(module, str):
        return None, f"pure Python ({module})"
    # The page hashing's instruction set is picked when the module loads (mfdcomp/_xxh3_pages.h).
    return module, f"compiled (mfdcomp._speedups, {module.__file__}; page hashing: {module.xxh3_build()})"


# Decided once per process: the hot paths test this module attribute, not the environment, per call.
_MODULE, _STATUS = load()


def compiled() -> ModuleType | None:
    """The compiled module this process uses, or None for the pure-Python path."""
    return _MODULE


def status() -> str:
    return _STATUS


_TLS: list[str | None] = []  # bind_tls's answer, once given


def bind_tls() -> str | None:
    """None when the compiled loops may read TLS sessions themselves, else why not (mfdcomp/_tlsdirect.c).

    They call the OpenSSL that Python's ssl module loaded, found from the _ssl module's file (bound once).
    """
    if not _TLS:
        if _MODULE is None:
            _TLS.append(_STATUS)
        else:
            import _ssl  # the C module behind ssl: its file is the one linked to that OpenSSL

            _TLS.append(_MODULE.tls_bind(getattr(_ssl, "__file__", None)))
    return _TLS[0]

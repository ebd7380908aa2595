"""The optional compiled hot paths (mfdcomp/_speedups.c); everything else is in pyproject.toml.

The extension is optional: without a C compiler or Python's headers the
install goes on with a warning, and mfdcomp runs its pure-Python path
(``mfdcomp doctor`` says which one is in use).
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing the install when the extension cannot be built."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all: setuptools raises before build_extension
            _warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # a compiler that fails (no Python.h, say)
            _warn(exc)


def _warn(exc: Exception) -> None:
    print(
        f"WARNING: mfdcomp._speedups not built ({exc}); mfdcomp will use its pure-Python path",
        file=sys.stderr,
    )


setup(
    ext_modules=[
        Extension(
            "mfdcomp._speedups",
            [
                "mfdcomp/_speedups.c",
                # A nocomp destination channel's packets, read and stored without the GIL.
                "mfdcomp/_recvloop.c",
                # A nocomp source channel's packet, scanned, written and hashed without the GIL.
                "mfdcomp/_sendloop.c",
                # TLS sessions read by those loops through the OpenSSL that Python's ssl loaded.
                "mfdcomp/_tlsdirect.c",
                # XXH3 page hashing, one build per instruction set, picked at load (mfdcomp/_xxh3_pages.h).
                "mfdcomp/_xxh3_default.c",
                "mfdcomp/_xxh3_avx2.c",
                "mfdcomp/_xxh3_avx512.c",
            ],
            depends=["mfdcomp/_vendor/xxhash.h", "mfdcomp/_xxh3_pages.h", "mfdcomp/_speedups.h"],
            extra_compile_args=["-O3", "-std=c11"],
            libraries=["dl"],  # dlopen (in libc itself since glibc 2.34)
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)

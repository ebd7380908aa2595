"""The optional compiled zstd streams (mfdcomp_zstd/_zstdpages.c, on the system's libzstd); the rest: pyproject.toml.

Without a C compiler, Python's headers or libzstd's (Debian: libzstd-dev) the
install goes on with a warning and the codec runs on python-zstandard alone
(``mfdcomp codecs`` / ``mfdcomp doctor`` say which one is in use).
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
        except Exception as exc:  # a compiler that fails (no zstd.h, say)
            _warn(exc)


def _warn(exc: Exception) -> None:
    print(
        f"WARNING: mfdcomp_zstd._zstdpages not built ({exc}); the zstd codec will use python-zstandard",
        file=sys.stderr,
    )


setup(
    ext_modules=[
        Extension(
            "mfdcomp_zstd._zstdpages",
            ["mfdcomp_zstd/_zstdpages.c"],
            libraries=["zstd"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)

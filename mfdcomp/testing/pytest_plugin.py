"""The conformance suite as a pytest plugin (registered through the ``pytest11`` entry point).

In a codec plugin's own tests, one line runs every check against it::

    from mfdcomp.testing.pytest_plugin import conformance_tests

    test_conformance = conformance_tests("lz4")

Without a name, the tests cover every codec chosen with ``--mfdcomp-codec``
(every installed codec when none is chosen). A check that does not concern a
codec is skipped with its reason, shown by ``pytest -rs``; it never passes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mfdcomp.testing.checks import SuiteConfig

# mfdcomp itself is imported only when a conformance test runs: pytest loads
# this plugin before coverage starts, and a module imported that early would
# show as not covered in the projects that measure it (this one included).
KINDS_DEFAULT = "zero,text,random,half,mixed"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mfdcomp", "mfdcomp codec conformance")
    group.addoption("--mfdcomp-codec", action="append", default=[], metavar="NAME", help="codec to check (repeatable)")
    group.addoption("--mfdcomp-require-hw", action="store_true", help="fail codecs whose hardware path did not run")
    group.addoption("--mfdcomp-channels", default="1,2,4", metavar="N,N", help="channel counts of the round trips")
    group.addoption("--mfdcomp-kinds", default=KINDS_DEFAULT, metavar="K,K", help="data kinds")
    group.addoption("--mfdcomp-size", default="64M", metavar="SIZE", help="image of the throughput check")
    group.addoption("--mfdcomp-vectors", metavar="DIR", help="golden vectors directory (default $MFDCOMP_VECTORS)")


@pytest.fixture(scope="session")
def mfdcomp_config(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SuiteConfig:
    """The suite's configuration from the command line options."""
    from mfdcomp.registry import default_registry
    from mfdcomp.testing.checks import SuiteConfig
    from mfdcomp.units import parse_size

    option = request.config.getoption
    from mfdcomp.testing.checks import PACKAGED_VECTORS  # the shipped vectors when none are named

    vectors = option("--mfdcomp-vectors") or os.environ.get("MFDCOMP_VECTORS")
    registry = default_registry()
    return SuiteConfig(
        workdir=tmp_path_factory.mktemp("mfdcomp-conformance"),
        channels=tuple(int(c) for c in str(option("--mfdcomp-channels")).split(",")),
        kinds=tuple(str(option("--mfdcomp-kinds")).split(",")),
        image_size=parse_size(str(option("--mfdcomp-size"))),
        require_hw=bool(option("--mfdcomp-require-hw")),
        vectors=Path(vectors) if vectors else PACKAGED_VECTORS,
        others=lambda: list(registry.codecs.values()),
    )


def _codec_names(config: pytest.Config) -> list[str]:
    from mfdcomp.registry import default_registry

    chosen: list[str] = config.getoption("--mfdcomp-codec")
    return chosen or sorted(default_registry().codecs)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("mfdcomp_conformance")
    if marker is None:
        return
    from mfdcomp.testing.checks import CHECKS

    names = list(marker.args) or _codec_names(metafunc.config)
    metafunc.parametrize("mfdcomp_codec_name", names)
    metafunc.parametrize("mfdcomp_check", list(CHECKS))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mfdcomp_conformance(*codecs): run mfdcomp's conformance checks")


def conformance_tests(*codecs: str) -> Callable[..., None]:
    """A test function running every check against ``codecs`` (the chosen or installed ones when empty)."""

    @pytest.mark.mfdcomp_conformance(*codecs)
    def test_mfdcomp_conformance(mfdcomp_codec_name: str, mfdcomp_check: str, mfdcomp_config: SuiteConfig) -> None:
        from mfdcomp.registry import default_registry
        from mfdcomp.testing.suite import Status, run_check

        registry = default_registry()
        if mfdcomp_codec_name not in registry.codecs:
            broken = [p for p in registry.plugins if p.name == mfdcomp_codec_name and not p.ok]
            reason = "; ".join(broken[0].errors) if broken else "it is not registered (is its package installed?)"
            pytest.fail(f"codec {mfdcomp_codec_name!r} cannot be checked: {reason}")
        result = run_check(registry.codecs[mfdcomp_codec_name], mfdcomp_check, mfdcomp_config)
        if result.status is Status.NOT_APPLICABLE:
            pytest.skip(f"not applicable to {mfdcomp_codec_name}: {result.detail}")
        if result.status is Status.NOT_RUN:
            pytest.skip(f"not run for {mfdcomp_codec_name}: {result.detail}")
        if result.status is Status.FAILED:
            pytest.fail(result.detail, pytrace=False)
        _record(mfdcomp_codec_name, mfdcomp_check, result.notes)

    return test_mfdcomp_conformance


def _record(codec: str, check: str, notes: dict[str, Any]) -> None:
    """Numbers worth seeing go to the captured output of the test (``pytest -rP`` shows them)."""
    if notes:
        print(f"{codec} {check}: {notes}")

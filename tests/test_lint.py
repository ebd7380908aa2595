"""The package and its plugins stay mypy --strict and ruff clean (as the project promises)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_PACKAGES = sorted(
    str(p.relative_to(ROOT)) for p in ROOT.glob("plugins/*/mfdcomp_*") if (p / "__init__.py").exists()
)
SOURCES = ["mfdcomp", *PLUGIN_PACKAGES]


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "mypy", *SOURCES],
        [sys.executable, "-m", "ruff", "check", *SOURCES, "tests", "benchmarks", "scripts"],
        [sys.executable, "-m", "ruff", "format", "--check", *SOURCES, "tests", "benchmarks", "scripts"],
    ],
    ids=["mypy-strict", "ruff-check", "ruff-format"],
)
def test_static_checks(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

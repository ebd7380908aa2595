"""The package stays mypy --strict and ruff clean (as the project promises)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "mypy", "mfdcomp"],
        [sys.executable, "-m", "ruff", "check", "mfdcomp", "tests"],
    ],
    ids=["mypy-strict", "ruff"],
)
def test_static_checks(command: list[str]) -> None:
    assert shutil.which(command[0]) or Path(command[0]).exists()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

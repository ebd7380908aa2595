"""A level option for another codec than the one chosen (`--multifd-compression zstd --multifd-zlib-level 9`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mfdcomp.cli import main
from mfdcomp.cli.common import add_codec_options, chosen_codec
from mfdcomp.errors import CodecError
from mfdcomp.registry import default_registry

CODECS = sorted(default_registry().codecs)
LEVELLED = [name for name in CODECS if default_registry().codecs[name].info.levels is not None]
# Every codec chosen beside every other codec's level option: none included, which has no level of its own.
MISMATCHES = [(chosen, other) for chosen in CODECS for other in LEVELLED if other != chosen]


def send(capsys: pytest.CaptureFixture[str], tmp_path: Path, *options: str) -> tuple[int, str]:
    image = tmp_path / "src.img"
    image.write_bytes(bytes(1 << 16))
    # Nobody listens there: a run that got past the option checks fails to connect instead.
    code = main(["send", str(image), "--to", f"unix:{tmp_path / 'nobody.sock'}", *options])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("chosen", "other"), MISMATCHES, ids=[f"{c}-with-{o}-level" for c, o in MISMATCHES])
def test_send_refuses_another_codecs_level(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, chosen: str, other: str
) -> None:
    code, err = send(capsys, tmp_path, "--multifd-compression", chosen, f"--multifd-{other}-level", "1")
    assert code == 1
    assert err == f"mfdcomp send: error: --multifd-{other}-level applies to {other}, not {chosen}\n"


def test_the_reported_case(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = send(capsys, tmp_path, "--multifd-compression", "zstd", "--multifd-zlib-level", "9")
    assert (code, err) == (1, "mfdcomp send: error: --multifd-zlib-level applies to zlib, not zstd\n")


def test_the_default_codec_none_refuses_a_level(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """No --multifd-compression: none, which no level option applies to."""
    code, err = send(capsys, tmp_path, "--multifd-zstd-level", "3")
    assert (code, err) == (1, "mfdcomp send: error: --multifd-zstd-level applies to zstd, not none\n")


@pytest.mark.parametrize("chosen", LEVELLED)
def test_send_takes_its_own_codecs_level(capsys: pytest.CaptureFixture[str], tmp_path: Path, chosen: str) -> None:
    low, _high = default_registry().codecs[chosen].info.levels or (0, 0)
    code, err = send(capsys, tmp_path, "--multifd-compression", chosen, f"--multifd-{chosen}-level", str(low))
    assert code == 1
    assert "applies to" not in err and "nobody.sock" in err  # past the option checks, to the connection


def test_any_command_with_the_codec_options_refuses_them(tmp_path: Path) -> None:
    """The check lives in chosen_codec, so every command built on add_codec_options has it (not only send)."""
    parser = argparse.ArgumentParser()
    add_codec_options(parser)
    args = parser.parse_args(["--multifd-compression", "zlib", "--multifd-zstd-level", "5"])
    with pytest.raises(CodecError, match=r"^--multifd-zstd-level applies to zstd, not zlib$"):
        chosen_codec(args)
    codec, level = chosen_codec(parser.parse_args(["--multifd-compression", "zlib", "--multifd-zlib-level", "5"]))
    assert (codec.info.name, level) == ("zlib", 5)

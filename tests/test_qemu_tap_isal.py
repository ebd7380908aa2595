"""A real QEMU destination takes ISA-L's zlib stream: `mfdcomp tap --transcode zlib` between two real QEMUs.

The source QEMU sends nocomp; the tap re-encodes every packet with the zlib
codec's default library (ISA-L where python-isal imports) or the one
MFDCOMP_ZLIB_IMPL forces, and QEMU 10's zlib receiver (stock zlib inflate)
must load the guest. Which library wrote the stream is read off the bytes:
ISA-L's zlib header is 78 5e, stdlib zlib's at level 1 is 78 01.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mfdcomp.methods import deflate as libs
from mfdcomp.qemu.harness import MiB, MigrationPair, MigrationSettings
from mfdcomp.qemu.locate import system_qemu
from mfdcomp.wire import ReceiverLimits
from mfdcomp.wire.reader import ChannelReader, RamData

MFDCOMP = [sys.executable, "-m", "mfdcomp"]
HEADERS = {"isal": b"\x78\x5e", "zlib": b"\x78\x01"}
HAS_ISAL = isinstance(libs.isal(), libs.Deflate)


def _first_payload(channel_file: Path) -> bytes:
    reader = ChannelReader(ReceiverLimits(page_size=4096))
    reader.feed(memoryview(channel_file.read_bytes()))
    reader.feed_eof()
    return next(event.payload for event in reader if isinstance(event, RamData) and event.payload)


def _inspect_sha256(directory: Path, image: Path) -> str:
    files = sorted(str(p) for p in directory.glob("*.bin"))
    command = [*MFDCOMP, "inspect", *files, "--replay", str(image), "--block", "ram0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1].split()[1]


@pytest.mark.parametrize(
    "forced",
    [
        pytest.param("", id="default", marks=pytest.mark.skipif(not HAS_ISAL, reason="python-isal is not installed")),
        pytest.param("isal", marks=pytest.mark.skipif(not HAS_ISAL, reason="python-isal is not installed")),
        "zlib",
    ],
)
def test_qemu_zlib_destination_takes_the_tap_stream(forced: str, tmp_path: Path) -> None:
    library = forced or "isal"  # the default is the fastest installed
    record = tmp_path / "capture"
    env = {k: v for k, v in os.environ.items() if k != "MFDCOMP_ZLIB_IMPL"} | {"MFDCOMP_ZLIB_IMPL": forced}
    qemu = system_qemu()
    with MigrationPair(
        qemu,
        qemu,
        MigrationSettings(codec="none", channels=2),
        MigrationSettings(codec="zlib", channels=2),
        ram_size=32 * MiB,
    ) as pair:
        command = [*MFDCOMP, "tap", "--listen", "tcp:127.0.0.1:0", "--to", pair.listen()]
        command += ["--record", str(record), "--transcode", "zlib", "--json"]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as tap:
            try:
                assert tap.stderr is not None
                banner = tap.stderr.readline()
                match = re.search(r"listening on (tcp:\S+),", banner)
                assert match, banner
                migration = pair.migrate(match.group(1))
                out, err = tap.communicate(timeout=60)
            finally:
                tap.kill()
    assert tap.returncode == 0, err
    assert migration.ram_equal, "QEMU's zlib destination loaded the guest"
    summary = json.loads(out)
    assert summary["error"] is None and summary["transcode"] == "zlib"
    assert summary["totals"]["ratio_out"] < 0.7
    for channel in sorted((record / "transcoded").glob("ch*.bin")):
        assert _first_payload(channel)[:2] == HEADERS[library], f"{channel.name} was not written by {library}"
    assert _inspect_sha256(record / "transcoded", tmp_path / "got.img") == migration.image_sha256

"""``mfdcomp inspect`` on the real QEMU captures (tests/conftest.py picks them), and its errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mfdcomp.cli import main
from mfdcomp.wire import InitPacket, RamPacket

COUNT_FIELDS = ("packets", "sync_packets", "data_packets", "normal_pages", "zero_pages", "payload_bytes")


def manifest(capture: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((capture / "manifest.json").read_text())
    return data


def channel_files(capture: Path) -> list[str]:
    files = sorted(str(p) for p in capture.glob("ch*.bin"))
    assert len(files) == manifest(capture)["channels"]
    return files


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def split_json(out: str) -> tuple[dict[str, Any], str]:
    """The JSON report and the last line (``sha256 <hex>``) of ``inspect --json --replay``."""
    body, last = out.rstrip("\n").rsplit("\n", 1)
    report: dict[str, Any] = json.loads(body)
    return report, last


def console_script() -> str:
    beside = Path(sys.executable).with_name("mfdcomp")
    found = str(beside) if beside.is_file() else shutil.which("mfdcomp")
    if found is None:
        pytest.fail("the mfdcomp console script is not installed (pip install -e .)")
    return found


# --- replay and counts ----------------------------------------------------------------------------------------


def test_replay_prints_the_final_sha256_last(
    capture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "ram0.img"
    code, out, err = run(capsys, *channel_files(capture_dir), "--replay", image, "--block", "ram0", "--size", "8M")
    assert (code, err) == (0, "")
    final = manifest(capture_dir)["ram0"]["final_sha256"]
    assert out.splitlines()[-1] == f"sha256 {final}"
    assert hashlib.sha256(image.read_bytes()).hexdigest() == final
    assert image.stat().st_size == 8 << 20
    # The tables come first: one row per channel, in channel id order.
    rows = [line.split() for line in out.splitlines()[1:3]]
    assert [r[0] for r in rows] == ["0", "1"]


@pytest.mark.parametrize("with_replay", [False, True], ids=["json", "json-replay"])
def test_json_counts_match_the_manifest(
    capture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], with_replay: bool
) -> None:
    replay_args = ["--replay", str(tmp_path / "img"), "--block", "ram0", "--size", "8M"] if with_replay else []
    code, out, _err = run(capsys, *reversed(channel_files(capture_dir)), "--json", *replay_args)
    assert code == 0
    m = manifest(capture_dir)
    if with_replay:
        report, last = split_json(out)
        assert last == f"sha256 {m['ram0']['final_sha256']}" == f"sha256 {report['replay']['sha256']}"
    else:
        report = json.loads(out)
        assert "replay" not in report
    expected = m["multifd_channels"]
    assert [ch["channel_id"] for ch in report["channels"]] == sorted(int(cid) for cid in expected)
    for channel in report["channels"]:
        want = expected[str(channel["channel_id"])]
        assert {f: channel[f] for f in COUNT_FIELDS} == {f: want[f] for f in COUNT_FIELDS}
        assert channel["sync_packets_with_pages"] == want["sync_packets_with_pages"]
        assert channel["uuid"] == want["init"]["uuid"]
        assert Path(channel["file"]).name == want["file"]
    for field in COUNT_FIELDS:
        assert report["totals"][field] == sum(ch[field] for ch in expected.values())
    assert report["main_stream"] is None


def test_json_with_replay_and_main_stream(
    capture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With main.bin: block table checks, image sized from it, legacy zero pages applied (prefilled image)."""
    m = manifest(capture_dir)
    image = tmp_path / "ram0.img"
    image.write_bytes(b"\x5a" * (8 << 20))
    code, out, _err = run(
        capsys, capture_dir / "main.bin", *channel_files(capture_dir), "--json", "--replay", image, "--block", "ram0"
    )
    assert code == 0
    report, last = split_json(out)
    assert last == f"sha256 {m['ram0']['final_sha256']}"
    assert report["replay"]["sha256"] == m["ram0"]["final_sha256"]
    assert report["replay"]["block"] == "ram0" and report["replay"]["size"] == 8 << 20
    main_stream = report["main_stream"]
    assert main_stream["ramblocks"] == {b["name"]: b["used_length"] for b in m["main_channel"]["ramblocks"]}
    assert main_stream["zero_page_records"] == m["main_channel"]["ram_zero_page_records"]
    assert main_stream["machine_type"] == m["main_channel"]["machine_type"]


def test_tables_with_main_stream(capture_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(
        capsys,
        *channel_files(capture_dir),
        capture_dir / "main.bin",
        "--channels",
        "2",
        "--uuid",
        "00000000-0000-0000-0000-000000000000",
    )
    assert code == 0
    assert "ramblock ram0" in out and "main stream main.bin" in out
    blocks = manifest(capture_dir)["ramblocks_in_multifd_packets"]
    for name in blocks:
        assert any(line.split()[0] == name for line in out.splitlines() if line.strip()), name


def test_console_script_in_a_subprocess(capture_dirs: list[Path], tmp_path: Path) -> None:
    capture = next(d for d in capture_dirs if d.name.startswith("q72-"))
    image = tmp_path / "ram0.img"
    done = subprocess.run(
        [
            console_script(),
            "inspect",
            *channel_files(capture),
            "--replay",
            str(image),
            "--block",
            "ram0",
            "--size",
            "8M",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[-1] == f"sha256 {manifest(capture)['ram0']['final_sha256']}"


# --- errors ------------------------------------------------------------------------------------------------------


def expect_error(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    code, _out, err = run(capsys, *argv)
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mfdcomp inspect: error: "), err
    return lines[0]


def test_replay_without_block(capture_dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = expect_error(capsys, *channel_files(capture_dirs[0]), "--replay", tmp_path / "img")
    assert "--block" in line
    assert not (tmp_path / "img").exists()


def test_file_that_is_neither_multifd_nor_main(
    capture_dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x7fELF\x02\x01\x01")
    line = expect_error(capsys, *channel_files(capture_dirs[0]), junk)
    assert str(junk) in line and "7f454c46" in line


def test_no_multifd_file(capture_dirs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    line = expect_error(capsys, capture_dirs[0] / "main.bin")
    assert "no multifd channel" in line


def test_two_main_streams(capture_dirs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    first, second = capture_dirs[0], capture_dirs[-1]
    line = expect_error(capsys, *channel_files(first), first / "main.bin", second / "main.bin")
    assert "more than one main stream" in line


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = expect_error(capsys, tmp_path / "nope.bin")
    assert "cannot read" in line and "nope.bin" in line


def test_broken_main_stream(capture_dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main_bin = tmp_path / "main.bin"
    main_bin.write_bytes((capture_dirs[0] / "main.bin").read_bytes()[:100])
    line = expect_error(capsys, *channel_files(capture_dirs[0]), main_bin)
    assert str(main_bin) in line


def test_unreadable_main_stream(
    capture_dirs: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main_bin = capture_dirs[0] / "main.bin"
    real_read_bytes = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path == main_bin:
            raise PermissionError(13, "Permission denied")
        return real_read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    line = expect_error(capsys, *channel_files(capture_dirs[0]), main_bin)
    assert f"cannot read {main_bin}: Permission denied" in line


def test_channel_id_beyond_channels(capture_dirs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    files = channel_files(capture_dirs[0])
    line = expect_error(capsys, *files, "--channels", "1")
    assert "ch1.bin: at byte 0: channel id 1 out of range" in line


def test_uuid_mismatch(capture_dirs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    line = expect_error(capsys, *channel_files(capture_dirs[0]), "--uuid", "12345678-1234-5678-1234-567812345678")
    assert "uuid" in line


def test_duplicate_channel_id(capture_dirs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    first = channel_files(capture_dirs[0])[0]
    line = expect_error(capsys, first, first)
    assert "already set up" in line


def test_corrupt_channel_names_file_and_offset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packet = RamPacket.data(flags=0, ramblock="ram0", normal=[4097], next_packet_size=4096, packet_num=0)
    channel = tmp_path / "ch0.bin"
    channel.write_bytes(InitPacket(uuid=bytes(16), id=0).encode() + RamPacket.sync(0).encode() + packet.encode())
    line = expect_error(capsys, channel, "--replay", tmp_path / "img", "--block", "ram0")
    assert f"{channel}: at byte {64 + 1344}: stream ended inside a RAM payload" in line


def test_replay_beyond_the_image_size(
    capture_dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = expect_error(
        capsys, *channel_files(capture_dirs[0]), "--replay", tmp_path / "img", "--block", "ram0", "--size", "64K"
    )
    assert "beyond the image size" in line


def test_replay_of_a_block_the_channels_never_carry(
    capture_dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--block pc.ram` on a capture whose RAM is ram0: an error naming the blocks present, no image."""
    image = tmp_path / "img"
    line = expect_error(capsys, *channel_files(capture_dirs[0]), "--replay", image, "--block", "pc.ram")
    assert "pc.ram" in line
    for block in manifest(capture_dirs[0])["ramblocks_in_multifd_packets"]:
        assert block in line
    assert not image.exists()


def test_replay_of_a_block_absent_from_the_main_stream(
    capture_dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With main.bin, its ramblock table is the list of blocks present (pc.rom is there, sent on no channel)."""
    capture = capture_dirs[0]
    image = tmp_path / "img"
    line = expect_error(capsys, capture / "main.bin", *channel_files(capture), "--replay", image, "--block", "pc.ram")
    assert "pc.ram" in line and "pc.rom" in line and "ram0" in line
    assert not image.exists()


def test_replay_of_a_block_only_the_main_stream_lists(
    capture_dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pc.rom is in the main stream's table but in no multifd packet: a block present, replayed (zeroed)."""
    capture = capture_dirs[0]
    sizes = {b["name"]: b["used_length"] for b in manifest(capture)["main_channel"]["ramblocks"]}
    assert "pc.rom" not in manifest(capture)["ramblocks_in_multifd_packets"]
    image = tmp_path / "img"
    code, out, err = run(capsys, capture / "main.bin", *channel_files(capture), "--replay", image, "--block", "pc.rom")
    assert (code, err) == (0, "")
    assert image.stat().st_size == sizes["pc.rom"]
    assert out.splitlines()[-1].startswith("sha256 ")


def test_replay_function_refuses_a_block_outside_the_ramblock_table(capture_dirs: list[Path], tmp_path: Path) -> None:
    """mfdcomp.qemu.replay.replay itself, given a ramblock table (limits.ramblocks), refuses before creating IMAGE."""
    from mfdcomp.errors import MfdcompError
    from mfdcomp.qemu.mainstream import parse_main_stream
    from mfdcomp.qemu.replay import replay
    from mfdcomp.wire import ReceiverLimits

    image = tmp_path / "img"
    stream = parse_main_stream((capture_dirs[0] / "main.bin").read_bytes(), 4096)
    limits = ReceiverLimits(page_size=4096, ramblocks=stream.ramblocks)
    files = [Path(f) for f in channel_files(capture_dirs[0])]
    with pytest.raises(MfdcompError, match=r"pc\.ram.*ram0"):
        replay(files, image, "pc.ram", limits=limits)
    assert not image.exists()


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["inspect", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--replay" in out and "--block" in out and "sha256" in out


def test_usage_errors_exit_two(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["inspect"])
    assert info.value.code == 2
    assert "CAPTURE" in capsys.readouterr().err

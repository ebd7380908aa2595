"""The file transport: QEMU's mapped-ram layout written by every channel, read back, and refused when unfinished."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine.mappedram import load_from_file, save_to_file
from mfdcomp.engine.migrate import MigrateOptions
from mfdcomp.errors import CodecError, MfdcompError, TruncatedError, WireError
from mfdcomp.methods import CodecInfo, CodecPath
from mfdcomp.registry import get_codec
from mfdcomp.testing import AnonymousTargets
from mfdcomp.transport import mappedram as mr
from tests.test_engine_roundtrip import fill_mixed

LAYOUT = [("pc.ram", 3 << 20), ("vga.vram", 1 << 20)]


def load(path: Path, channels: int | None = None) -> tuple[Any, RamClient]:
    targets = AnonymousTargets()
    try:
        result = load_from_file(path, targets, targets.digests, channels=channels)
    except BaseException:
        targets.close()
        raise
    return result, targets.clients[0]


def save(tmp_path: Path, channels: int = 2, zero_mode: str = "multifd", rounds: int = 3) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "mig.mr"
    with RamClient.anonymous(LAYOUT) as ram:
        fill_mixed(ram)
        options = MigrateOptions(channels=channels, zero_page_detection=zero_mode, rounds=rounds, dirty_fraction=0.3)
        result = save_to_file(ram, path, get_codec("none"), options)
        assert result.digests == ram.digests()
        return path, ram.digests()


@pytest.mark.parametrize("zero_mode", ["none", "multifd"])
@pytest.mark.parametrize("channels", [1, 2, 4, 8])
def test_file_roundtrip(tmp_path: Path, channels: int, zero_mode: str) -> None:
    path, digests = save(tmp_path, channels, zero_mode)
    result, target = load(path, channels=3)
    with target:
        assert result.ok and result.digests == digests


def test_layout_is_mapped_ram(tmp_path: Path) -> None:
    places = mr.layout(LAYOUT, 4096)
    for place in places:
        assert place.pages_offset % mr.PAGES_ALIGNMENT == 0
        assert place.bitmap_offset == place.record_offset + 1 + len(place.name) + 8 + 28
        assert place.bitmap_size == -(-place.pages // 64) * 8
    assert places[1].record_offset == places[0].end
    path, _ = save(tmp_path, rounds=1)
    data = path.read_bytes()
    first = places[0]
    version, page_size, bitmap_offset, pages_offset = mr.MAPPED_RAM_HEADER.unpack_from(
        data, first.bitmap_offset - mr.MAPPED_RAM_HEADER.size
    )
    assert (version, page_size, bitmap_offset, pages_offset) == (1, 4096, first.bitmap_offset, first.pages_offset)
    # Bit k set exactly when page k is not zero (zero pages only clear their bit); page k in its slot.
    bits = np.unpackbits(np.frombuffer(data, np.uint8, first.bitmap_size, first.bitmap_offset), bitorder="little")
    with RamClient.anonymous(LAYOUT) as ram:
        fill_mixed(ram)
        pages = np.frombuffer(ram.blocks["pc.ram"].memory, np.uint8).reshape(-1, 4096)
        nonzero = pages.any(axis=1)
        assert (bits[: first.pages].astype(bool) == nonzero).all()
        k = int(np.flatnonzero(nonzero)[5])
        slot = first.pages_offset + k * 4096
        assert data[slot : slot + 4096] == pages[k].tobytes()


def test_unfinished_file_is_refused(tmp_path: Path) -> None:
    path, _ = save(tmp_path)
    with open(path, "r+b") as file:
        file.write(mr.FileHeader(mr.STATE_WRITING, 4096, 0, 0).encode())
    with pytest.raises(WireError, match="never completed") as caught:
        load(path)
    assert caught.value.field == "state"


def test_a_failed_save_leaves_a_file_that_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mig.mr"
    with RamClient.anonymous(LAYOUT) as ram:
        fill_mixed(ram)
        options = MigrateOptions(channels=2, rounds=2, dirty_fraction=0.5)

        def fail(_: int) -> None:
            raise MfdcompError("injected failure in the middle of the save")

        with pytest.raises(MfdcompError, match="injected failure"):
            save_to_file(ram, path, get_codec("none"), options, on_progress=fail)
    assert path.exists()
    with pytest.raises(WireError, match="never completed"):
        load(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path, _ = save(tmp_path)
    places = mr.layout(LAYOUT, 4096)
    data = bytearray(path.read_bytes())
    header = mr.FileHeader.decode(bytes(data[: mr.FILE_HEADER.size]), len(data))
    manifest = bytes(data[header.manifest_offset : header.manifest_offset + header.manifest_size])
    # Keep header and manifest but cut the pages of the last block: move the manifest inside the cut file.
    cut = places[0].end
    data = data[:cut] + manifest
    data[: mr.FILE_HEADER.size] = mr.FileHeader(mr.STATE_COMPLETE, 4096, cut, len(manifest)).encode()
    path.write_bytes(data)
    with pytest.raises(WireError, match="overlap the manifest"):
        load(path)


def test_file_shorter_than_its_pages_is_refused(tmp_path: Path) -> None:
    path, _ = save(tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(size - 4096)
    with pytest.raises(WireError, match="outside"):
        load(path)


@pytest.mark.parametrize("garbage", [b"XXXX", b"MFDR\0\0\0\x09"])
def test_not_our_file_is_refused(tmp_path: Path, garbage: bytes) -> None:
    path, _ = save(tmp_path)
    with open(path, "r+b") as file:
        file.write(garbage)
    with pytest.raises(WireError) as caught:
        load(path)
    assert caught.value.field in ("magic", "version")


def test_corrupt_block_record_is_refused(tmp_path: Path) -> None:
    path, _ = save(tmp_path)
    place = mr.layout(LAYOUT, 4096)[1]
    with open(path, "r+b") as file:
        file.seek(place.bitmap_offset - mr.MAPPED_RAM_HEADER.size)
        file.write(mr.MAPPED_RAM_HEADER.pack(2, 4096, place.bitmap_offset, place.pages_offset))
    with pytest.raises(WireError, match="version 2 is newer"):
        load(path)
    with open(path, "r+b") as file:
        file.seek(place.bitmap_offset - mr.MAPPED_RAM_HEADER.size)
        file.write(place.record()[-mr.MAPPED_RAM_HEADER.size :])
        file.seek(place.record_offset + 1)
        file.write(b"X")
    with pytest.raises(WireError, match="does not match"):
        load(path)


def test_short_read_of_pages_is_a_truncation(tmp_path: Path) -> None:
    path, _ = save(tmp_path)
    data = bytearray(path.read_bytes())
    header = mr.FileHeader.decode(bytes(data[: mr.FILE_HEADER.size]), len(data))
    manifest = bytes(data[header.manifest_offset : header.manifest_offset + header.manifest_size])
    last = mr.layout(LAYOUT, 4096)[-1]
    # The manifest claims to sit just after the last block but the file ends before the block's last page.
    data = data[: last.end - 4096]
    data[: mr.FILE_HEADER.size] = mr.FileHeader(mr.STATE_COMPLETE, 4096, last.end, 0).encode()
    path.write_bytes(data + manifest)
    with pytest.raises((TruncatedError, WireError)):
        load(path)


def test_compression_and_legacy_are_refused(tmp_path: Path) -> None:
    class Compressing:
        info = CodecInfo(name="zz", qemu_flag=0x02, wire_format="x", stateful=True, paths=(CodecPath.SOFTWARE,))

    with RamClient.anonymous(LAYOUT) as ram:
        with pytest.raises(CodecError, match="raw pages only"):
            save_to_file(ram, tmp_path / "a", Compressing(), MigrateOptions())  # type: ignore[arg-type]
        with pytest.raises(MfdcompError, match="legacy"):
            save_to_file(ram, tmp_path / "b", get_codec("none"), MigrateOptions(zero_page_detection="legacy"))


# --- crafted files: every value of the header and the manifest is checked -------------------------


def rewrite(path: Path, session: dict[str, Any] | None = None, raw: bytes | None = None, page_size: int = 4096) -> None:
    """Replace the file's manifest (its session fields updated, or ``raw`` bytes) and its header's page size."""
    data = bytearray(path.read_bytes())
    header = mr.FileHeader.decode(bytes(data[: mr.FILE_HEADER.size]), len(data))
    manifest = json.loads(data[header.manifest_offset : header.manifest_offset + header.manifest_size])
    manifest["session"].update(session or {})
    # 1e400 is what a crafted file can hold and json.dumps never writes.
    body = raw if raw is not None else json.dumps(manifest).replace('"__huge__"', "1e400").encode()
    data = data[: header.manifest_offset] + body
    data[: mr.FILE_HEADER.size] = mr.FileHeader(
        mr.STATE_COMPLETE, page_size, header.manifest_offset, len(body)
    ).encode()
    path.write_bytes(data)


CRAFTED: dict[str, tuple[dict[str, Any] | None, bytes | None, int]] = {
    "page size 0": ({"page_size": 0}, None, 0),
    "page size 3": ({"page_size": 3}, None, 3),
    "page size 1e400": ({"page_size": "__huge__"}, None, 4096),
    "page size true": ({"page_size": True}, None, 1),
    "block size 1e400": ({"blocks": [["pc.ram", "__huge__"]]}, None, 4096),
    "block size negative": ({"blocks": [["pc.ram", -4096]]}, None, 4096),
    "block size 2**80": ({"blocks": [["pc.ram", 1 << 80]]}, None, 4096),
    "blocks a string": ({"blocks": "x"}, None, 4096),
    "channels 1e400": ({"channels": "__huge__"}, None, 4096),
    "manifest a list": (None, b"[]", 4096),
    "manifest nested": (None, b"[" * 100000, 4096),
    "digests a list": (None, b'{"session": {}, "digests": []}', 4096),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_manifest_is_a_wire_error(tmp_path: Path, case: str) -> None:
    session, raw, page_size = CRAFTED[case]
    path, _ = save(tmp_path, rounds=1)
    rewrite(path, session, raw, page_size)
    with pytest.raises(WireError):
        load(path)


@pytest.mark.parametrize("case", ["page size 0", "block size 1e400"])
def test_recv_of_a_crafted_file_prints_an_error_not_a_traceback(tmp_path: Path, case: str) -> None:
    """`mfdcomp recv --listen file:` on such a file: one error line, exit 1 (was ZeroDivisionError, OverflowError)."""
    session, raw, page_size = CRAFTED[case]
    path, _ = save(tmp_path, rounds=1)
    rewrite(path, session, raw, page_size)
    done = subprocess.run(
        [sys.executable, "-m", "mfdcomp", "recv", "--listen", f"file:{path}", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert "session" in done.stderr or "manifest" in done.stderr, done.stderr

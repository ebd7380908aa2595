"""Tests of mfdcomp.qemu.mainstream: real QEMU captures, synthetic streams, truncation, byte flips."""

from __future__ import annotations

import contextlib
import json
import random
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import BUNDLED_QEMU_CAPTURES, SHARED_QEMU_CAPTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfdcomp.errors import TruncatedError, WireError
from mfdcomp.qemu.mainstream import (
    EosRecord,
    MainStream,
    MultifdFlushRecord,
    PageRecord,
    ZeroPageRecord,
    parse_main_stream,
)

# --- captures -------------------------------------------------------------------------------------

SHARED_CAPTURES = SHARED_QEMU_CAPTURES
LOCAL_CAPTURES = BUNDLED_QEMU_CAPTURES
SHARED_CAPTURE_NAMES = (
    "q10-none-2ch-legacy-paused",
    "q10-none-2ch-multifd-paused",
    "q10-zlib-2ch-multifd-paused",
    "q10-zstd-2ch-multifd-paused",
    "q10-zstd-2ch-multifd-running",
    "q72-zlib-2ch-paused",
)


def _find_captures() -> list[Path]:
    """Every capture directory with main.bin + manifest.json; the shared copy wins over the local one."""
    found: dict[str, Path] = {}
    for root in (SHARED_CAPTURES, LOCAL_CAPTURES):
        if root.is_dir():
            for directory in sorted(root.iterdir()):
                if (directory / "main.bin").is_file() and (directory / "manifest.json").is_file():
                    found.setdefault(directory.name, directory)
    return [found[name] for name in sorted(found)]


CAPTURES = _find_captures()
CAPTURE_PARAMS = [pytest.param(path, id=path.name) for path in CAPTURES] or [pytest.param(None, id="no-captures")]
NO_CAPTURES = f"no QEMU capture found: neither {SHARED_CAPTURES} nor {LOCAL_CAPTURES} holds <capture>/main.bin"


def _load(directory: Path | None) -> tuple[bytes, dict[str, Any]]:
    if directory is None:
        pytest.fail(NO_CAPTURES)
    manifest: dict[str, Any] = json.loads((directory / "manifest.json").read_text())
    return (directory / "main.bin").read_bytes(), manifest


def test_shared_capture_set_is_complete() -> None:
    if not SHARED_CAPTURES.is_dir():
        pytest.skip(f"{SHARED_CAPTURES} is absent; only the copies in {LOCAL_CAPTURES} are tested")
    present = {path.name for path in SHARED_CAPTURES.iterdir() if (path / "main.bin").is_file()}
    assert set(SHARED_CAPTURE_NAMES) <= present


def _counts(stream: MainStream) -> Counter[type]:
    return Counter(type(record) for record in stream.records)


@pytest.mark.parametrize("directory", CAPTURE_PARAMS)
def test_capture_matches_manifest(directory: Path | None) -> None:
    data, manifest = _load(directory)
    main = manifest["main_channel"]
    stream = parse_main_stream(data, page_size=manifest["page_size"])

    assert len(data) == main["bytes"]
    assert stream.machine_type == main["machine_type"] == manifest["machine_type"]
    assert stream.capabilities == ()
    assert list(stream.ramblocks.items()) == [(b["name"], b["used_length"]) for b in main["ramblocks"]]
    assert list(stream.ram_sections) == main["ram_sections"]
    assert stream.end_offset == main["ram_complete_section_ends_at"]
    assert [(c.cmd, c.length, c.pos) for c in stream.commands] == [
        (c["cmd"], c["len"], c["offset"]) for c in main["vm_commands_before_ram_end"]
    ]

    counts = _counts(stream)
    assert counts[ZeroPageRecord] == main["ram_zero_page_records"]
    assert counts[PageRecord] == main["ram_page_records"]
    assert counts[MultifdFlushRecord] == main["multifd_flush_records"]
    assert counts[EosRecord] == main["eos_records"] == len(stream.ram_sections)

    by_block: dict[str, dict[str, int]] = {}
    for record in stream.records:
        if isinstance(record, ZeroPageRecord | PageRecord):
            entry = by_block.setdefault(record.block, {"zero_records": 0, "page_records": 0})
            entry["zero_records" if isinstance(record, ZeroPageRecord) else "page_records"] += 1
    assert by_block == main["ram_records_by_block"]

    # Sync points: MULTIFD_FLUSH in per-round streams, EOS otherwise; each sync point on the main
    # channel matches one SYNC packet on every multifd channel.
    if main["multifd_flush_records"]:
        assert (stream.sync_mode, stream.sync_points) == ("per-round", main["multifd_flush_records"])
    else:
        assert (stream.sync_mode, stream.sync_points) == ("per-section", main["eos_records"])
    for channel in manifest["multifd_channels"].values():
        assert channel["sync_packets"] == stream.sync_points

    sync_type = MultifdFlushRecord if stream.sync_mode == "per-round" else EosRecord
    assert [r.epoch for r in stream.records if isinstance(r, sync_type)] == list(range(stream.sync_points))
    epochs = [record.epoch for record in stream.records]
    assert epochs == sorted(epochs)
    assert [record.pos for record in stream.records] == sorted({record.pos for record in stream.records})

    # Offsets: legacy zero pages of ram0 are exactly the generated image's zero pages (paused source).
    page_size = manifest["page_size"]
    for record in stream.records:
        if isinstance(record, ZeroPageRecord | PageRecord):
            assert record.offset % page_size == 0
            assert record.offset < stream.ramblocks[record.block]
        if isinstance(record, ZeroPageRecord):
            assert record.fill == 0
    if manifest["source_state"] == "paused" and counts[ZeroPageRecord]:
        zero_pages = {
            r.offset // page_size for r in stream.records if isinstance(r, ZeroPageRecord) and r.block == "ram0"
        }
        kinds = manifest["ram0"]["page_kinds"]
        assert zero_pages == {index for index, kind in enumerate(kinds) if kind == "Z"}


@pytest.mark.parametrize("directory", CAPTURE_PARAMS)
def test_capture_every_prefix(directory: Path | None) -> None:
    """Prefixes ending before the RAM END footer raise TruncatedError; longer ones give the full result."""
    data, _manifest = _load(directory)
    full = parse_main_stream(data)
    view = memoryview(data)
    rng = random.Random(directory.name if directory else 0)
    cuts = list(range(min(2000, len(data)) + 1)) + [rng.randrange(len(data) + 1) for _ in range(300)]
    cuts += [full.end_offset - 1, full.end_offset, len(data)]
    for cut in cuts:
        if cut < full.end_offset:
            with pytest.raises(TruncatedError):
                parse_main_stream(view[:cut])
        else:
            assert parse_main_stream(view[:cut]) == full


@pytest.mark.parametrize("directory", CAPTURE_PARAMS)
def test_capture_byte_flips(directory: Path | None) -> None:
    data, _manifest = _load(directory)
    limit = min(2048, len(data))

    @settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.integers(0, limit - 1), st.integers(1, 255)), min_size=1, max_size=6))
    def check(flips: list[tuple[int, int]]) -> None:
        mutated = bytearray(data)
        for index, xor in flips:
            mutated[index] ^= xor
        with contextlib.suppress(WireError):
            parse_main_stream(bytes(mutated))

    check()


# --- synthetic streams -----------------------------------------------------------------------------


def be32(value: int) -> bytes:
    return struct.pack(">I", value)


def be64(value: int) -> bytes:
    return struct.pack(">Q", value)


def short(text: bytes) -> bytes:
    return bytes([len(text)]) + text


HEADER = b"QEVM" + be32(3)


def config(name: bytes = b"pc-q35-10.0", *subsections: bytes) -> bytes:
    return b"\x07" + be32(len(name)) + name + b"".join(subsections)


def subsection(name: bytes, body: bytes, version: int = 1) -> bytes:
    return b"\x05" + short(name) + be32(version) + body


def start(sid: int = 1, idstr: bytes = b"ram", version: int = 4, kind: int = 1) -> bytes:
    return bytes([kind]) + be32(sid) + short(idstr) + be32(0) + be32(version)


def part(sid: int = 1) -> bytes:
    return b"\x02" + be32(sid)


def end(sid: int = 1) -> bytes:
    return b"\x03" + be32(sid)


def footer(sid: int = 1) -> bytes:
    return b"\x7e" + be32(sid)


def word(address: int, flags: int) -> bytes:
    return be64(address | flags)


EOS = word(0, 0x10)
FLUSH = word(0, 0x200)
BLOCKS = {b"ram0": 0x4000, b"pc.rom": 0x2000}


def mem_size(blocks: dict[bytes, int] | None = None, extra: bytes = b"") -> bytes:
    blocks = BLOCKS if blocks is None else blocks
    body = b"".join(short(name) + be64(length) + extra for name, length in blocks.items())
    return word(sum(blocks.values()), 0x04) + body


def zero(address: int, block: bytes | None, fill: int = 0) -> bytes:
    ref = b"" if block is None else short(block)
    return word(address, 0x02 | (0x20 if block is None else 0)) + ref + bytes([fill])


def page(address: int, block: bytes | None, data: bytes) -> bytes:
    ref = b"" if block is None else short(block)
    return word(address, 0x08 | (0x20 if block is None else 0)) + ref + data


def command(cmd: int, data: bytes = b"", length: int | None = None) -> bytes:
    return b"\x08" + struct.pack(">HH", cmd, len(data) if length is None else length) + data


PAGE_A = bytes(range(256)) * 16
PAGE_B = b"\xab" * 4096
TRAILER = b"\x04" + be32(5) + short(b"timer") + be32(0) + be32(2) + b"\x00" * 24 + b"\x00"


def ram_stream(
    setup: bytes = EOS,
    middle: bytes = zero(0x1000, b"ram0") + page(0x2000, None, PAGE_A) + EOS,
    final: bytes = page(0x1000, b"pc.rom", PAGE_B) + EOS,
    cfg: bytes = config(),
    blocks: bytes = mem_size(),
    before: bytes = b"",
) -> bytes:
    return (
        HEADER
        + cfg
        + before
        + start()
        + blocks
        + setup
        + footer()
        + part()
        + middle
        + footer()
        + command(11)
        + end()
        + final
        + footer()
    )


def test_synthetic_per_section_stream() -> None:
    data = ram_stream()
    stream = parse_main_stream(data + TRAILER)
    assert stream.machine_type == "pc-q35-10.0"
    assert dict(stream.ramblocks) == {"ram0": 0x4000, "pc.rom": 0x2000}
    assert stream.ram_section_id == 1
    assert stream.ram_sections == ("start", "part", "end")
    assert stream.sync_mode == "per-section"
    assert stream.sync_points == 3
    assert stream.end_offset == len(data)
    assert [c.cmd for c in stream.commands] == [11]
    zero_rec, page_rec, eos_part = stream.records[1:4]
    assert zero_rec == ZeroPageRecord("ram0", 0x1000, 0, 1, zero_rec.pos)
    assert isinstance(page_rec, PageRecord)
    assert (page_rec.block, page_rec.offset, bytes(page_rec.data), page_rec.epoch) == ("ram0", 0x2000, PAGE_A, 1)
    assert data[page_rec.pos : page_rec.pos + 8] == word(0x2000, 0x28)
    assert eos_part == EosRecord("part", 1, eos_part.pos)
    last_page = stream.records[4]
    assert isinstance(last_page, PageRecord)
    assert (last_page.block, bytes(last_page.data), last_page.epoch) == ("pc.rom", PAGE_B, 2)
    assert [r.section for r in stream.records if isinstance(r, EosRecord)] == ["start", "part", "end"]
    # Prefixes: TruncatedError up to the last footer byte, the full result from there on.
    for cut in range(len(data)):
        with pytest.raises(TruncatedError):
            parse_main_stream(data[:cut])
    assert parse_main_stream(data) == stream


def test_synthetic_per_round_stream() -> None:
    data = ram_stream(
        setup=FLUSH + EOS,
        middle=zero(0, b"ram0", fill=7) + FLUSH + zero(0x1000, None) + EOS,
        final=FLUSH + EOS,
    )
    stream = parse_main_stream(data)
    assert stream.sync_mode == "per-round"
    assert stream.sync_points == 3
    kinds_epochs = [(type(r).__name__, r.epoch) for r in stream.records]
    assert kinds_epochs == [
        ("MultifdFlushRecord", 0),
        ("EosRecord", 1),
        ("ZeroPageRecord", 1),
        ("MultifdFlushRecord", 1),
        ("ZeroPageRecord", 2),
        ("EosRecord", 2),
        ("MultifdFlushRecord", 2),
        ("EosRecord", 3),
    ]
    first_zero = stream.records[2]
    assert isinstance(first_zero, ZeroPageRecord)
    assert first_zero.fill == 7


def test_input_buffer_types_and_views() -> None:
    data = ram_stream()
    expected = parse_main_stream(data)
    assert parse_main_stream(bytearray(data)) == expected
    assert parse_main_stream(memoryview(data)) == expected
    page_rec = expected.records[2]
    assert isinstance(page_rec, PageRecord)
    assert page_rec.data.obj is data  # a view into the input, not a copy
    with pytest.raises(TypeError):
        expected.ramblocks["ram0"] = 0  # type: ignore[index]


def test_no_configuration_section() -> None:
    data = ram_stream(cfg=b"")
    assert parse_main_stream(data).machine_type is None


def test_commands_before_ram() -> None:
    advise = command(3, b"\x00" * 16)
    stream = parse_main_stream(ram_stream(before=advise + command(1) + command(2, b"abcd")))
    assert [(c.cmd, c.length) for c in stream.commands] == [(3, 16), (1, 0), (2, 4), (11, 0)]
    assert stream.commands[0].pos == len(HEADER + config())


def test_configuration_subsections() -> None:
    cfg = config(
        b"pc-q35-9.2",
        subsection(b"configuration/target-page-bits", be32(12)),
        subsection(b"configuration/capabilities", be32(2) + short(b"x-ignore-shared") + short(b"zero-blocks")),
        subsection(b"configuration/uuid", bytes(range(16))),
    )
    data = ram_stream(cfg=cfg, blocks=mem_size(extra=be64(0xFEE00000)))
    stream = parse_main_stream(data)
    assert stream.machine_type == "pc-q35-9.2"
    assert stream.capabilities == ("x-ignore-shared", "zero-blocks")
    assert dict(stream.ramblocks) == {"ram0": 0x4000, "pc.rom": 0x2000}


def test_other_page_size() -> None:
    page = b"\x5a" * 8192
    data = ram_stream(
        cfg=config(b"sun4u", subsection(b"configuration/target-page-bits", be32(13))),
        middle=word(0x2000, 0x08) + short(b"ram0") + page + EOS,
        final=EOS,
    )
    stream = parse_main_stream(data, page_size=8192)
    page_rec = stream.records[1]
    assert isinstance(page_rec, PageRecord)
    assert (page_rec.offset, bytes(page_rec.data)) == (0x2000, page)


@pytest.mark.parametrize("page_size", [0, 512, 3000, 4097, 1 << 17])
def test_bad_page_size(page_size: int) -> None:
    with pytest.raises(ValueError, match="page_size"):
        parse_main_stream(ram_stream(), page_size=page_size)


S = start()
F = footer()
OK_SETUP = S + mem_size() + EOS + F

ERROR_CASES: list[tuple[str, bytes, type[WireError], str]] = [
    ("short header", b"QEV", TruncatedError, "file_header"),
    ("bad magic", b"QEVN" + be32(3), WireError, "magic"),
    ("version 2", b"QEVM" + be32(2) + config(), WireError, "version"),
    ("header only", HEADER, TruncatedError, "section_type"),
    ("config name not utf-8", HEADER + config(b"pc-\xff"), WireError, "configuration.name"),
    ("config then end", HEADER + config(), TruncatedError, "section_type"),
    (
        "subsection version",
        HEADER + config(b"m", subsection(b"configuration/uuid", bytes(16), version=2)),
        WireError,
        "subsection.version_id",
    ),
    (
        "target page bits mismatch",
        HEADER + config(b"m", subsection(b"configuration/target-page-bits", be32(13))),
        WireError,
        "target_page_bits",
    ),
    (
        "target page bits huge",
        HEADER + config(b"m", subsection(b"configuration/target-page-bits", be32(0xFFFFFFFF))),
        WireError,
        "target_page_bits",
    ),
    (
        "unknown subsection",
        HEADER + config(b"m", subsection(b"configuration/new", b"")),
        WireError,
        "subsection.name",
    ),
    (
        "empty capability",
        HEADER + config(b"m", subsection(b"configuration/capabilities", be32(1) + short(b""))),
        WireError,
        "capability",
    ),
    (
        "mapped-ram",
        HEADER + config(b"m", subsection(b"configuration/capabilities", be32(1) + short(b"mapped-ram"))) + OK_SETUP,
        WireError,
        "capability",
    ),
    ("command 0", HEADER + command(0), WireError, "command"),
    ("command 12", HEADER + command(12), WireError, "command"),
    ("packaged", HEADER + command(7, be32(100)), WireError, "command"),
    ("fixed command length", HEADER + command(11, b"x"), WireError, "command.len"),
    ("command data cut", HEADER + command(2, b"ab", length=4), TruncatedError, "command.data"),
    ("non-ram start", HEADER + start(0, b"dirty-bitmap", version=1), WireError, "section.idstr"),
    ("full device before ram", HEADER + start(0, b"timer", version=2, kind=4), WireError, "section.idstr"),
    ("full ram", HEADER + start(kind=4), WireError, "section.idstr"),
    ("ram started twice", HEADER + OK_SETUP + start(2), WireError, "section.idstr"),
    ("non-ram start between ram", HEADER + OK_SETUP + start(2, b"block", 1), WireError, "section.idstr"),
    ("empty idstr", HEADER + start(idstr=b""), WireError, "section.idstr"),
    ("ram version 3", HEADER + start(version=3), WireError, "section.version_id"),
    ("part before start", HEADER + part(1), WireError, "section_id"),
    ("part of other section", HEADER + OK_SETUP + part(2), WireError, "section_id"),
    ("end of other section", HEADER + OK_SETUP + end(0), WireError, "section_id"),
    ("eof before ram end", HEADER + OK_SETUP + b"\x00", WireError, "section_type"),
    ("unknown section type", HEADER + b"\x42", WireError, "section_type"),
    ("footer marker", HEADER + S + mem_size() + EOS + b"\x7f" + be32(1), WireError, "section_footer"),
    ("footer id", HEADER + S + mem_size() + EOS + footer(2), WireError, "section_footer"),
    ("setup without mem_size", HEADER + S + EOS + F, WireError, "ram.flags"),
    ("mem_size twice", HEADER + S + mem_size() + mem_size() + EOS + F, WireError, "ram.flags"),
    ("mem_size in part", HEADER + OK_SETUP + part() + mem_size(), WireError, "ram.flags"),
    ("mem_size with continue", HEADER + S + word(0x1000, 0x24), WireError, "ram.flags"),
    (
        "block longer than total",
        HEADER + S + word(0x1000, 4) + short(b"a") + be64(0x2000),
        WireError,
        "ramblock.used_length",
    ),
    (
        "block twice",
        HEADER + S + word(0x2000, 4) + (short(b"a") + be64(0x1000)) * 2,
        WireError,
        "ramblock.name",
    ),
    ("empty block name", HEADER + S + word(0x1000, 4) + short(b"") + be64(0x1000), WireError, "ramblock.name"),
    ("unknown block", HEADER + OK_SETUP + part() + zero(0, b"ram9"), WireError, "ramblock.name"),
    ("continue first", HEADER + OK_SETUP + part() + zero(0, None), WireError, "ram.flags"),
    ("continue on eos", HEADER + OK_SETUP + part() + word(0, 0x30), WireError, "ram.flags"),
    ("offset beyond block", HEADER + OK_SETUP + part() + zero(0x4000, b"ram0"), WireError, "ram.addr"),
    ("flag 0x400", HEADER + OK_SETUP + part() + word(0, 0x400), WireError, "ram.flags"),
    ("flag 0x01", HEADER + OK_SETUP + part() + word(0, 0x01), WireError, "ram.flags"),
    ("no flags", HEADER + OK_SETUP + part() + word(0x1000, 0), WireError, "ram.flags"),
    ("zero and page", HEADER + OK_SETUP + part() + word(0, 0x0A), WireError, "ram.flags"),
    ("xbzrle", HEADER + OK_SETUP + part() + word(0, 0x40), WireError, "ram.flags"),
    ("hook", HEADER + OK_SETUP + part() + word(0, 0x80), WireError, "ram.flags"),
    ("compress page", HEADER + OK_SETUP + part() + word(0, 0x100), WireError, "ram.flags"),
    ("eos with address", HEADER + OK_SETUP + part() + word(0x1000, 0x10), WireError, "ram.addr"),
    ("flush with address", HEADER + OK_SETUP + part() + word(0x1000, 0x200), WireError, "ram.addr"),
    ("page cut", HEADER + OK_SETUP + part() + page(0, b"ram0", b"\x00" * 100), TruncatedError, "ram.page"),
    ("name cut", HEADER + OK_SETUP + part() + word(0, 2) + b"\x09ram", TruncatedError, "ramblock.name"),
    ("after eos", HEADER + OK_SETUP + part() + EOS, TruncatedError, "section_footer"),
]


@pytest.mark.parametrize(("data", "error", "field"), [pytest.param(*case[1:], id=case[0]) for case in ERROR_CASES])
def test_malformed(data: bytes, error: type[WireError], field: str) -> None:
    with pytest.raises(error) as info:
        parse_main_stream(data)
    assert info.value.field == field
    if error is WireError:
        assert not isinstance(info.value, TruncatedError)


def test_error_messages_name_what_failed() -> None:
    with pytest.raises(WireError, match="'dirty-bitmap'"):
        parse_main_stream(HEADER + start(0, b"dirty-bitmap", version=1))
    with pytest.raises(WireError, match="QEMU_VM_EOF"):
        parse_main_stream(HEADER + OK_SETUP + b"\x00")
    with pytest.raises(WireError, match="not started yet"):
        parse_main_stream(HEADER + part(1))
    with pytest.raises(WireError, match="XBZRLE"):
        parse_main_stream(HEADER + OK_SETUP + part() + word(0, 0x40))
    with pytest.raises(TruncatedError) as info:
        parse_main_stream(HEADER + OK_SETUP + part() + page(0, b"ram0", b"\x00" * 100))
    assert (info.value.value, info.value.limit) == (100, 4096)


FUZZ_BASE = ram_stream(
    setup=FLUSH + EOS,
    middle=zero(0, b"ram0") + page(0x1000, None, PAGE_A[:4096]) + FLUSH + EOS,
    before=command(3, b"\x00" * 16),
    cfg=config(b"pc", subsection(b"configuration/capabilities", be32(1) + short(b"x-ignore-shared"))),
    blocks=mem_size(extra=be64(0)),
)


@settings(max_examples=400)
@given(st.lists(st.tuples(st.integers(0, len(FUZZ_BASE) - 1), st.integers(1, 255)), min_size=1, max_size=6))
def test_synthetic_byte_flips(flips: list[tuple[int, int]]) -> None:
    mutated = bytearray(FUZZ_BASE)
    for index, xor in flips:
        mutated[index] ^= xor
    with contextlib.suppress(WireError):
        parse_main_stream(bytes(mutated))


@given(st.binary(max_size=300))
def test_random_bytes_after_header(tail: bytes) -> None:
    with contextlib.suppress(WireError):
        parse_main_stream(HEADER + tail)

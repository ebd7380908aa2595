"""Fuzzing the mapped-ram loader (``mfdcomp recv --listen file:``) with crafted files.

A small valid file (two blocks, some pages present, some zero) is mutated in
its header, its manifest's JSON values, its block records and bitmaps, then
loaded. Every outcome must be a load or a typed :class:`MfdcompError`, within
a time bound: a crafted file never becomes an OverflowError, a
ZeroDivisionError or a traceback.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine.mappedram import load_from_file, save_to_file
from mfdcomp.engine.migrate import MigrateOptions
from mfdcomp.errors import MfdcompError
from mfdcomp.registry import get_codec
from mfdcomp.testing import AnonymousTargets
from mfdcomp.transport import mappedram as mr
from tests.test_fuzz_wire import INTERESTING, TIME_BOUND, fuzz_settings

LAYOUT = [("ram0", 256 << 10), ("vga", 64 << 10)]
FUZZ = fuzz_settings(int(os.environ.get("MFDCOMP_FUZZ_FILE_EXAMPLES", "150")))

# JSON values that once crashed the loader, and other edges of each type.
HOSTILE_VALUES: list[Any] = [
    0, 1, 3, -1, 4096, 1 << 63, 1 << 80, True, False, None, 4096.0, "4096", "", "x" * 300, [], {}, [[]],
    [["ram0"]], [["ram0", 4096], ["ram0", 4096]], "\ud800", "__huge__", "__neghuge__", "__nan__",
]  # fmt: skip
OPS = ("session", "block", "digests", "header", "byte", "manifest-bytes")
SESSION_KEYS = ("uuid", "page_size", "channels", "codec", "level", "zero_page_detection", "blocks")


@functools.cache
def valid_file(folder: str) -> bytes:
    """A complete file of LAYOUT, written by the real source engine."""
    path = Path(folder) / "seed.mr"
    with RamClient.anonymous(LAYOUT) as ram:
        memory = ram.blocks["ram0"].memory
        for page in range(0, len(memory) // 4096, 3):  # every third page non-zero
            memory[page * 4096 : page * 4096 + 16] = page.to_bytes(16, "little")
        save_to_file(ram, path, get_codec("none"), MigrateOptions(channels=2, rounds=1))
    return path.read_bytes()


def _json_text(value: Any) -> str:
    text = json.dumps(value)
    for marker, raw in (("__huge__", "1e400"), ("__neghuge__", "-1e400"), ("__nan__", "NaN")):
        text = text.replace(f'"{marker}"', raw)
    return text


def mutate(seed: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    """Apply ``ops`` to a copy of ``seed``: manifest values, header fields, raw bytes anywhere before the pages."""
    data = bytearray(seed)
    header = mr.FileHeader.decode(bytes(data[: mr.FILE_HEADER.size]), len(data))
    manifest = json.loads(data[header.manifest_offset : header.manifest_offset + header.manifest_size])
    raw_manifest: str | None = None
    fields = list(mr.FILE_HEADER.unpack_from(data))
    for kind, a, b in ops:
        if kind == "session":
            # Copies: one shared list put in two places (then mutated) made the manifest circular, json.dumps failed.
            manifest["session"][SESSION_KEYS[a % len(SESSION_KEYS)]] = copy.deepcopy(
                HOSTILE_VALUES[b % len(HOSTILE_VALUES)]
            )
        elif kind == "block":
            blocks = manifest["session"].get("blocks")
            if isinstance(blocks, list) and blocks and isinstance(blocks[a % len(blocks)], list):
                pair = blocks[a % len(blocks)]
                if pair:  # an earlier op may have replaced the blocks with something else
                    pair[b % len(pair)] = copy.deepcopy(HOSTILE_VALUES[(a >> 8) % len(HOSTILE_VALUES)])
        elif kind == "digests":
            manifest["digests"] = copy.deepcopy(HOSTILE_VALUES[b % len(HOSTILE_VALUES)])
        elif kind == "header":
            index = 2 + a % 4  # state, page_size, manifest_offset, manifest_size
            fields[index] = INTERESTING[b % len(INTERESTING)]
        elif kind == "byte":
            # The block records and bitmaps live in the first MiB; pages after that are just data.
            data[a % min(len(data), 1 << 20)] = b & 0xFF
        elif kind == "manifest-bytes":
            text = _json_text(manifest) if raw_manifest is None else raw_manifest
            at = a % max(1, len(text))
            raw_manifest = text[:at] + chr(b % 128) + text[at + 1 :]
    body = (raw_manifest if raw_manifest is not None else _json_text(manifest)).encode("utf-8", "surrogatepass")
    if fields[5] == header.manifest_size:  # unless the header's size was mutated, it follows the manifest
        fields[5] = len(body)
    data = data[: header.manifest_offset] + body
    widths = (None, 32, 32, 32, 64, 64)  # magic, version, state, page_size, manifest_offset, manifest_size
    packed = [f if w is None else f & ((1 << w) - 1) for f, w in zip(fields, widths, strict=True)]
    data[: mr.FILE_HEADER.size] = mr.FILE_HEADER.pack(*packed)
    return bytes(data)


def random_ops(rng: random.Random) -> list[tuple[str, int, int]]:
    """Mutations for scripts/fuzz_campaign.py's loader target."""
    return [(rng.choice(OPS), rng.getrandbits(32), rng.getrandbits(32)) for _ in range(rng.randint(1, 3))]


def check_loader_input(ops: list[tuple[str, int, int]], folder: Path) -> MfdcompError | None:
    """Load the seed file mutated by ``ops``: its typed error, or None; anything else escapes. Time-bounded."""
    path = folder / "fuzz.mr"
    path.write_bytes(mutate(valid_file(str(folder)), ops))
    targets = AnonymousTargets()
    started = time.perf_counter()
    try:
        load_from_file(path, targets, targets.digests)
    except MfdcompError as exc:
        return exc
    finally:
        targets.close()
        took = time.perf_counter() - started
        assert took < TIME_BOUND, f"{ops}: took {took:.2f} s"
    return None


def load_outcome(path: Path) -> str:
    targets = AnonymousTargets()
    try:
        result = load_from_file(path, targets, targets.digests)
        return "loaded" if result.ok else "loaded, digests differ"
    except MfdcompError as exc:
        return type(exc).__name__
    finally:
        targets.close()


ops_strategy = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), min_size=1, max_size=3
)


def test_seed_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "f.mr"
    path.write_bytes(valid_file(str(tmp_path)))
    assert load_outcome(path) == "loaded"
    path.write_bytes(mutate(valid_file(str(tmp_path)), []))
    assert load_outcome(path) == "loaded"


@pytest.mark.parametrize("key", SESSION_KEYS)
@pytest.mark.parametrize("value", range(len(HOSTILE_VALUES)))
def test_every_hostile_session_value_ends_typed(tmp_path_factory: pytest.TempPathFactory, key: str, value: int) -> None:
    """Each session field set to each hostile value (the known crashes among them), deterministically."""
    folder = tmp_path_factory.getbasetemp()
    path = folder / f"{key}-{value}.mr"
    path.write_bytes(mutate(valid_file(str(folder)), [("session", SESSION_KEYS.index(key), value)]))
    load_outcome(path)  # anything but an MfdcompError escapes and fails the test
    path.unlink()


@FUZZ
@given(ops=ops_strategy)
def test_mutated_files_load_or_end_typed(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int]]
) -> None:
    check_loader_input(ops, tmp_path_factory.getbasetemp())

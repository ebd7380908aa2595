"""Fuzzing the wire reader and the destination's channel loop with mutated real channels.

Seeds are the golden QEMU captures (``ch*.bin``: the team's full set beside the
repo when present, else the bundled ones) cut to their first few records, plus
channels this module encodes with every registered codec from the captures'
guest RAM. Mutations work on whole records (duplicate, drop, reorder, splice a
record of another channel, set a header field to an edge value) and on bytes
(bit flips, byte writes, inserted slices of any seed, deletions, truncation).

Every mutated input must end in a typed :class:`MfdcompError` or in a valid
result, within a time bound and a memory bound; fed to a real
:class:`RecvChannel`, nothing may be written outside the target blocks (guard
bytes surround each one). ``scripts/fuzz_campaign.py`` drives the same
harness for longer runs and counts inputs.
"""

from __future__ import annotations

import functools
import json
import os
import random
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mfdcomp.engine.destination import Barrier, RecvChannel, TargetMemory
from mfdcomp.engine.state import RunState
from mfdcomp.errors import ChannelError, MfdcompError, TruncatedError
from mfdcomp.methods import Codec, CodecPath, HasImplementations, PageViews, choose_path
from mfdcomp.registry import default_registry
from mfdcomp.wire import (
    INIT_SIZE,
    ChannelIds,
    ChannelInit,
    ChannelReader,
    EndOfStream,
    Flag,
    InitPacket,
    NeedData,
    RamData,
    RamPacket,
    ReceiverLimits,
    Sync,
)
from mfdcomp.zeropage import partition, zero_flags

REPO = Path(__file__).resolve().parent.parent
CAPTURE_ROOTS = (REPO.parent / "shared" / "vectors" / "qemu", REPO / "tests" / "vectors" / "qemu")
PAGE_SIZE = 4096
UUID = bytes(16)

# A seed keeps whole records from the start of its channel until it holds this many bytes.
SEED_BYTES = 700_000
SEED_MIN_RECORDS = 4

# Bounds every single input must stay within (the machine is shared and noisy: generous).
TIME_BOUND = 3.0
"""Seconds for one input, reading and decoding included."""
RSS_BOUND = 96 << 20
"""Growth of the process's resident memory over one input."""


def heap_bound(size: int) -> int:
    """Python heap one input may take at its peak: a few copies of itself plus two payload buffers."""
    return 4 * size + (6 << 20)


# --- seeds ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    """The first records of one channel: an init packet, then RAM/device records.

    ``bounds[i]`` is where record ``i`` starts (record 0 is the init packet);
    the last entry is the end of the seed.
    """

    name: str
    data: bytes
    bounds: tuple[int, ...]
    limits: ReceiverLimits
    codec: str

    def records(self) -> list[bytes]:
        return [self.data[a:b] for a, b in zip(self.bounds, self.bounds[1:], strict=False)]


def capture_dirs() -> list[Path]:
    for root in CAPTURE_ROOTS:
        if root.is_dir():
            return sorted(d for d in root.iterdir() if (d / "manifest.json").is_file())
    return []


def _capture_limits(manifest: dict[str, Any]) -> ReceiverLimits:
    # Every QEMU codec the captures hold (the q10hw-* ones carry qpl, uadk and qatzip).
    flags = {"none": 0, "zlib": int(Flag.ZLIB), "zstd": int(Flag.ZSTD)}
    flags |= {name: int(Flag[name.upper()]) for name in ("qpl", "uadk", "qatzip")}
    return ReceiverLimits(
        page_size=manifest["page_size"],
        channels=manifest["channels"],
        uuid=UUID,
        ramblocks={b["name"]: b["used_length"] for b in manifest["main_channel"]["ramblocks"]},
        codec_flag=flags[manifest["codec"]],
    )


def cut_seed(name: str, data: bytes, limits: ReceiverLimits, codec: str) -> Seed:
    """The whole records of ``data`` (a valid channel, init packet first) up to about SEED_BYTES."""
    reader = ChannelReader(limits)
    bounds = [0]
    step = 1 << 16
    fed = 0
    while True:
        if fed < len(data):
            reader.feed(data[fed : fed + step])
            fed += step
        else:
            reader.feed_eof()
        for event in reader:
            if isinstance(event, EndOfStream):
                break
            if isinstance(event, Sync) and event.packet.has_pages:
                continue  # the second event of one SYNC record with pages
            bounds.append(reader.consumed)
        end = bounds[-1]
        if (end >= SEED_BYTES and len(bounds) > SEED_MIN_RECORDS) or (fed >= len(data) and reader_done(reader)):
            break
    return Seed(name, data[: bounds[-1]], tuple(bounds), limits, codec)


def reader_done(reader: ChannelReader) -> bool:
    return isinstance(reader.next_event(), EndOfStream)


@functools.cache
def capture_seeds() -> tuple[Seed, ...]:
    seeds = []
    for capture in capture_dirs():
        manifest = json.loads((capture / "manifest.json").read_text())
        limits = _capture_limits(manifest)
        for path in sorted(capture.glob("ch*.bin")):
            seeds.append(cut_seed(f"{capture.name}/{path.name}", path.read_bytes(), limits, manifest["codec"]))
    return tuple(seeds)


@functools.cache
def guest_ram() -> bytes:
    """The captures' 8 MiB guest RAM image (real pages for the codecs' own seeds)."""
    for capture in capture_dirs():
        image = capture / "ram0.img.zst"
        if image.is_file():
            return zstandard.ZstdDecompressor().decompress(image.read_bytes())
    # The bundled captures may come without the image: a mixed image of our own then.
    rng = random.Random(1)
    pages = []
    for index in range(2048):
        kind = index % 4
        if kind == 0:
            pages.append(bytes(PAGE_SIZE))
        elif kind == 1:
            pages.append(rng.randbytes(PAGE_SIZE))
        elif kind == 2:
            pages.append((b"the quick brown fox %d " % index) * 160 + bytes(PAGE_SIZE - 160 * 21))
        else:
            pages.append(rng.randbytes(PAGE_SIZE // 2) + bytes(PAGE_SIZE // 2))
    return b"".join(page[:PAGE_SIZE].ljust(PAGE_SIZE, b"\0") for page in pages)


def decoder_variants() -> dict[str, Codec]:
    """Every registered codec, and every other implementation a codec offers of its wire format."""
    variants: dict[str, Codec] = {}
    for name, codec in sorted(default_registry().codecs.items()):
        variants[name] = codec
        if isinstance(codec, HasImplementations):
            for label, other in codec.implementations().items():
                variants[f"{name}[{label}]"] = other
    return variants


def send_path(codec: Codec) -> CodecPath:
    return choose_path(codec.info, codec.probe()).path


BLOCK = "ram0"
BLOCK_SIZE = 2 << 20  # the synthetic channels' block: 512 pages


def _batches(rng: random.Random, count: int) -> Iterator[list[int]]:
    """Batches of page offsets in the synthetic block: full, partial, scattered, adjacent."""
    pages = BLOCK_SIZE // PAGE_SIZE
    for index in range(count):
        size = (128, 37, 1, 128, 5)[index % 5]
        if index % 2:
            offsets = sorted(rng.sample(range(pages), size))
        else:
            first = rng.randrange(pages - size + 1)
            offsets = list(range(first, first + size))
        yield [o * PAGE_SIZE for o in offsets]


def encode_channel(codec: Codec, *, batches: int = 6, seed: int = 0, channel_id: int = 0) -> bytes:
    """A channel as mfdcomp's source writes it with ``codec``: init, RAM packets, a SYNC in the middle."""
    ram = guest_ram()
    rng = random.Random(seed)
    start = rng.randrange(0, len(ram) - BLOCK_SIZE + 1, PAGE_SIZE)
    memory = memoryview(ram[start : start + BLOCK_SIZE])
    method = codec.methods(PAGE_SIZE, None, send_path(codec))
    method.send_setup(channel_id)
    parts = [InitPacket(uuid=UUID, id=channel_id).encode()]
    try:
        for number, offsets in enumerate(_batches(rng, batches)):
            normal_num = partition(offsets, zero_flags(memory, offsets, PAGE_SIZE))
            normal, zero = offsets[:normal_num], offsets[normal_num:]
            buffers: list[Any] = []
            size, extra = 0, 0
            if normal:
                payload = method.send_prepare(PageViews(memory, normal, PAGE_SIZE))
                buffers, size, extra = payload.buffers, payload.size, payload.flags
            header = RamPacket.data(
                flags=method.flag | extra,
                ramblock=BLOCK,
                normal=normal,
                zero=zero,
                next_packet_size=size,
                packet_num=number,
                extension_id=method.extension_id,
            )
            parts.append(header.encode())
            parts += [bytes(b) for b in buffers]
            if number == batches // 2:
                parts.append(RamPacket.sync(1000 + number).encode())
    finally:
        method.send_cleanup()
    parts.append(RamPacket.sync(2000).encode())
    return b"".join(parts)


def synthetic_limits(codec: Codec) -> ReceiverLimits:
    info = codec.info
    return ReceiverLimits(
        page_size=PAGE_SIZE,
        channels=4,
        uuid=UUID,
        ramblocks={BLOCK: BLOCK_SIZE, "rom": 64 << 10},
        codec_flag=0x3E if info.qemu_flag is None else info.qemu_flag,
        extension_id=info.extension_id,
    )


@functools.cache
def codec_seeds() -> tuple[Seed, ...]:
    seeds: list[Seed] = []
    for name, codec in sorted(default_registry().codecs.items()):
        data = encode_channel(codec, seed=len(seeds))
        seeds.append(cut_seed(f"mfdcomp/{name}", data, synthetic_limits(codec), name))
    return tuple(seeds)


@functools.cache
def all_seeds() -> tuple[Seed, ...]:
    return capture_seeds() + codec_seeds()


# --- mutations -----------------------------------------------------------------------------------

INTERESTING = (
    0, 1, 2, 0x3E, 0x3F, 0x40, 0x41, 0x7F, 0x80, 0x81, 0xFF, 0x100, 0xFFF, 0x1000, 0x1001, 0xFFFF,
    0x10000, 0x100000, 0x100001, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0x11223344,
)  # fmt: skip
"""Edge values written into header fields."""

# (offset, width) of the fields of a RAM record and of an init packet.
RAM_FIELDS = ((0, 4), (4, 4), (8, 4), (12, 4), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (64, 1), (319, 1))
INIT_FIELDS = ((0, 4), (4, 4), (8, 1), (23, 1), (24, 1), (25, 1))
OFFSET_SLOTS = 8  # the first offset slots of a RAM record are targets too

RECORD_OPS = ("dup", "drop", "swap", "splice", "field", "offset")
BYTE_OPS = ("flip", "byte", "u32", "insert", "delete", "truncate")
OPS = RECORD_OPS + BYTE_OPS

Op = tuple[str, int, int, int]
"""A mutation: its kind and three numbers that it reads modulo what they index."""


def _field(record: bytearray, fields: Sequence[tuple[int, int]], a: int, b: int) -> None:
    offset, width = fields[a % len(fields)]
    if offset + width > len(record):
        return
    value = INTERESTING[b % len(INTERESTING)]
    if width == 1:
        record[offset] = value & 0xFF
    else:
        record[offset : offset + width] = (value % (1 << (8 * width))).to_bytes(width, "big")


def _record_op(records: list[bytes], op: Op, pool: Sequence[Seed]) -> None:
    kind, a, b, c = op
    if not records:
        return
    i = a % len(records)
    if kind == "dup":
        records.insert(i, records[i])
    elif kind == "drop":
        del records[i]
    elif kind == "swap":
        j = b % len(records)
        records[i], records[j] = records[j], records[i]
    elif kind == "splice":
        other = pool[b % len(pool)].records()
        records.insert(i, other[c % len(other)])
    elif kind == "field":
        record = bytearray(records[i])
        _field(record, INIT_FIELDS if len(record) == INIT_SIZE else RAM_FIELDS, b, c)
        records[i] = bytes(record)
    elif kind == "offset":
        record = bytearray(records[i])
        slot = 320 + 8 * (b % OFFSET_SLOTS)
        if len(record) >= slot + 8 and len(record) != INIT_SIZE:
            value = (c % 3000) * (PAGE_SIZE if c % 2 else 1) if c % 5 else (1 << 64) - 1 - c % PAGE_SIZE
            record[slot : slot + 8] = value.to_bytes(8, "big")
            records[i] = bytes(record)


def _byte_op(data: bytearray, op: Op, pool: Sequence[Seed]) -> None:
    kind, a, b, c = op
    if kind == "insert":
        source = pool[b % len(pool)].data
        start = c % max(1, len(source))
        piece = source[start : start + 1 + (c >> 8) % 4096]
        data[a % (len(data) + 1) : a % (len(data) + 1)] = piece
        return
    if not data:
        return
    pos = a % len(data)
    if kind == "flip":
        data[pos] ^= 1 << (b % 8)
    elif kind == "byte":
        data[pos] = b & 0xFF
    elif kind == "u32":
        data[pos : pos + 4] = (INTERESTING[b % len(INTERESTING)]).to_bytes(4, "big")[: len(data) - pos]
    elif kind == "delete":
        del data[pos : pos + 1 + b % 2048]
    elif kind == "truncate":
        del data[pos:]


def mutate(seed: Seed, ops: Sequence[Op], pool: Sequence[Seed]) -> bytes:
    """Record-level operations first (on the seed's records), then byte-level ones."""
    records = seed.records()
    for op in ops:
        if op[0] in RECORD_OPS:
            _record_op(records, op, pool)
    data = bytearray(b"".join(records))
    for op in ops:
        if op[0] in BYTE_OPS:
            _byte_op(data, op, pool)
    return bytes(data)


def random_ops(rng: random.Random, most: int = 4) -> list[Op]:
    """What hypothesis draws, for the campaign script's own random inputs."""
    return [
        (rng.choice(OPS), rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(32))
        for _ in range(rng.randint(1, most))
    ]


# --- bounds --------------------------------------------------------------------------------------


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Bounded:
    """Time, Python heap peak (tracemalloc) and RSS growth of one input."""

    seconds: float = 0.0
    heap_peak: int = 0
    rss_growth: int = 0

    def check(self, size: int, what: str) -> None:
        assert self.seconds < TIME_BOUND, f"{what}: took {self.seconds:.2f} s"
        assert self.heap_peak < heap_bound(size), f"{what}: heap peak {self.heap_peak} for {size} input bytes"
        assert self.rss_growth < RSS_BOUND, f"{what}: RSS grew by {self.rss_growth}"


def measured(run: Callable[[], Any]) -> tuple[Any, Bounded]:
    """Run ``run()`` under tracemalloc (started by the caller), with time and RSS growth."""
    tracemalloc.reset_peak()
    before_heap = tracemalloc.get_traced_memory()[0]
    before_rss = rss()
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] - before_heap
    return result, Bounded(seconds, peak, rss() - before_rss)


@dataclass
class Outcome:
    """How one input ended: the events before the end, and the typed error if any."""

    events: int = 0
    error: MfdcompError | None = None
    kinds: dict[str, int] = field(default_factory=dict)


MAX_FEEDS = 300
SMALL_FEEDS = 4096
"""Chunks as small as a byte are fed over the first SMALL_FEEDS bytes, then at most MAX_FEEDS chunks."""

# --- the reader ----------------------------------------------------------------------------------


def read_mutated(data: bytes, limits: ReceiverLimits, splits: Sequence[int]) -> Outcome:
    """Feed ``data`` in chunks of ``splits`` (cycled), drain after each, then end it.

    Anything but a typed MfdcompError escaping is a bug (the assertion says which).
    """
    reader = ChannelReader(limits, channel_ids=ChannelIds())
    outcome = Outcome()
    # Byte-sized chunks only over the first bytes: a whole channel fed a byte at a time costs seconds.
    smallest = max(1, len(data) // MAX_FEEDS)
    try:
        position = 0
        index = 0
        while position < len(data):
            size = max(smallest if position > SMALL_FEEDS else 1, splits[index % len(splits)]) if splits else len(data)
            reader.feed(data[position : position + size])
            position += size
            index += 1
            for event in reader:
                outcome.events += 1
                _count(outcome, event)
        reader.feed_eof()
        events = list(reader)
        outcome.events += len(events)
        for event in events:
            _count(outcome, event)
        assert events and isinstance(events[-1], EndOfStream), "a whole input must end at EndOfStream"
        assert reader.consumed == len(data), "every byte of a clean stream belongs to an event"
    except MfdcompError as exc:
        outcome.error = exc
    return outcome


def _count(outcome: Outcome, event: object) -> None:
    assert isinstance(event, ChannelInit | RamData | Sync | EndOfStream) or type(event).__name__ == "DeviceState"
    assert not isinstance(event, NeedData)
    name = type(event).__name__
    outcome.kinds[name] = outcome.kinds.get(name, 0) + 1


def loose(limits: ReceiverLimits) -> ReceiverLimits:
    """What an inspector of an unknown capture knows: nothing but the page size."""
    return ReceiverLimits(page_size=limits.page_size)


def check_reader_input(seed: Seed, ops: Sequence[Op], splits: Sequence[int], strict: bool) -> Outcome:
    data = mutate(seed, ops, all_seeds())
    limits = seed.limits if strict else loose(seed.limits)
    outcome, bounds = measured(lambda: read_mutated(data, limits, splits))
    bounds.check(len(data), f"reader on {seed.name} {ops}")
    assert isinstance(outcome, Outcome)
    return outcome


# --- the destination's channel loop --------------------------------------------------------------

GUARD = 2 * PAGE_SIZE
GUARD_BYTE = 0xA5


class BytesStream:
    """A :class:`Stream` over recorded bytes: what a channel thread reads from a socket."""

    def __init__(self, data: bytes, name: str = "fuzz") -> None:
        self.name = name
        self._data = memoryview(data)
        self._pos = 0

    def _fill(self, view: memoryview) -> int:
        view = view.cast("B")
        count = min(view.nbytes, len(self._data) - self._pos)
        view[:count] = self._data[self._pos : self._pos + count]
        self._pos += count
        return count

    def recv_exact_into(self, view: memoryview) -> int:
        want = view.nbytes
        got = self._fill(view)
        if got == want:
            return want
        if got == 0:
            return 0
        raise TruncatedError(f"{self.name}: stream ended after {got} of {want} bytes", value=got, limit=want)

    def recv_into_all(self, views: Sequence[memoryview]) -> None:
        for view in views:
            want = view.nbytes
            got = self._fill(view)
            if got != want:
                raise TruncatedError(f"{self.name}: stream ended inside a payload", value=got, limit=want)

    def send_all(self, buffers: Sequence[Any]) -> None:
        raise ChannelError(f"{self.name}: read-only")

    def peek(self, size: int) -> bytes:
        return bytes(self._data[self._pos : self._pos + size])

    def shutdown(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class GuardedBlock:
    """A target block inside a larger buffer whose bytes around it must never change."""

    name: str
    size: int
    whole: bytearray
    memory: memoryview

    @classmethod
    def make(cls, name: str, size: int) -> GuardedBlock:
        whole = bytearray([GUARD_BYTE]) * (GUARD + size + GUARD)
        block = cls(name, size, whole, memoryview(whole)[GUARD : GUARD + size])
        block.reset()
        return block

    def reset(self) -> None:
        """Zero the block (a fresh destination) and rewrite the guards."""
        self.memory[:] = _zeros(self.size)
        self.whole[:GUARD] = self.whole[GUARD + self.size :] = bytes([GUARD_BYTE]) * GUARD

    def guards_intact(self) -> bool:
        pattern = bytes([GUARD_BYTE]) * GUARD
        return self.whole[:GUARD] == pattern and self.whole[GUARD + self.size :] == pattern


@functools.cache
def _zeros(size: int) -> bytes:
    return bytes(size)


@functools.cache
def _targets(blocks: tuple[tuple[str, int], ...]) -> dict[str, GuardedBlock]:
    """Target blocks of a session, made once (outside the measured part) and reset for each input."""
    return {name: GuardedBlock.make(name, size) for name, size in blocks}


class FreeBarrier(Barrier):
    """A barrier that lets every SYNC through at once (one channel, no main thread)."""

    def arrive(self, channel: int) -> None:
        with self.state.cond:
            self.arrived += 1


def targets_for(limits: ReceiverLimits) -> dict[str, GuardedBlock]:
    assert limits.ramblocks is not None
    blocks = _targets(tuple(sorted(limits.ramblocks.items())))
    for block in blocks.values():
        block.reset()
    return blocks


def receive_mutated(
    data: bytes, limits: ReceiverLimits, codec: Codec, blocks: dict[str, GuardedBlock]
) -> tuple[BaseException | None, bool]:
    """One real destination channel thread reads ``data``; (its error, whether every guard held)."""
    state = RunState()
    channel = RecvChannel(
        0,
        BytesStream(data),
        codec.methods(limits.page_size, None, send_path(codec)),
        limits=limits,
        memory=TargetMemory(blocks, limits.page_size),
        barrier=FreeBarrier(state, 1),
    )
    channel.start()
    channel.thread.join(TIME_BOUND * 4)
    assert not channel.thread.is_alive(), "the channel thread is still running"
    return state.error, all(block.guards_intact() for block in blocks.values())


def engine_codec(seed: Seed) -> Codec:
    return default_registry().get(seed.codec)


def check_engine_input(seed: Seed, ops: Sequence[Op]) -> BaseException | None:
    data = _without_init(mutate(seed, ops, all_seeds()))
    codec = engine_codec(seed)
    blocks = targets_for(seed.limits)
    (error, guards), bounds = measured(lambda: receive_mutated(data, seed.limits, codec, blocks))
    assert guards, f"bytes written outside the target block: {seed.name} {ops}"
    assert error is None or isinstance(error, MfdcompError), f"{seed.name} {ops}: untyped {error!r}"
    bounds.check(len(data), f"channel thread on {seed.name} {ops}")
    return error


def _without_init(data: bytes) -> bytes:
    """The engine reads the init packet before it starts a channel thread: the thread gets the rest."""
    return data[INIT_SIZE:]


# --- the tests -----------------------------------------------------------------------------------


def fuzz_settings(examples: int) -> settings:
    """The fuzz tests' hypothesis settings: ``examples`` inputs, reproducible unless MFDCOMP_FUZZ_RANDOM is set."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=os.environ.get("MFDCOMP_FUZZ_RANDOM") is None,
        # Each input is a whole channel prefix: shrinking one takes minutes, and the ops list is short already.
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target),
        print_blob=True,
    )


def ops_lists(kinds: Sequence[str], max_size: int) -> st.SearchStrategy[list[Op]]:
    """One to ``max_size`` mutations of the given kinds."""
    number = st.integers(0, 2**32 - 1)
    return st.lists(st.tuples(st.sampled_from(kinds), number, number, number), min_size=1, max_size=max_size)


FUZZ = fuzz_settings(int(os.environ.get("MFDCOMP_FUZZ_EXAMPLES", "100")))
ops_strategy = ops_lists(OPS, 4)


def test_seeds_are_valid_channels() -> None:
    """Unmutated, every seed reads to its end with no error, under its session's strict limits."""
    seeds = all_seeds()
    assert capture_seeds(), "no QEMU capture found"
    assert {s.codec for s in codec_seeds()} == set(default_registry().codecs)
    for seed in seeds:
        outcome = read_mutated(seed.data, seed.limits, [len(seed.data)])
        assert outcome.error is None, f"{seed.name}: {outcome.error}"
        assert outcome.events >= len(seed.bounds) - 1
        blocks = targets_for(seed.limits)
        error, guards = receive_mutated(_without_init(seed.data), seed.limits, engine_codec(seed), blocks)
        assert error is None and guards, f"{seed.name}: {error!r}"


@FUZZ
@given(
    index=st.integers(0, 1000),
    ops=ops_strategy,
    splits=st.lists(st.integers(1, 70_000), max_size=6),
    strict=st.booleans(),
)
def test_mutated_channels_end_in_a_typed_error_or_valid_events(
    heap_tracing: None, index: int, ops: list[Op], splits: list[int], strict: bool
) -> None:
    seeds = all_seeds()
    check_reader_input(seeds[index % len(seeds)], ops, splits, strict)


@FUZZ
@given(index=st.integers(0, 1000), ops=ops_strategy)
def test_mutated_channels_into_a_real_channel_thread_stay_inside_the_target(
    heap_tracing: None, index: int, ops: list[Op]
) -> None:
    seeds = all_seeds()
    check_engine_input(seeds[index % len(seeds)], ops)


@pytest.mark.parametrize("kind", ["dup", "drop", "swap"])
def test_reordered_duplicated_or_dropped_records_of_a_stateful_stream_are_refused(kind: str) -> None:
    """A zlib/zstd channel whose data records are duplicated, dropped or swapped must not decode silently."""
    stateful = [s for s in all_seeds() if s.codec in ("zlib", "zstd") and len(s.bounds) > 5]
    assert stateful
    refused = 0
    for seed in stateful:
        data_records = [
            i
            for i, record in enumerate(seed.records())
            if i and len(record) > 1344 and not RamPacket.decode(record[:1344]).is_sync
        ]
        if len(data_records) < 2:
            continue
        first, second = data_records[0], data_records[1]
        op: Op = (kind, first, second, 0)
        error = check_engine_input(seed, [op])
        assert isinstance(error, MfdcompError), f"{seed.name}: {kind} of record {first} decoded without error"
        refused += 1
    assert refused


def test_the_harness_sees_a_write_outside_the_target() -> None:
    """The guard check itself works: a codec that writes one byte too far is caught."""
    block = GuardedBlock.make("ram0", 1 << 16)
    assert block.guards_intact()
    block.whole[GUARD + block.size] = 0
    assert not block.guards_intact()


def test_truncation_at_every_record_boundary_and_inside_ends_typed() -> None:
    for seed in all_seeds():
        for start, end in zip(seed.bounds, seed.bounds[1:], strict=False):
            for cut in {start + 1, (start + end) // 2, end - 1}:
                outcome = read_mutated(seed.data[:cut], seed.limits, [])
                assert isinstance(outcome.error, TruncatedError), f"{seed.name} cut at {cut}: {outcome.error!r}"


def test_every_field_of_every_record_at_every_edge_value() -> None:
    """Exhaustive over fields × edge values on the first records of each seed: typed errors only."""
    inputs = 0
    for whole in all_seeds():
        if whole.name.endswith("ch1.bin"):
            continue  # one channel of each capture: the other has the same kinds of records
        for record in range(min(4, len(whole.bounds) - 2)):
            seed = short(whole, record + 2)  # the mutated record and the one after it
            fields = INIT_FIELDS if record == 0 else RAM_FIELDS
            for f in range(len(fields)):
                for v in range(len(INTERESTING)):
                    data = mutate(seed, [("field", record, f, v)], ())
                    read_mutated(data, seed.limits, [])
                    inputs += 1
    assert inputs > 1000


def short(seed: Seed, records: int) -> Seed:
    """The first ``records`` records of a seed (the init packet counts)."""
    bounds = seed.bounds[: records + 1]
    return Seed(seed.name, seed.data[: bounds[-1]], bounds, seed.limits, seed.codec)


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from(">I", data, offset)[0])


def test_init_packets_of_other_sessions_are_refused() -> None:
    seed = capture_seeds()[0]
    for field_at, value in ((0, 0x11223345), (4, 2)):
        data = bytearray(seed.data)
        data[field_at : field_at + 4] = value.to_bytes(4, "big")
        outcome = read_mutated(bytes(data), seed.limits, [])
        assert outcome.error is not None and outcome.events == 0
    assert _u32(seed.data, 0) == 0x11223344


def test_a_thread_pool_of_readers_shares_nothing() -> None:
    """Readers of one session on several threads at once (ids claimed concurrently) stay typed.

    (No heap bound here: tracemalloc's peak would add up every thread's inputs.)
    """
    seeds = [s for s in capture_seeds() if s.limits.channels == 2]
    errors: list[BaseException] = []
    ids = ChannelIds()

    def run(seed: Seed, ops: list[Op]) -> None:
        try:
            reader = ChannelReader(seed.limits, channel_ids=ids)
            reader.feed(mutate(seed, ops, all_seeds()))
            reader.feed_eof()
            list(reader)
        except MfdcompError:
            pass
        except BaseException as exc:
            errors.append(exc)

    rng = random.Random(7)
    threads = [threading.Thread(target=run, args=(seeds[i % len(seeds)], random_ops(rng))) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors

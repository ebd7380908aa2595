"""The source end of a session: connect, send every round, sync, and learn the outcome."""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mfdcomp.clients.ram import check_digest_available
from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine import threads
from mfdcomp.engine.mainstream import MainStream
from mfdcomp.engine.source import ChannelEngine, PageBlock, SourceEngine
from mfdcomp.engine.state import RemoteError, RunState
from mfdcomp.engine.stats import ChannelStats, totals
from mfdcomp.errors import ChannelError, MfdcompError
from mfdcomp.methods import Codec, PathChoice, choose_path
from mfdcomp.pagedigest import ALGORITHM as STREAMED_DIGEST
from mfdcomp.pagedigest import PageDigests
from mfdcomp.transport.base import PeerGoneError, Stream
from mfdcomp.wire import page_count
from mfdcomp.zeropage import partition, zero_flags

ZERO_PAGE_MODES = ("none", "legacy", "multifd")


class SourceRam(Protocol):
    """What the source needs of a RAM client."""

    blocks: Any

    def iter_batches(self, max_pages: int = 128) -> Any: ...

    def perturb(self, fraction: float, rng: np.random.Generator) -> int: ...

    def mark_all_dirty(self) -> None: ...

    def digests(self, algorithm: str = ...) -> dict[str, str]: ...


@dataclass(frozen=True)
class MigrateOptions:
    channels: int = 2
    level: int | None = None
    zero_page_detection: str = "multifd"
    rounds: int = 1
    dirty_fraction: float = 0.0
    seed: int = 0
    page_size: int = 4096
    uuid: bytes = field(default_factory=lambda: uuidlib.uuid4().bytes)
    result_timeout: float = 60.0
    """Seconds to wait for the destination to accept the session, and for its verdict after the digests."""
    idle_timeout: float | None = None
    """Seconds the destination may stay silent before accepting the session (None: result_timeout).
    Writes are bounded by the connections themselves (``connect(..., send_idle_timeout=S)``)."""
    require_hw: bool = False
    force_sw: bool = False
    digest: str = "sha256"
    """The verification's digest (mfdcomp.clients.ram.DIGESTS); sha256 also reaches a destination of version 2."""

    def __post_init__(self) -> None:
        if not 1 <= self.channels <= 255:
            raise MfdcompError(f"multifd-channels must be 1-255, got {self.channels}")
        if self.zero_page_detection not in ZERO_PAGE_MODES:
            raise MfdcompError(f"zero-page-detection must be one of {', '.join(ZERO_PAGE_MODES)}")
        if self.result_timeout <= 0 or (self.idle_timeout is not None and self.idle_timeout <= 0):
            raise MfdcompError("timeouts must be positive")
        if self.rounds < 1:
            raise MfdcompError(f"rounds must be at least 1, got {self.rounds}")
        if not 0.0 <= self.dirty_fraction <= 1.0:
            raise MfdcompError(f"dirty fraction must be between 0 and 1, got {self.dirty_fraction}")
        check_digest_available(self.digest)


@dataclass
class MigrateResult:
    seconds: float
    transfer_seconds: float
    rounds: int
    channels: list[ChannelStats]
    main_zero_pages: int
    digests: dict[str, str]
    destination: dict[str, Any]
    path: PathChoice
    transfer_cpu_seconds: float = 0.0
    """CPU time of this process (every thread, user and system) during the transfer."""
    digest: str = "sha256"
    """The algorithm of ``digests``."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds from the start to each step of the session, in order (where the time went)."""

    @property
    def ok(self) -> bool:
        return bool(self.destination.get("ok"))

    def as_dict(self) -> dict[str, Any]:
        total = totals(self.channels)
        return {
            "ok": self.ok,
            "seconds": self.seconds,
            "transfer_seconds": self.transfer_seconds,
            "transfer_cpu_seconds": self.transfer_cpu_seconds,
            "rounds": self.rounds,
            "path": {"chosen": str(self.path.path), "passed_over": list(self.path.passed_over)},
            "totals": total | {"main_zero_pages": self.main_zero_pages},
            "channels": [c.as_dict() for c in self.channels],
            "digest": self.digest,
            "digests": self.digests,
            "destination": self.destination,
            "phases": self.phases,
        }


def migrate(
    ram: SourceRam,
    connect: Callable[[], Stream],
    codec: Codec,
    options: MigrateOptions,
    *,
    on_progress: Callable[[int], None] | None = None,
    plan: RoundPlan | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
) -> MigrateResult:
    """Send every block of ``ram`` to a destination reached by ``connect()``.

    ``plan`` and ``on_round`` are those of :func:`send_rounds`.
    """
    state = RunState()
    started = time.monotonic()
    cpu_started = time.process_time()
    level = codec.info.check_level(options.level)
    choice = choose_path(codec.info, codec.probe(), require_hw=options.require_hw, force_sw=options.force_sw)
    main = MainStream(connect())
    phases: dict[str, float] = {}

    def mark(step: str) -> None:
        phases[step] = time.monotonic() - started

    mark("main channel connected")
    outcome: dict[str, Any] = {}
    ready = threading.Event()
    got_result = threading.Event()
    session = mc.Session(
        uuid=options.uuid.hex(),
        page_size=options.page_size,
        channels=options.channels,
        codec=codec.info.name,
        level=level,
        zero_page_detection=options.zero_page_detection,
        blocks=[(name, block.size) for name, block in ram.blocks.items()],
        digest=options.digest,
    )
    page_digests = (
        PageDigests({name: block.size for name, block in ram.blocks.items()}, options.page_size)
        if options.digest == STREAMED_DIGEST
        else None
    )
    reader: threading.Thread | None = None
    engine: SourceEngine | None = None
    streams: list[Stream] = []
    try:
        state.on_fail(main.report_error, keep=main.stream)
        state.register(main.stream)
        # Inside the try: a peer gone before the opening must not leak the socket.
        main.write(mc.opening(options.digest) + mc.encode(mc.Message.SESSION, session.to_json()))
        reader = threading.Thread(
            target=_read_main, args=(main, state, outcome, ready, got_result), name="mfdcomp-main-reader"
        )
        threads.start(reader)
        # A destination that cannot take the session (no room for its target, say)
        # answers ERROR here, before any channel connects to a listener it has closed.
        accept_wait = options.result_timeout
        if options.idle_timeout is not None:
            accept_wait = min(accept_wait, options.idle_timeout)
        state.wait_for(ready.is_set, "the destination to accept the session", accept_wait)
        mark("session accepted")
        for _ in range(options.channels):
            streams.append(connect())  # kept in the list at once, so a later failure closes it
        mark("channels connected")
        engine = SourceEngine(
            streams,
            codec,
            level=level,
            page_size=options.page_size,
            uuid=options.uuid,
            detect_zero_pages=options.zero_page_detection == "multifd",
            path=choice.path,
            require_hw=options.require_hw,
            state=state,
            on_packet=on_progress,
            page_digests=page_digests,
        )
        engine.start()
        sent = send_rounds(ram, engine, main, options, on_progress, plan, on_round)
        engine.finish()
        transferred = time.monotonic() - started
        transfer_cpu = time.process_time() - cpu_started
        mark("last packet sent")
        for stream in streams:
            stream.close()
        # EOS first, so the destination hashes its copy while this side hashes its own.
        main.write(mc.encode(mc.Message.EOS))
        # The streamed tables, or (sha256, blake3) the whole images read again.
        digests = page_digests.hexdigests() if page_digests is not None else ram.digests(options.digest)
        mark("source hashed")
        main.write(mc.encode_digests(digests, options.digest))
        # Not the idle timeout: the destination is silent while it hashes its copy.
        state.wait_for(got_result.is_set, "the destination's result", options.result_timeout)
        mark("verdict received")
    except Exception as exc:
        state.fail(exc)
        state.settle()  # the destination's own reason may follow its vanished channels
        raise _first(state) from exc
    except BaseException as exc:
        # Ctrl-C, SIGTERM (mfdcomp.cli): the destination is told, and the exception goes on as it is.
        state.fail(exc)
        raise
    finally:
        if engine is not None:
            engine.close()
        else:
            for stream in streams:
                stream.close()
        main.stream.shutdown()
        threads.join(reader)
        main.stream.close()
        state.close()
    return MigrateResult(
        seconds=time.monotonic() - started,
        transfer_seconds=transferred,
        transfer_cpu_seconds=transfer_cpu,
        rounds=sent.rounds,
        channels=engine.stats(),
        main_zero_pages=sent.main_zero_pages,
        digests=digests,
        destination=outcome,
        path=choice,
        digest=options.digest,
        phases=phases,
    )


def _first(state: RunState) -> MfdcompError:
    error = state.first_error()
    assert error is not None
    return error


@dataclass(frozen=True)
class RoundReport:
    """One round as the source saw it."""

    number: int
    dirty_fraction: float  # of all pages, changed before the round (1.0: the first round sends every page)
    pages: int  # dirty pages sent, on the channels or (legacy zero pages) on the main channel
    perturb_seconds: float
    send_seconds: float  # from the first batch to the FLUSH


RoundPlan = Callable[[int], float | None]
"""The dirty fraction of round ``n`` (1, 2, ...) asked before it starts, or None to end the migration."""


@dataclass
class RoundsSent:
    rounds: int
    main_zero_pages: int


def send_rounds(
    ram: SourceRam,
    engine: ChannelEngine[Any],
    main: MainStream | None,
    options: MigrateOptions,
    on_progress: Callable[[int], None] | None,
    plan: RoundPlan | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
) -> RoundsSent:
    """Every round: the channels send every dirty batch, then SYNC + FLUSH.

    Rounds follow ``plan``, by default ``options.rounds`` rounds that each
    change ``options.dirty_fraction`` of the pages. Without a main channel (a
    file) a round ends at the channels' sync alone.
    """
    # Made at the first perturbation: importing numpy.random took 3-5 ms of every session, most have one round.
    rng: np.random.Generator | None = None
    plan = plan or (lambda number: options.dirty_fraction if number < options.rounds else None)
    ram.mark_all_dirty()  # a new destination starts empty: every page goes in the first round
    sent = RoundsSent(rounds=0, main_zero_pages=0)
    fraction: float | None = 1.0
    while fraction is not None:
        began = time.monotonic()
        if sent.rounds:
            rng = rng or np.random.default_rng(options.seed)
            ram.perturb(fraction, rng)
        perturbed = time.monotonic()
        batches = _RoundBatches(ram, main, options, on_progress, engine.page_digests)
        engine.send_round(batches)
        if main is not None:
            main.write(mc.encode(mc.Message.FLUSH))
        sent.main_zero_pages += batches.main_zero
        if on_round is not None:
            on_round(RoundReport(sent.rounds, fraction, batches.pages, perturbed - began, time.monotonic() - perturbed))
        sent.rounds += 1
        fraction = plan(sent.rounds)
    return sent


class _RoundBatches:
    """One round's dirty pages as batches, block by block: the migration thread's fill step.

    The channel threads iterate it, one batch at a time under the engine's
    take lock, so legacy zero pages reach the main channel in batch order.
    """

    def __init__(
        self,
        ram: SourceRam,
        main: MainStream | None,
        options: MigrateOptions,
        on_progress: Callable[[int], None] | None,
        page_digests: PageDigests | None = None,
    ) -> None:
        self.ram = ram  # set once
        self.page_digests = page_digests  # set once
        self.main = main if options.zero_page_detection == "legacy" else None  # set once
        self.page_size = options.page_size  # set once
        self.on_progress = on_progress  # set once
        self.main_zero = 0  # by the iterating thread; read after the round
        self.pages = 0  # by the iterating thread; read after the round

    def __iter__(self) -> Iterator[tuple[PageBlock, list[int]]]:
        ps = self.page_size
        for block, offsets in self.ram.iter_batches(page_count(ps)):
            self.pages += len(offsets)
            if self.main is not None:
                count = len(offsets)
                offsets = _split_legacy_zero(block, offsets, self.main, ps, self.page_digests)
                self.main_zero += count - len(offsets)
                if self.on_progress is not None:
                    self.on_progress((count - len(offsets)) * ps)
            if offsets:
                yield block, offsets


def _split_legacy_zero(
    block: PageBlock, offsets: list[int], main: MainStream, page_size: int, page_digests: PageDigests | None
) -> list[int]:
    """Legacy mode: zero pages go on the main channel, the rest to the channels."""
    zero = zero_flags(block.memory, offsets, page_size)
    normal_num = partition(offsets, zero)
    if normal_num < len(offsets):
        main.write(mc.encode_zero(block.name, offsets[normal_num:]))
        if page_digests is not None:
            page_digests.set_zero(block.name, offsets[normal_num:])
    return offsets[:normal_num]


def _read_main(
    main: MainStream,
    state: RunState,
    outcome: dict[str, Any],
    ready: threading.Event,
    got_result: threading.Event,
) -> None:
    """The destination's words on the main channel: READY, then RESULT; or ERROR at any time."""
    try:
        while (message := main.read()) is not None:
            kind, body = message
            if kind is mc.Message.ERROR:
                raise RemoteError(f"destination: {body.decode(errors='replace')}")
            if kind is mc.Message.READY and not ready.is_set():
                with state.cond:
                    ready.set()
                    state.cond.notify_all()
                continue
            if kind is not mc.Message.RESULT or not ready.is_set():
                raise ChannelError(f"unexpected {kind.name} message from the destination")
            outcome.update(mc.decode_json(kind, body))
            with state.cond:
                got_result.set()
                state.cond.notify_all()
            return
        if state.error is None or state.lingering:
            raise PeerGoneError("destination closed the main channel before sending its result")
    except BaseException as exc:
        state.fail(exc)

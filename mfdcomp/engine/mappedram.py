"""Migration to and from a file in the mapped-ram layout: no packets, pages at fixed offsets.

The source's channel threads each hold their own descriptor of the file and
``pwritev`` the normal pages of a batch into their slots; zero pages only
clear their bit. The round's sync is the hand-off's own: every channel idle.
The loader reads the bitmaps and ``preadv``s runs of present pages straight
into target memory, in chunks of at most 1 MiB spread over its channels.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine import threads
from mfdcomp.engine.destination import TargetBlock
from mfdcomp.engine.incoming import IncomingResult
from mfdcomp.engine.migrate import MigrateOptions, MigrateResult, SourceRam, send_rounds
from mfdcomp.engine.source import ChannelEngine, PageBlock, _SendChannel
from mfdcomp.engine.state import RunState
from mfdcomp.engine.stats import ChannelStats
from mfdcomp.errors import ChannelError, CodecError, MfdcompError, TruncatedError, WireError
from mfdcomp.methods import Codec, PathChoice, SendPayload, choose_path
from mfdcomp.pagestore import page_runs
from mfdcomp.transport import mappedram as mr


class SlotWriter:
    """One channel's descriptor of the file; writes never block on a peer."""

    def __init__(self, path: Path, index: int) -> None:
        self.name = f"file:{path}#{index}"
        self.fd = os.open(path, os.O_WRONLY)  # set once; closed by close()

    def shutdown(self) -> None:
        """Nothing blocks on a file: the channel thread sees the error flag at its next batch."""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _pwrite_all(fd: int, data: Buffer, offset: int) -> None:
    """Write all of ``data`` at ``offset``, resuming short writes (a nearly full disk writes part, then fails)."""
    view = memoryview(data).cast("B")
    done = 0
    while done < view.nbytes:
        written = os.pwrite(fd, view[done:], offset + done)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += written


class MappedRamSourceEngine(ChannelEngine[SlotWriter]):
    """Channel threads that put pages in their fixed slots of the file."""

    def __init__(self, writers: list[SlotWriter], places: Mapping[str, mr.BlockPlace], **kwargs: Any) -> None:
        super().__init__(writers, **kwargs)
        self.places = places  # set once
        # One flag per page; the batches of one round name distinct pages, so channels never share an entry.
        self.bitmaps = {name: np.zeros(place.pages, dtype=np.bool_) for name, place in places.items()}

    def _open_channel(self, channel: _SendChannel[SlotWriter]) -> None:
        """A file channel has no init packet."""

    def _write_batch(
        self,
        channel: _SendChannel[SlotWriter],
        block: PageBlock,
        normal: list[int],
        zero: list[int],
        payload: SendPayload,
    ) -> int:
        place = self.places[block.name]
        ps = self.page_size
        fd = channel.stream.fd
        for first, count in page_runs(normal, ps):
            # Raw pages only (checked at the start): a run of adjacent pages is one slice of the block.
            start = normal[first]
            offset = place.pages_offset + start
            want = count * ps
            try:
                _pwrite_all(fd, block.memory[start : start + want], offset)
            except OSError as exc:
                raise ChannelError(f"{channel.stream.name}: writing {want} bytes at {offset}: {exc.strerror}") from exc
        bitmap = self.bitmaps[block.name]
        bitmap[[o // ps for o in normal]] = True
        bitmap[[o // ps for o in zero]] = False
        return payload.size

    def _send_sync(self, channel: _SendChannel[SlotWriter]) -> None:
        """No SYNC packet in a file: the round ends when every channel is idle."""


@dataclass(frozen=True)
class FileManifest:
    session: mc.Session
    digests: dict[str, str]

    def encode(self) -> bytes:
        return json.dumps({"session": json.loads(self.session.to_json()), "digests": self.digests}).encode()

    @classmethod
    def decode(cls, data: bytes) -> FileManifest:
        """The manifest of a file that may have been crafted: every value checked as a peer's would be."""
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested brackets
            raise WireError(f"file manifest is malformed: {exc}", field="manifest") from exc
        if type(body) is not dict or type(body.get("session")) is not dict:
            raise WireError("file manifest is not an object with a session object", field="manifest")
        session = mc.Session.from_json(json.dumps(body["session"]).encode())
        return cls(session, mc.check_digests(body.get("digests")))


def save_to_file(
    ram: SourceRam,
    path: Path,
    codec: Codec,
    options: MigrateOptions,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> MigrateResult:
    """Write every block of ``ram`` to ``path``; the file is marked complete only at the very end."""
    if codec.info.qemu_flag != 0 or codec.info.extension_id is not None:
        raise CodecError(
            f"a mapped-ram file holds raw pages only: use --multifd-compression none, not {codec.info.name}"
        )
    if options.zero_page_detection == "legacy":
        raise MfdcompError("a mapped-ram file has no main channel for legacy zero pages: use multifd or none")
    started = time.monotonic()
    choice: PathChoice = choose_path(codec.info, codec.probe())
    blocks = [(name, block.size) for name, block in ram.blocks.items()]
    places = {p.name: p for p in mr.layout(blocks, options.page_size)}
    end = max(p.end for p in places.values())
    session = mc.Session(
        uuid=options.uuid.hex(),
        page_size=options.page_size,
        channels=options.channels,
        codec=codec.info.name,
        level=None,
        zero_page_detection=options.zero_page_detection,
        blocks=blocks,
    )
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    engine: MappedRamSourceEngine | None = None
    try:
        _pwrite_all(fd, mr.FileHeader(mr.STATE_WRITING, options.page_size, 0, 0).encode(), 0)
        for place in places.values():
            _pwrite_all(fd, place.record(), place.record_offset)
        os.ftruncate(fd, end)
        engine = MappedRamSourceEngine(
            [SlotWriter(path, i) for i in range(options.channels)],
            places,
            codec=codec,
            level=None,
            page_size=options.page_size,
            uuid=options.uuid,
            detect_zero_pages=options.zero_page_detection == "multifd",
            path=choice.path,
            state=RunState(),
            on_packet=on_progress,
        )
        engine.start()
        send_rounds(ram, engine, None, options, on_progress)
        engine.finish()
        transferred = time.monotonic() - started
        for name, place in places.items():
            bits = np.packbits(engine.bitmaps[name], bitorder="little")
            _pwrite_all(fd, bits.tobytes().ljust(place.bitmap_size, b"\0"), place.bitmap_offset)
        digests = ram.digests()
        manifest = FileManifest(session, digests).encode()
        _pwrite_all(fd, manifest, end)
        os.fsync(fd)
        _pwrite_all(fd, mr.FileHeader(mr.STATE_COMPLETE, options.page_size, end, len(manifest)).encode(), 0)
        os.fsync(fd)
    except OSError as exc:
        raise ChannelError(f"file:{path}: {exc.strerror or exc}") from exc
    finally:
        if engine is not None:
            engine.close()
        os.close(fd)
    return MigrateResult(
        seconds=time.monotonic() - started,
        transfer_seconds=transferred,
        rounds=options.rounds,
        channels=engine.stats(),
        main_zero_pages=0,
        digests=digests,
        destination={"ok": True, "file": str(path), "complete": True},
        path=choice,
    )


def _present_runs(bitmap: npt.NDArray[np.bool_], limit: int) -> Iterator[tuple[int, int]]:
    """(first page, count) of runs of set bits, each at most ``limit`` pages."""
    padded = np.concatenate(([False], bitmap, [False]))
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    for start, stop in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
        for first in range(start, stop, limit):
            yield first, min(limit, stop - first)


@dataclass(frozen=True, slots=True)
class _Chunk:
    """Up to 1 MiB of present pages: where they go, and where they are in the file."""

    target: memoryview
    file_offset: int


def _read_chunks(
    fd: int, name: str, work: list[_Chunk], channels: int, on_progress: Callable[[int], None] | None
) -> list[ChannelStats]:
    """``channels`` threads take chunks in turn and read them straight into target memory."""
    state = RunState()
    lock = threading.Lock()
    queue = iter(work)  # under lock
    stats = [ChannelStats(i) for i in range(channels)]

    def run(channel: int) -> None:
        mine = stats[channel]
        try:
            while state.error is None:
                with lock:
                    chunk = next(queue, None)
                if chunk is None:
                    return
                got = os.preadv(fd, [chunk.target], chunk.file_offset)
                if got != len(chunk.target):
                    raise TruncatedError(
                        f"{name}: {got} of {len(chunk.target)} bytes at {chunk.file_offset}: the file is cut short",
                        field="size",
                        value=got,
                        limit=len(chunk.target),
                    )
                mine.packets += 1
                mine.wire_bytes += got
                if on_progress is not None:
                    on_progress(got)
        except BaseException as exc:
            state.fail(exc)

    loaders = [threading.Thread(target=run, args=(i,), name=f"mfdcomp-load-{i}") for i in range(channels)]
    try:
        for thread in loaders:
            threads.start(thread)
        for thread in loaders:
            thread.join()
    except BaseException as exc:
        state.fail(exc)  # Ctrl-C: the loaders stop before the caller unmaps their targets
        raise
    finally:
        for thread in loaders:
            threads.join(thread)
    state.raise_if_failed("load")
    return stats


def load_from_file(
    path: Path,
    make_targets: Callable[[mc.Session], Mapping[str, TargetBlock]],
    digests: Callable[[], dict[str, str]],
    *,
    channels: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> IncomingResult:
    """Read a complete mapped-ram file into fresh (zeroed) target blocks and check its digests."""
    started = time.monotonic()
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            header = mr.FileHeader.decode(file.read(mr.FILE_HEADER.size), size)
            file.seek(header.manifest_offset)
            manifest = FileManifest.decode(file.read(header.manifest_size))
            session = manifest.session
            if session.page_size != header.page_size:
                raise WireError("page size of the header and the manifest differ", field="page_size")
            places = mr.layout(session.blocks, session.page_size)
            if places and places[-1].end > header.manifest_offset:
                raise WireError("the blocks' pages overlap the manifest", field="manifest_offset")
            blocks = make_targets(session)
            ps = session.page_size
            work: list[_Chunk] = []
            for place in places:
                file.seek(place.record_offset)
                mr.check_record(file.read(place.bitmap_offset - place.record_offset), place)
                file.seek(place.bitmap_offset)
                raw = np.frombuffer(file.read(place.bitmap_size), dtype=np.uint8)
                bitmap = np.unpackbits(raw, bitorder="little")[: place.pages].astype(np.bool_)
                memory = blocks[place.name].memory
                work += [
                    _Chunk(memory[first * ps : (first + count) * ps], place.pages_offset + first * ps)
                    for first, count in _present_runs(bitmap, mr.LOAD_CHUNK // ps)
                ]
            stats = _read_chunks(file.fileno(), f"file:{path}", work, channels or session.channels, on_progress)
    except OSError as exc:
        raise ChannelError(f"file:{path}: {exc.strerror or exc}") from exc
    got = digests()
    return IncomingResult(
        ok=got == manifest.digests,
        seconds=time.monotonic() - started,
        session=session,
        digests=got,
        source_digests=manifest.digests,
        channels=stats,
        main_zero_pages=0,
    )

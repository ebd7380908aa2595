"""The destination end of a session: accept, classify, receive, sync, verify.

Connections arrive on one listener in any order. The first 4 bytes, peeked,
tell the main channel (mfdcomp's MAIN_MAGIC) from multifd channels (the
multifd magic); channels are mapped by the id in their init packet, checked
against the session the main channel announced.
"""

from __future__ import annotations

import struct
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine.destination import Barrier, RecvChannel, TargetBlock, TargetMemory
from mfdcomp.engine.mainstream import MainStream
from mfdcomp.engine.state import RemoteError, RunState
from mfdcomp.engine.stats import ChannelStats
from mfdcomp.errors import ChannelError, ChannelIdError, WireError
from mfdcomp.methods import Codec, CodecPath, choose_path
from mfdcomp.transport.base import Listener, Stream
from mfdcomp.wire import (
    EXTENSION,
    INIT_SIZE,
    MULTIFD_MAGIC,
    ChannelIds,
    InitPacket,
    ReceiverLimits,
    check_init,
)


@dataclass
class IncomingResult:
    ok: bool
    seconds: float
    session: mc.Session
    digests: dict[str, str]
    source_digests: dict[str, str]
    channels: list[ChannelStats]
    main_zero_pages: int
    transfer_cpu_seconds: float = 0.0
    """CPU time of this process (every thread) from the session's start to the end of stream."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": self.seconds,
            "channels": [c.as_dict() for c in self.channels],
            "main_zero_pages": self.main_zero_pages,
            "transfer_cpu_seconds": self.transfer_cpu_seconds,
            "digests": self.digests,
            "source_digests": self.source_digests,
            "codec": self.session.codec,
            "level": self.session.level,
            "zero_page_detection": self.session.zero_page_detection,
        }


TargetFactory = Callable[[mc.Session], Mapping[str, TargetBlock]]
DigestFn = Callable[[], dict[str, str]]


class Incoming:
    """One destination session over ``listener``.

    ``make_targets(session)`` returns the zeroed target blocks, ``digests()``
    their sha256s once the transfer ended; ``find_codec(name)`` looks a codec up.
    """

    def __init__(
        self,
        listener: Listener,
        *,
        make_targets: TargetFactory,
        digests: DigestFn,
        find_codec: Callable[[str], Codec],
        connect_timeout: float = 10.0,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.listener = listener  # set once
        self.state = RunState()
        self._make_targets = make_targets
        self._digests = digests
        self._find_codec = find_codec
        self._connect_timeout = connect_timeout
        self._on_progress = on_progress
        self._main: MainStream | None = None  # under state.cond
        self._session_ready = False  # under state.cond
        self._channels: dict[int, RecvChannel] = {}  # under state.cond
        self._finishing = False  # under state.cond
        # Set once, by the main thread, before _session_ready turns True:
        self._session: mc.Session | None = None
        self._limits: ReceiverLimits | None = None
        self._memory: TargetMemory | None = None
        self._barrier: Barrier | None = None
        self._codec: Codec | None = None
        self._path: CodecPath | None = None
        self._ids = ChannelIds()

    def run(self) -> IncomingResult:
        started = time.monotonic()
        self._cpu_started = time.process_time()
        acceptor = threading.Thread(target=self._accept_loop, name="mfdcomp-accept")
        acceptor.start()
        try:
            self.state.wait_for(lambda: self._main is not None, "the main channel", None)
            assert self._main is not None
            main = self._main
            session = self._start_session(main)
            result = self._follow_main(main, session)
            result.seconds = time.monotonic() - started
            main.write(mc.encode_json(mc.Message.RESULT, {"ok": result.ok, "digests": result.digests}))
            return result
        except BaseException as exc:
            self.state.fail(exc)
            error = self.state.first_error()
            assert error is not None
            raise error from exc
        finally:
            with self.state.cond:
                self._finishing = True
            self.listener.close()
            acceptor.join()
            # Only now: the acceptor may have added a channel while this thread was failing.
            with self.state.cond:
                channels = list(self._channels.values())
            for channel in channels:
                channel.thread.join()
                channel.stream.close()
            if self._main is not None:
                self._main.stream.close()

    def _start_session(self, main: MainStream) -> mc.Session:
        main.read_opening()
        message = main.read()
        if message is None or message[0] is not mc.Message.SESSION:
            raise WireError("main channel did not start with a SESSION message", field="type")
        session = mc.Session.from_json(message[1])
        codec = self._find_codec(session.codec)
        path = choose_path(codec.info, codec.probe()).path
        blocks = self._make_targets(session)
        try:
            uuid = uuidlib.UUID(hex=session.uuid).bytes
        except ValueError as exc:
            raise WireError(f"session uuid {session.uuid!r} is malformed", field="uuid") from exc
        limits = ReceiverLimits(
            page_size=session.page_size,
            channels=session.channels,
            uuid=uuid,
            ramblocks={name: block.size for name, block in blocks.items()},
            codec_flag=EXTENSION if codec.info.qemu_flag is None else codec.info.qemu_flag,
            extension_id=codec.info.extension_id,
        )
        with self.state.cond:
            self._session = session
            self._codec = codec
            self._path = path
            self._limits = limits
            self._memory = TargetMemory(blocks, session.page_size)
            self._barrier = Barrier(self.state, session.channels)
            self._session_ready = True
            self.state.cond.notify_all()
        main.write(mc.encode(mc.Message.READY))
        return session

    def _follow_main(self, main: MainStream, session: mc.Session) -> IncomingResult:
        barrier = self._barrier
        memory = self._memory
        assert barrier is not None and memory is not None
        main_zero = 0
        while True:
            message = main.read()
            if message is None:
                raise ChannelError("main channel closed before the end of stream")
            kind, body = message
            if kind is mc.Message.FLUSH:
                self._wait_channels_connected(session)
                barrier.flush()
            elif kind is mc.Message.ZERO:
                name, offsets = mc.decode_zero(body)
                _check_zero(name, offsets, self._limits)
                memory.apply_zero(name, offsets)
                main_zero += len(offsets)
                if self._on_progress is not None:
                    self._on_progress(len(offsets) * session.page_size)
            elif kind is mc.Message.EOS:
                self._wait_channels_connected(session)
                barrier.wait_all_ended()
                cpu = time.process_time() - self._cpu_started
                digests = self._digests()
                source_digests = self._read_source_digests(main)
                with self.state.cond:
                    channels = [self._channels[i].stats for i in sorted(self._channels)]
                return IncomingResult(
                    ok=digests == source_digests,
                    seconds=0.0,
                    session=session,
                    digests=digests,
                    source_digests=source_digests,
                    channels=channels,
                    main_zero_pages=main_zero,
                    transfer_cpu_seconds=cpu,
                )
            elif kind is mc.Message.ERROR:
                raise RemoteError(f"source: {body.decode(errors='replace')}")
            else:
                raise WireError(f"unexpected {kind.name} message from the source", field="type", value=kind.name)

    def _read_source_digests(self, main: MainStream) -> dict[str, str]:
        message = main.read()
        if message is None:
            raise ChannelError("main channel closed before the source's digests")
        kind, body = message
        if kind is mc.Message.ERROR:
            raise RemoteError(f"source: {body.decode(errors='replace')}")
        if kind is not mc.Message.DIGESTS:
            raise WireError(f"expected DIGESTS after EOS, got {kind.name}", field="type", value=kind.name)
        return mc.decode_digests(body)

    def _wait_channels_connected(self, session: mc.Session) -> None:
        self.state.wait_for(
            lambda: len(self._channels) == session.channels,
            f"all {session.channels} channels to connect",
            self._connect_timeout,
        )

    def _accept_loop(self) -> None:
        try:
            while True:
                try:
                    stream = self.listener.accept()
                except ChannelError:
                    with self.state.cond:
                        if self._finishing or self.state.error is not None:
                            return
                    raise
                self.state.register(stream)
                try:
                    self._classify(stream)
                except BaseException:
                    # Refused before it became the main channel or a channel thread: nothing else closes it.
                    stream.close()
                    raise
        except BaseException as exc:
            self.state.fail(exc)

    def _classify(self, stream: Stream) -> None:
        head = stream.peek(4)
        magic = struct.unpack(">I", head)[0] if len(head) == 4 else None
        if magic == mc.MAIN_MAGIC:
            with self.state.cond:
                if self._main is not None:
                    raise ChannelError(f"{stream.name}: a second main channel")
                self._main = MainStream(stream)
                # At once, under the lock: a failure right after (a second main channel, a bad
                # connection) must reach the peer before fail() shuts the streams down.
                self.state.on_fail(self._main.report_error)
                self.state.cond.notify_all()
            return
        if magic is None:
            raise ChannelError(f"{stream.name}: connection closed after {len(head)} bytes, before its magic")
        if magic != MULTIFD_MAGIC:
            raise WireError(f"{stream.name}: unknown channel magic {head.hex()}", field="magic", value=head.hex())
        self._add_channel(stream)

    def _add_channel(self, stream: Stream) -> None:
        self.state.wait_for(lambda: self._session_ready, "the session before a channel", self._connect_timeout)
        limits, codec, session, path = self._limits, self._codec, self._session, self._path
        assert limits is not None and codec is not None and session is not None and path is not None
        assert self._memory is not None and self._barrier is not None
        with self.state.cond:
            if len(self._channels) >= session.channels:
                raise ChannelIdError(
                    f"{stream.name}: connection beyond the session's {session.channels} channels",
                    field="channels",
                    value=len(self._channels) + 1,
                    limit=session.channels,
                )
        buf = bytearray(INIT_SIZE)
        if stream.recv_exact_into(memoryview(buf)) == 0:
            raise ChannelError(f"{stream.name}: channel closed before its init packet")
        init = InitPacket.decode(buf)
        check_init(init, limits)
        self._ids.claim(init.id)
        channel = RecvChannel(
            init.id,
            stream,
            codec.methods(limits.page_size, session.level, path),
            limits=limits,
            memory=self._memory,
            barrier=self._barrier,
            on_packet=self._on_progress,
        )
        with self.state.cond:
            self._channels[init.id] = channel
            self.state.cond.notify_all()
        channel.start()


def _check_zero(name: str, offsets: tuple[int, ...], limits: ReceiverLimits | None) -> None:
    assert limits is not None and limits.ramblocks is not None
    size = limits.ramblocks.get(name)
    if size is None:
        raise WireError(f"ZERO message for unknown block {name!r}", field="ramblock", value=name)
    for offset in offsets:
        if offset % limits.page_size or offset > size - limits.page_size:
            raise WireError(
                f"ZERO message offset 0x{offset:x} outside block {name!r}", field="offset", value=offset, limit=size
            )

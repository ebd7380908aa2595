"""The destination end of a session: accept, classify, receive, sync, verify.

Connections arrive on one listener in any order. The first 4 bytes, peeked,
tell the main channel (mfdcomp's MAIN_MAGIC) from multifd channels (the
multifd magic); channels are mapped by the id in their init packet, checked
against the session the main channel announced.

Each new connection is classified on its own short-lived thread, within a
handshake deadline of its own (the main channel's opening and SESSION, a
channel's init packet). QEMU reads each connection's first bytes in its one
accept path and would wait on a silent one forever; here a stranger's
connection costs at most its own deadline: one that stays silent, ends early
or starts with an unknown magic is dropped, logged and counted in
:attr:`IncomingResult.dropped_connections`, and never fails the session. A
connection that presents a complete handshake of our protocol speaks for the
source: a wrong one (a bad init packet, a second main channel) fails the
session, as in QEMU.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mfdcomp.clients.ram import check_digest_available
from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine import threads
from mfdcomp.engine.destination import Barrier, RecvChannel, TargetBlock, TargetMemory
from mfdcomp.engine.mainstream import MainStream
from mfdcomp.engine.state import RemoteError, RunState
from mfdcomp.engine.stats import ChannelStats
from mfdcomp.errors import ChannelError, ChannelIdError, MfdcompError, TruncatedError, WireError
from mfdcomp.methods import Codec, CodecPath, choose_path
from mfdcomp.pagedigest import ALGORITHM as STREAMED_DIGEST
from mfdcomp.transport.base import AcceptTimeout, Listener, PeerGoneError, Stream
from mfdcomp.transport.sockets import SocketStream
from mfdcomp.transport.tls import PlainPeerError, TlsAuthzError, TlsError, TlsServer
from mfdcomp.wire import (
    EXTENSION,
    INIT_SIZE,
    MULTIFD_MAGIC,
    ChannelIds,
    InitPacket,
    ReceiverLimits,
    check_init,
)

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a new connection has to present its handshake before it is dropped as a stranger's."""


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
    dropped_connections: list[str] = field(default_factory=list)
    """Strangers' connections dropped during the session, each 'NAME: why'."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds from the main channel's arrival to each step of the session, in order."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dropped_connections": self.dropped_connections,
            "seconds": self.seconds,
            "channels": [c.as_dict() for c in self.channels],
            "main_zero_pages": self.main_zero_pages,
            "transfer_cpu_seconds": self.transfer_cpu_seconds,
            "digest": self.session.digest,
            "digests": self.digests,
            "source_digests": self.source_digests,
            "codec": self.session.codec,
            "level": self.session.level,
            "zero_page_detection": self.session.zero_page_detection,
            "phases": self.phases,
        }


TargetFactory = Callable[[mc.Session], Mapping[str, TargetBlock]]
DigestFn = Callable[[str], dict[str, str]]
"""Every target block's hex digest by the session's algorithm (sha256, blake3)."""
Message = tuple[mc.Message, bytes]


@dataclass(eq=False)
class _Handshake:
    """A connection being classified, on its own thread."""

    stream: Stream
    deadline: float  # monotonic
    thread: threading.Thread | None = None  # set once, before it starts
    reading: bool = True  # under state.cond: still reading its handshake, bound by the deadline
    expired: bool = False  # under state.cond: shut down by the deadline


class Incoming:
    """One destination session over ``listener``.

    ``make_targets(session)`` returns the zeroed target blocks, ``digests(algorithm)``
    their digests by the session's algorithm once the transfer ended; ``find_codec(name)`` looks a codec up.
    ``handshake_timeout`` bounds each new connection's handshake (see the module's text).
    ``on_verified()`` runs once the digests matched and before the source is told so
    (``mfdcomp recv`` renames its targets there). With ``tls``, every connection shakes hands
    first, on its handshake thread and within its deadline; one that fails TLS (a plain peer,
    another CA, a name not in --tls-authz) is refused as a stranger's: dropped and logged.
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
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        on_verified: Callable[[], None] | None = None,
        tls: TlsServer | None = None,
    ) -> None:
        self.listener = listener  # set once
        self._tls = tls
        self.state = RunState()
        self._make_targets = make_targets
        self._digests = digests
        self._find_codec = find_codec
        self._connect_timeout = connect_timeout
        self._on_progress = on_progress
        self._handshake_timeout = handshake_timeout
        self._on_verified = on_verified
        self._main: MainStream | None = None  # under state.cond
        self._first: Message | None = None  # under state.cond: the main channel's SESSION, read by its handshake
        self._handshakes: set[_Handshake] = set()  # under state.cond
        self.dropped: list[str] = []  # under state.cond
        self._main_busy = False  # main thread only: inside a read of the main channel
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
        self._main_at = 0.0  # set once, under state.cond, with _main: when the main channel arrived
        self._phases: dict[str, float] = {}  # main thread only

    def _mark(self, step: str) -> None:
        self._phases[step] = time.monotonic() - self._main_at

    def run(self) -> IncomingResult:
        started = time.monotonic()
        self._cpu_started = time.process_time()
        acceptor = threading.Thread(target=self._accept_loop, name="mfdcomp-accept")
        try:
            threads.start(acceptor)
            self.state.wait_for(lambda: self._first is not None, "the main channel", None)
            assert self._main is not None and self._first is not None
            main = self._main
            self._mark("session read")
            session = self._start_session(main, self._first)
            result = self._follow_main(main, session)
            result.seconds = time.monotonic() - started
            with self.state.cond:
                result.dropped_connections = list(self.dropped)
            if result.ok and self._on_verified is not None:
                self._on_verified()  # an error here is the session's, and the source is told it
            self._mark("verified")
            result.phases = self._phases
            main.write(
                mc.encode_json(
                    mc.Message.RESULT, {"ok": result.ok, "digests": result.digests, "digest": result.session.digest}
                )
            )
            return result
        except Exception as exc:
            self.state.fail(exc)
            self._await_peer_reason()
            error = self.state.first_error()
            assert error is not None
            raise error from exc
        except BaseException as exc:
            # Ctrl-C, SIGTERM (mfdcomp.cli): the peer is told, and the exception goes on as it is.
            self.state.fail(exc)
            raise
        finally:
            with self.state.cond:
                self._finishing = True
            self.listener.close()
            threads.join(acceptor)
            self._end_handshakes()
            # Only now: a handshake may have added a channel while this thread was failing.
            with self.state.cond:
                channels = list(self._channels.values())
            for channel in channels:
                threads.join(channel.thread)
                channel.stream.close()
            if self._main is not None:
                self._main.stream.close()
            self.state.close()

    def _await_peer_reason(self) -> None:
        """After a failure that only says the source went away: read its ERROR, if it sent one.

        Bounded: the run state's grace ends by shutting the main channel down.
        """
        main = self._main
        if main is None or self._main_busy or not self.state.lingering:
            return
        with contextlib.suppress(MfdcompError):
            while (message := main.read()) is not None:
                if message[0] is mc.Message.ERROR:
                    self.state.fail(RemoteError(f"source: {message[1].decode(errors='replace')}"))
                    return

    def _read_main(self, main: MainStream) -> Message | None:
        self._main_busy = True  # a failure inside leaves the stream mid-message
        message = main.read()
        self._main_busy = False
        return message

    def _start_session(self, main: MainStream, message: Message) -> mc.Session:
        if message[0] is not mc.Message.SESSION:
            raise WireError("main channel did not start with a SESSION message", field="type")
        session = mc.Session.from_json(message[1])
        check_digest_available(session.digest)  # before READY: the source learns it before sending a page
        codec = self._find_codec(session.codec)
        path = choose_path(codec.info, codec.probe()).path
        blocks = self._make_targets(session)
        self._mark("targets allocated")
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
            self._memory = TargetMemory(blocks, session.page_size, hash_pages=session.digest == STREAMED_DIGEST)
            self._barrier = Barrier(self.state, session.channels)
            self._session_ready = True
            self.state.cond.notify_all()
        main.write(mc.encode(mc.Message.READY))
        self._mark("session accepted")
        return session

    def _follow_main(self, main: MainStream, session: mc.Session) -> IncomingResult:
        barrier = self._barrier
        memory = self._memory
        assert barrier is not None and memory is not None
        main_zero = 0
        while True:
            message = self._read_main(main)
            if message is None:
                raise PeerGoneError("main channel closed before the end of stream")
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
                self._mark("end of stream")
                cpu = time.process_time() - self._cpu_started
                if memory.page_digests is not None:
                    digests = memory.page_digests.hexdigests()  # hashed as the pages were written
                else:
                    digests = self._digests(session.digest)
                self._mark("destination hashed")
                source_digests = self._read_source_digests(main, session.digest)
                self._mark("source digests read")
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

    def _read_source_digests(self, main: MainStream, algorithm: str) -> dict[str, str]:
        message = self._read_main(main)
        if message is None:
            raise PeerGoneError("main channel closed before the source's digests")
        kind, body = message
        if kind is mc.Message.ERROR:
            raise RemoteError(f"source: {body.decode(errors='replace')}")
        if kind is not mc.Message.DIGESTS:
            raise WireError(f"expected DIGESTS after EOS, got {kind.name}", field="type", value=kind.name)
        return mc.decode_digests(body, algorithm)

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
                    stream = self.listener.accept(self._reap())
                except ChannelError as exc:
                    with self.state.cond:
                        if self._finishing or self.state.error is not None:
                            return
                    if isinstance(exc, AcceptTimeout):  # a handshake's deadline came: _reap() ends it
                        continue
                    raise
                self._start_handshake(stream)
        except BaseException as exc:
            self.state.fail(exc)

    def _reap(self) -> float | None:
        """Shut down handshakes past their deadline; seconds until the next deadline (None: none)."""
        now = time.monotonic()
        nearest: float | None = None
        with self.state.cond:
            for hs in self._handshakes:
                if not hs.reading or hs.expired:
                    continue
                if hs.deadline <= now:
                    hs.expired = True
                    with contextlib.suppress(ChannelError):
                        hs.stream.shutdown()
                elif nearest is None or hs.deadline < nearest:
                    nearest = hs.deadline
        return None if nearest is None else nearest - now

    def _start_handshake(self, stream: Stream) -> None:
        hs = _Handshake(stream, time.monotonic() + self._handshake_timeout)
        hs.thread = threading.Thread(target=self._handshake, args=(hs,), name="mfdcomp-handshake")
        with self.state.cond:
            if self._finishing or self.state.error is not None:
                stream.close()
                return
            self._handshakes.add(hs)
        threads.start(hs.thread)

    def _end_handshakes(self) -> None:
        """At the end of the session: stop the connections still in their handshake, and join every thread."""
        with self.state.cond:
            pending = list(self._handshakes)
            main = self._main.stream if self._main is not None else None
            for hs in pending:
                # Not the main channel's: the failure's report may still be on its way to it, and the
                # run state shuts it down right after (see RunState.fail).
                if hs.reading and hs.stream is not main:
                    with contextlib.suppress(ChannelError):
                        hs.stream.shutdown()
        for hs in pending:
            assert hs.thread is not None
            threads.join(hs.thread)

    def _drop(self, hs: _Handshake, why: str) -> None:
        with self.state.cond:
            if hs.expired:
                why = f"no complete handshake within {self._handshake_timeout:g} s"
            finishing = self._finishing
            if not finishing:
                self.dropped.append(f"{hs.stream.name}: {why}")
        hs.stream.close()
        if not finishing:
            log.warning("dropped connection %s: %s", hs.stream.name, why)

    def _handshake(self, hs: _Handshake) -> None:
        """Classify one connection: the main channel, a channel, or a stranger's (dropped)."""
        stream = hs.stream
        owned = True  # until the stream is the main channel's or a channel thread's
        try:
            if self._tls is not None:
                if not self._secure(hs):
                    return
                stream = hs.stream
            try:
                head = stream.peek(4)
            except (ChannelError, TruncatedError) as exc:
                return self._drop(hs, f"no magic: {exc}")
            if len(head) < 4:
                return self._drop(hs, f"closed after {len(head)} bytes, before its magic")
            magic = struct.unpack(">I", head)[0]
            if magic == mc.MAIN_MAGIC:
                owned = False  # the main channel's (closed by run()), or closed here below when refused
                try:
                    self._take_main(hs)
                except BaseException:
                    with self.state.cond:
                        owned = self._main is None or self._main.stream is not stream
                    raise
            elif magic == MULTIFD_MAGIC:
                owned = not self._add_channel(hs)
            else:
                self._drop(hs, f"unknown magic {head.hex()} (neither a multifd channel nor a main channel)")
                owned = False
        except BaseException as exc:
            with self.state.cond:
                finishing = self._finishing
            if not finishing:  # a late connection after the session's end is nobody's concern
                self.state.fail(exc)
        finally:
            if owned:
                stream.close()
            with self.state.cond:
                self._handshakes.discard(hs)

    def _secure(self, hs: _Handshake) -> bool:
        """The TLS handshake of a new connection; False when it was refused (and dropped)."""
        assert self._tls is not None
        plain = hs.stream
        if not isinstance(plain, SocketStream):
            self._drop(hs, "TLS needs a socket connection")
            return False
        with self.state.cond:
            # Swapped under the lock, with no I/O yet: the deadline then shuts down whichever is current.
            stream = self._tls.wrap(plain, on_plain=_plain_refusal)
            hs.stream = stream
        try:
            stream.accept_handshake(hs.deadline)
        except TlsAuthzError as exc:
            # Authenticated but not allowed: a source's main channel is told why, in TLS, before the drop.
            with contextlib.suppress(MfdcompError):
                if stream.peek(4) == struct.pack(">I", mc.MAIN_MAGIC):
                    MainStream(stream).report_error(exc)
            self._drop(hs, f"TLS refused: {exc}")
            return False
        except (PlainPeerError, TlsError) as exc:
            self._drop(hs, f"TLS refused: {exc}")
            return False
        except ChannelError as exc:
            self._drop(hs, f"TLS handshake not completed: {exc}")
            return False
        return True

    def _take_main(self, hs: _Handshake) -> None:
        """The main channel's handshake.

        The first connection with the main magic is the main channel at once (it speaks our
        protocol): the error hook then reaches it whatever fails next, and a failure of the rest
        of its handshake fails the session.
        """
        stream = hs.stream
        main = MainStream(stream)
        with self.state.cond:
            second = self._main is not None
            if not second:
                self._main = main
                self._main_at = time.monotonic()
        if second:
            error = ChannelError(f"{stream.name}: a second main channel")
            main.report_error(error)  # the refused one is told why, too
            raise error
        # Report first, then register: a failure that came first reaches the peer before the shutdown.
        self.state.on_fail(main.report_error, keep=stream)
        self.state.register(stream)
        try:
            main.read_opening()
            first = main.read()
            if first is None:
                raise PeerGoneError(f"{stream.name}: main channel closed before its SESSION message")
        except ChannelError as exc:
            with self.state.cond:
                if hs.expired:
                    raise ChannelError(
                        f"{stream.name}: main channel sent no SESSION within {self._handshake_timeout:g} s"
                    ) from exc
            raise
        with self.state.cond:
            hs.reading = False
            self._first = first
            self.state.cond.notify_all()

    def _add_channel(self, hs: _Handshake) -> bool:
        """A channel's handshake: its init packet, checked against the session. True once it runs."""
        stream = hs.stream
        buf = bytearray(INIT_SIZE)
        try:
            got = stream.recv_exact_into(memoryview(buf))
        except (ChannelError, TruncatedError) as exc:
            self._drop(hs, f"init packet not completed: {exc}")
            return True
        if got == 0:
            self._drop(hs, "closed before its init packet")
            return True
        with self.state.cond:
            hs.reading = False
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
            if self._finishing:
                raise ChannelError(f"{stream.name}: channel connected after the session ended")
            self._channels[init.id] = channel
            self.state.cond.notify_all()
        channel.start()
        self.state.register(stream)  # after start(): a failure that came first stops the thread at once
        return True


def _plain_refusal(head: bytes) -> bytes | None:
    """What a plain mfdcomp source's main channel reads from a TLS destination: why it is refused."""
    if head != struct.pack(">I", mc.MAIN_MAGIC):
        return None
    why = b"this destination accepts only TLS connections: start the source with --tls-creds"
    return mc.encode(mc.Message.ERROR, why)


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

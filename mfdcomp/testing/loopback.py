"""Run both ends of a session in one process over a real loopback transport.

The conformance checks and the engine's own tests use this: the destination
runs in a thread, the source in the caller, and both outcomes (a result or
the error each end ended with) come back together, so a test can assert
that *both* ends reported a failure.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typing_extensions import Buffer

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine import threads
from mfdcomp.engine.incoming import Incoming, IncomingResult
from mfdcomp.engine.migrate import MigrateOptions, MigrateResult, SourceRam, migrate
from mfdcomp.errors import MfdcompError
from mfdcomp.methods import Codec
from mfdcomp.registry import get_codec
from mfdcomp.transport.address import parse_address
from mfdcomp.transport.base import Listener, Stream
from mfdcomp.transport.sockets import connect, listen

TRANSPORTS = ("tcp", "tcp6", "unix", "fd")
SOURCE_FAILED_GRACE = 5.0

StreamWrapper = Callable[[int, Stream], Stream]
"""Wraps the n-th connection the source opens or the destination accepts (0 is the main channel)."""


class AnonymousTargets:
    """A destination's target memory in fresh anonymous blocks, made when the session arrives.

    Pass the object as ``make_targets`` and its :meth:`digests` as ``digests``;
    :meth:`close` releases what was made.
    """

    def __init__(self) -> None:
        self.clients: list[RamClient] = []  # the session's client once it has started

    def __call__(self, session: mc.Session) -> Any:
        client = RamClient.anonymous(session.blocks, page_size=session.page_size)
        self.clients.append(client)
        return client.blocks

    def digests(self, algorithm: str = "sha256") -> dict[str, str]:
        return self.clients[0].digests(algorithm)

    def close(self) -> None:
        for client in self.clients:
            client.close()


class ForwardingStream:
    """A :class:`Stream` that passes every call to ``inner``.

    The base of a ``wrap`` for :func:`run_loopback` that changes only some
    calls (a lagging or failing channel, say): override those.
    """

    def __init__(self, inner: Stream) -> None:
        self.inner = inner
        self.name = inner.name

    def send_all(self, buffers: Sequence[Buffer]) -> None:
        self.inner.send_all(buffers)

    def recv_exact_into(self, view: memoryview) -> int:
        return self.inner.recv_exact_into(view)

    def recv_into_all(self, views: Sequence[memoryview]) -> None:
        self.inner.recv_into_all(views)

    def peek(self, size: int) -> bytes:
        return self.inner.peek(size)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def close(self) -> None:
        self.inner.close()


class _WrappingListener:
    """Hands each accepted connection to a wrapper, numbered in order of arrival."""

    def __init__(self, listener: Listener, wrap: StreamWrapper) -> None:
        self._listener = listener
        self._wrap = wrap
        self._accepted = 0
        self.address = listener.address

    def accept(self, timeout: float | None = None) -> Stream:
        stream = self._listener.accept(timeout)
        index, self._accepted = self._accepted, self._accepted + 1
        return self._wrap(index, stream)

    def close(self) -> None:
        self._listener.close()


@dataclass
class LoopbackOutcome:
    source: MigrateResult | None
    source_error: BaseException | None
    destination: IncomingResult | None
    destination_error: BaseException | None

    @property
    def ok(self) -> bool:
        return self.source is not None and self.source.ok and self.destination is not None and self.destination.ok

    def raise_for_errors(self) -> None:
        """Raise the first error of either end, or complain when digests differ."""
        for error in (self.source_error, self.destination_error):
            if error is not None:
                raise error
        if not self.ok:
            raise MfdcompError("the session ended without errors but the digests differ")


class _Endpoints:
    """A listener and the matching connect() for one loopback transport."""

    def __init__(self, transport: str, workdir: Path) -> None:
        self._pair: tuple[socket.socket, socket.socket] | None = None
        if transport == "fd":
            # One inherited socketpair carries every connection as a passed fd.
            self._pair = socket.socketpair()
            self.listener: Listener = listen(parse_address(f"fd:{self._pair[1].fileno()}"))
            self.address = parse_address(f"fd:{self._pair[0].fileno()}")
            return
        texts = {"tcp": "tcp:127.0.0.1:0", "tcp6": "tcp:[::1]:0", "unix": f"unix:{workdir / 'mfdcomp.sock'}"}
        if transport not in texts:
            raise ValueError(f"loopback transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        self.listener = listen(parse_address(texts[transport]))
        self.address = parse_address(self.listener.address)

    def close(self) -> None:
        self.listener.close()
        if self._pair is not None:
            for sock in self._pair:
                sock.close()


def run_loopback(
    ram: SourceRam,
    codec: Codec,
    options: MigrateOptions,
    *,
    workdir: Path,
    transport: str = "unix",
    wrap: StreamWrapper | None = None,
    wrap_accepted: StreamWrapper | None = None,
    find_codec: Callable[[str], Codec] = get_codec,
    timeout: float = 60.0,
) -> LoopbackOutcome:
    """Migrate ``ram`` to fresh anonymous memory through ``transport``; both ends' outcomes."""
    endpoints = _Endpoints(transport, workdir)
    targets = AnonymousTargets()
    listener = endpoints.listener if wrap_accepted is None else _WrappingListener(endpoints.listener, wrap_accepted)
    incoming = Incoming(
        listener,
        make_targets=targets,
        digests=targets.digests,
        find_codec=find_codec,
        connect_timeout=timeout,
    )
    dest: dict[str, Any] = {}

    def destination() -> None:
        try:
            dest["result"] = incoming.run()
        except BaseException as exc:
            dest["error"] = exc

    thread = threading.Thread(target=destination, name="mfdcomp-loopback-destination")
    threads.start(thread)
    opened = 0

    def open_stream() -> Stream:
        nonlocal opened
        stream = connect(endpoints.address)
        index, opened = opened, opened + 1
        return wrap(index, stream) if wrap is not None else stream

    source: MigrateResult | None = None
    source_error: BaseException | None = None
    try:
        source = migrate(ram, open_stream, codec, options)
    except BaseException as exc:
        source_error = exc
    finally:
        # A source that failed (before connecting, say) tells the destination nothing: give it a
        # moment to end on its own error, then stop it rather than wait out the whole timeout.
        thread.join(SOURCE_FAILED_GRACE if source_error is not None else timeout)
        if thread.is_alive():
            why = (
                f"the source failed: {source_error}" if source_error is not None else f"still running after {timeout} s"
            )
            incoming.state.fail(MfdcompError(f"destination stopped: {why}"))
            thread.join()
        endpoints.close()
        targets.close()
    return LoopbackOutcome(source, source_error, dest.get("result"), dest.get("error"))

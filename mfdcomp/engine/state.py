"""Shared run state of one engine: the lock every wait uses, and first-error-wins."""

from __future__ import annotations

import threading
from collections.abc import Callable

from mfdcomp.errors import ChannelError, MfdcompError, TruncatedError
from mfdcomp.transport.base import ChannelEnd, PeerGoneError

PEER_REASON_GRACE = 1.0
"""Seconds a side whose peer vanished keeps reading the main channel for the peer's own reason.

A failing peer writes ERROR on the main channel and then shuts its channels; this side's channel
threads may see the channels end first. The peer's reason is the better explanation."""


class RemoteError(ChannelError):
    """The peer reported an error on the main channel."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so every ``finally`` runs (see mfdcomp.cli)."""


def describe(exc: BaseException) -> str:
    """The text of ``exc`` as the peer should read it on the main channel."""
    if isinstance(exc, Terminated):
        return "interrupted by SIGTERM"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, MfdcompError):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc}"


def peer_gone(exc: BaseException | None) -> bool:
    """``exc`` says only that the peer's end went away (its reason may follow on the main channel)."""
    return isinstance(exc, (PeerGoneError, TruncatedError))


class RunState:
    """One lock for every wait of an engine, and first-error-wins.

    Each wait is ``wait_for(predicate)`` on ``cond`` or on a condition from
    :meth:`condition` (same lock; a busy hand-off then wakes only the thread
    it concerns). :meth:`fail` records the first error, wakes every waiter of
    every condition and shuts every registered stream down, so threads blocked
    in socket calls wake too. No wait polls.

    Streams given to :meth:`on_fail` as ``keep`` (the main channel) carry the
    error report: they are shut down after the hooks ran. When the first error
    only says the peer went away, the kept streams' reading side stays open for
    up to :data:`PEER_REASON_GRACE` seconds, so the peer's ERROR message (its
    reason) can still be read; a :class:`RemoteError` then replaces the first
    error. :meth:`close` ends that grace.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.cond = threading.Condition(self._lock)
        self._conditions = [self.cond]  # under cond
        self.error: BaseException | None = None  # under cond; set once (or replaced by the peer's reason)
        self._streams: list[ChannelEnd] = []  # under cond
        self._kept: list[ChannelEnd] = []  # under cond
        self._on_fail: list[Callable[[BaseException], None]] = []  # under cond
        self._lingering = False  # under cond: the kept streams wait for the peer's reason
        self._grace: threading.Timer | None = None  # under cond; joined by close()

    def condition(self) -> threading.Condition:
        """Another condition on the same lock, also woken by :meth:`fail`."""
        with self.cond:
            cond = threading.Condition(self._lock)
            self._conditions.append(cond)
        return cond

    def on_fail(self, hook: Callable[[BaseException], None], keep: ChannelEnd | None = None) -> None:
        """Run ``hook(first error)`` on failure (at once if it happened); ``keep`` is the stream it writes to."""
        with self.cond:
            self._on_fail.append(hook)
            if keep is not None:
                self._kept.append(keep)
            error = self.error
        if error is not None and not isinstance(error, RemoteError):
            hook(error)

    def register(self, stream: ChannelEnd) -> None:
        with self.cond:
            self._streams.append(stream)
            failed = self.error is not None
        if failed:
            stream.shutdown()

    def fail(self, exc: BaseException) -> bool:
        """Record ``exc`` unless an error came first; True when it was recorded.

        The peer's reason (a RemoteError) replaces a first error that only said the peer went away.
        """
        with self.cond:
            if self.error is not None:
                if not (self._lingering and isinstance(exc, RemoteError)):
                    return False
                exc.__context__ = self.error
                self.error = exc
                self._notify()
                self._end_grace_locked()
                return True
            self.error = exc
            self._notify()
            # Unkept streams first: the hooks' bounded writes never delay waking the other threads.
            streams = [s for s in self._streams if not any(s is k for k in self._kept)]
            kept = list(self._kept)
            hooks = list(self._on_fail)
            # Set with the error: the peer's reason may be read while the hooks still run.
            self._lingering = peer_gone(exc) and bool(kept)
        for stream in streams:
            stream.shutdown()
        if not isinstance(exc, RemoteError):  # the peer knows its own reason
            for hook in hooks:
                hook(exc)
        with self.cond:
            if self._lingering and self._grace is None:
                self._grace = threading.Timer(PEER_REASON_GRACE, self._grace_over)
                self._grace.daemon = True
                self._grace.start()
                return True
        if not self._lingering:
            for stream in kept:
                stream.shutdown()
        return True

    def _notify(self) -> None:
        for cond in self._conditions:
            cond.notify_all()

    def _grace_over(self) -> None:
        with self.cond:
            self._end_grace_locked()

    def _end_grace_locked(self) -> None:
        if not self._lingering:
            return
        self._lingering = False
        self._notify()
        for stream in self._kept:
            stream.shutdown()

    @property
    def lingering(self) -> bool:
        """True while the kept streams are open for the peer's reason (see :meth:`fail`)."""
        with self.cond:
            return self._lingering

    def settle(self) -> None:
        """Wait until the grace for the peer's reason is over (at most PEER_REASON_GRACE seconds)."""
        with self.cond:
            self.cond.wait_for(lambda: not self._lingering, PEER_REASON_GRACE + 1.0)
            self._end_grace_locked()

    def close(self) -> None:
        """End the grace now and join its timer; the owner calls it once the run is over."""
        with self.cond:
            self._end_grace_locked()
            timer, self._grace = self._grace, None
        if timer is not None:
            timer.cancel()
            timer.join()

    def wait_for(
        self,
        predicate: Callable[[], bool],
        what: str,
        timeout: float | None = None,
        cond: threading.Condition | None = None,
    ) -> None:
        """Block until ``predicate()`` (called under the lock), an error, or ``timeout`` seconds."""
        cond = cond or self.cond
        with cond:
            done = cond.wait_for(lambda: self.error is not None or predicate(), timeout)
            self.raise_if_failed(what)
            if not done:
                raise ChannelError(f"timed out after {timeout:g} s waiting for {what}")

    def raise_if_failed(self, what: str) -> None:
        if self.error is not None:
            raise StoppedError(f"{what} stopped: {self.error}") from self.error

    def first_error(self) -> MfdcompError | None:
        with self.cond:
            error = self.error
        if error is None or isinstance(error, MfdcompError):
            return error
        return ChannelError(describe(error))


class StoppedError(ChannelError):
    """A thread gave up because another one failed first."""

"""Shared run state of one engine: the lock every wait uses, and first-error-wins."""

from __future__ import annotations

import threading
from collections.abc import Callable

from mfdcomp.errors import ChannelError, MfdcompError
from mfdcomp.transport.base import ChannelEnd


class RemoteError(ChannelError):
    """The peer reported an error on the main channel."""


class RunState:
    """One lock for every wait of an engine, and first-error-wins.

    Each wait is ``wait_for(predicate)`` on ``cond`` or on a condition from
    :meth:`condition` (same lock; a busy hand-off then wakes only the thread
    it concerns). :meth:`fail` records the first error, wakes every waiter of
    every condition and shuts every registered stream down, so threads blocked
    in socket calls wake too. No wait polls.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.cond = threading.Condition(self._lock)
        self._conditions = [self.cond]  # under cond
        self.error: BaseException | None = None  # under cond; set once
        self._streams: list[ChannelEnd] = []  # under cond
        self._on_fail: list[Callable[[BaseException], None]] = []  # set before threads start

    def condition(self) -> threading.Condition:
        """Another condition on the same lock, also woken by :meth:`fail`."""
        with self.cond:
            cond = threading.Condition(self._lock)
            self._conditions.append(cond)
        return cond

    def on_fail(self, hook: Callable[[BaseException], None]) -> None:
        self._on_fail.append(hook)

    def register(self, stream: ChannelEnd) -> None:
        with self.cond:
            self._streams.append(stream)
            failed = self.error is not None
        if failed:
            stream.shutdown()

    def fail(self, exc: BaseException) -> bool:
        """Record ``exc`` unless an error came first; True when it was first."""
        with self.cond:
            if self.error is not None:
                return False
            self.error = exc
            for cond in self._conditions:
                cond.notify_all()
            streams = list(self._streams)
        for hook in self._on_fail:
            hook(exc)
        for stream in streams:
            stream.shutdown()
        return True

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
        return ChannelError(f"internal error: {type(error).__name__}: {error}")


class StoppedError(ChannelError):
    """A thread gave up because another one failed first."""

"""Starting and joining worker threads so that Ctrl-C never leaves one behind.

``Thread.start`` waits for the new thread to run; a KeyboardInterrupt raised in
that wait escapes with the thread running but its caller not knowing, and the
interpreter then waits for it forever at exit (an idle ``mfdcomp recv`` hung so
on SIGINT, its accept thread never told to stop). :func:`start` holds SIGINT
and SIGTERM while the thread starts: the signal is taken right after, once the
caller's ``finally`` can see the thread. The thread inherits the mask, so these
signals reach the main thread, whose waits they interrupt. Engine threads start
no processes, which would inherit the mask too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

HELD = frozenset({signal.SIGINT, signal.SIGTERM})


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (in this thread; the mask before comes back after)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start(thread: threading.Thread) -> None:
    """Start ``thread``; a signal that comes meanwhile is raised after it runs (see the module's text)."""
    with signals_held():
        thread.start()


def join(thread: threading.Thread | None) -> None:
    """Join ``thread`` if it was started: a Ctrl-C may have come between making it and :func:`start`."""
    if thread is not None and thread.ident is not None:
        thread.join()

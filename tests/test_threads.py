"""mfdcomp.engine.threads: a Ctrl-C while a worker thread starts never leaves it running unjoined."""

from __future__ import annotations

import signal
import threading

import pytest

from mfdcomp.engine import threads


class _InterruptedWhileStarting(threading.Thread):
    """A thread whose start is hit by SIGINT, as an idle `mfdcomp recv` was on Ctrl-C."""

    def start(self) -> None:
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        super().start()


def test_a_ctrl_c_while_a_thread_starts_is_raised_after_it_started() -> None:
    masks: list[set[int]] = []
    thread = _InterruptedWhileStarting(target=lambda: masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    with pytest.raises(KeyboardInterrupt):
        threads.start(thread)
    assert thread.ident is not None, "the signal was raised before the thread started"
    threads.join(thread)
    assert not thread.is_alive()
    # The thread inherits the held mask: the signals go to the main thread, whose waits they interrupt.
    assert {signal.SIGINT, signal.SIGTERM} <= masks[0]
    # The main thread's mask is what it was before.
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_join_skips_a_thread_never_started() -> None:
    thread = threading.Thread(target=lambda: None)
    threads.join(thread)  # a Ctrl-C between making it and start(): nothing to join, no RuntimeError
    threads.join(None)
    assert thread.ident is None


def test_signals_held_restores_an_outer_hold() -> None:
    with threads.signals_held():
        with threads.signals_held():
            pass
        assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []), "the inner block unblocked the outer"
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])

"""Progress: what it draws, how often, and when it keeps quiet."""

from __future__ import annotations

import io
import threading

import pytest

from mfdcomp.progress import Progress

MIB = 1 << 20


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(total: int = 100 * MIB, enabled: bool | None = True) -> tuple[Progress, io.StringIO, Clock]:
    stream, clock = io.StringIO(), Clock()
    return Progress(total, "send", stream=stream, enabled=enabled, clock=clock), stream, clock


def frames(stream: io.StringIO) -> list[str]:
    """The lines drawn, padding stripped."""
    return [frame.rstrip() for frame in stream.getvalue().split("\r")[1:]]


def test_renders_bar_percent_sizes_rate_and_eta() -> None:
    progress, stream, clock = make()
    clock.now += 2.0
    progress.update(25 * MIB)
    assert frames(stream) == [
        "send  [######..................]  25.0%  25.0 MiB / 100.0 MiB  12.5 MiB/s  ETA 0:06",
    ]
    clock.now += 6.0
    progress.update(75 * MIB)
    progress.close()
    assert frames(stream)[-1] == "send  [########################] 100.0%  100.0 MiB / 100.0 MiB  12.5 MiB/s  in 0:08"
    assert stream.getvalue().endswith("\n")


def test_redraws_at_most_ten_times_a_second() -> None:
    progress, stream, clock = make()
    for _ in range(50):
        clock.now += 0.01
        progress.update(MIB)
    assert len(frames(stream)) == 5  # 0.5 s of updates: the first, then one per 0.1 s
    assert progress.done == 50 * MIB


def test_unknown_total_and_long_eta() -> None:
    progress, stream, clock = make(total=0)
    clock.now += 1.0
    progress.update(3 * MIB)
    assert frames(stream) == ["send  3.0 MiB  3.0 MiB/s"]
    progress.total = 3 * MIB + 2 * 3600 * 3 * MIB  # known later, as recv learns it
    assert progress.render().endswith("ETA 2:00:00")


def test_shorter_line_blanks_the_longer_one() -> None:
    progress, stream, clock = make()
    clock.now += 1000.0
    progress.update(MIB)
    clock.now += 1.0
    progress.update(98 * MIB)
    first, second = stream.getvalue().split("\r")[1:]
    assert first.endswith("ETA 27:30:00") and second.rstrip().endswith("ETA 0:10")
    assert len(second) == len(first) > len(second.rstrip())


def test_close_once_and_as_context_manager() -> None:
    stream = io.StringIO()
    with Progress(10, "x", stream=stream, enabled=True) as progress:
        progress.update(10)
    progress.close()
    progress.update(5)  # after close: counted, not drawn
    assert stream.getvalue().count("\n") == 1
    assert progress.done == 15


def test_failure_before_any_drawing_draws_nothing() -> None:
    stream = io.StringIO()
    with pytest.raises(RuntimeError), Progress(10, "x", stream=stream, enabled=True):
        raise RuntimeError("boom")
    assert stream.getvalue() == ""


@pytest.mark.parametrize("enabled", [False, None])  # None: a StringIO is no terminal
def test_silent_when_disabled(enabled: bool | None) -> None:
    progress, stream, clock = make(enabled=enabled)
    clock.now += 1.0
    progress.update(MIB)
    progress.close()
    assert stream.getvalue() == ""
    assert progress.done == MIB


def test_enabled_by_default_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert Progress(1, "x", stream=Terminal()).enabled


def test_update_from_many_threads() -> None:
    progress, _, _ = make(total=8 * 10_000)

    def work() -> None:
        for _ in range(10_000):
            progress.update(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert progress.done == 80_000

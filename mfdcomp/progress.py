"""A one-line progress bar for long work, without threads or dependencies.

``label [#########...........]  45.0%  460.8 MiB / 1.0 GiB  312.5 MiB/s  ETA 0:02``

The line is redrawn in place (carriage return) at most every
``min_interval`` seconds of monotonic time, from whichever thread calls
:meth:`Progress.update`; :meth:`Progress.close` draws the final line and ends
it. By default it draws only on a terminal, so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from mfdcomp.units import format_bytes

__all__ = ["Progress"]

_BAR_WIDTH = 24


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False


def _duration(seconds: float) -> str:
    """``M:SS`` or ``H:MM:SS``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


class Progress:
    """Progress of ``total`` bytes of work (``total`` may be set later; 0 means unknown).

    ``stream`` defaults to the ``sys.stderr`` of the moment; ``enabled``
    defaults to whether that stream is a terminal. ``update`` may be called
    from several threads.
    """

    def __init__(
        self,
        total: int,
        label: str,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        *,
        min_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _is_tty(self.stream) if enabled is None else enabled
        self.min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._done = 0
        self._started = clock()
        self._last_draw: float | None = None
        self._width = 0  # of the line on screen, to blank a longer previous one
        self._closed = False

    @property
    def done(self) -> int:
        return self._done

    def update(self, count: int) -> None:
        """Add ``count`` units done; redraw if the last drawing is old enough."""
        with self._lock:
            self._done += count
            if not self.enabled or self._closed:
                return
            now = self._clock()
            if self._last_draw is None or now - self._last_draw >= self.min_interval:
                self._draw(now, final=False)

    def render(self, now: float | None = None, *, final: bool = False) -> str:
        """The line as it would be drawn at ``now``."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 0.0)
        done, total = self._done, self.total
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [self.label]
        if total > 0:
            fraction = min(done / total, 1.0)
            filled = int(fraction * _BAR_WIDTH)
            parts.append(f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {fraction * 100:5.1f}%")
            parts.append(f"{format_bytes(done)} / {format_bytes(total)}")
        else:
            parts.append(format_bytes(done))
        parts.append(f"{format_bytes(rate)}/s")
        if final:
            parts.append(f"in {_duration(elapsed)}")
        elif total > 0 and rate > 0:
            parts.append(f"ETA {_duration(max(total - done, 0) / rate)}")
        return "  ".join(parts)

    def close(self) -> None:
        """Draw the final line and end it; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.enabled:
                self._draw(self._clock(), final=True)
                self.stream.write("\n")
                self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._lock:
            if exc_type is not None and self._last_draw is None:
                # Failed before anything was drawn: leave the error message alone.
                self._closed = True
        self.close()

    def _draw(self, now: float, *, final: bool) -> None:
        line = self.render(now, final=final)
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)
        self._last_draw = now

"""Child processes whose CPU time is read when they are reaped (wait4).

Not their peak RSS: wait4's ru_maxrss starts from the peak of the process
that forked the child, so a child of a large process (a test run, say)
reports that one's peak. `mfdcomp send` and `recv` report their own (VmHWM)
in their JSON instead.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO

__all__ = ["MFDCOMP", "Child", "ChildFailed", "Finished"]

MFDCOMP = (sys.executable, "-m", "mfdcomp")

_POLL = 0.005


class ChildFailed(RuntimeError):
    """A child exited non-zero, did not start, or ran out of time."""


@dataclass(frozen=True)
class Finished:
    """A reaped child: exit status, output, and its own CPU time."""

    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float  # user + system of the whole process

    def failure(self, name: str) -> str | None:
        """What went wrong, for a message, or None after a clean exit."""
        if self.returncode == 0:
            return None
        return f"{name} exited with {self.returncode}: {self.stderr.strip()[-2000:]}"


class Child:
    """One process, its output in unnamed temporary files (no pipe to fill up), reaped with wait4.

    ``argv`` may start with a wrapper that execs the real program in the same
    process (``ip netns exec NS ...``): the rusage is then the program's.
    """

    def __init__(self, argv: Sequence[str], name: str, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        # Owned by the child object and closed by __exit__ (or here, if the program does not start).
        self._stdout: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=self._stderr, env=env
            )
        except OSError as exc:
            self._stdout.close()
            self._stderr.close()
            raise ChildFailed(f"cannot start {name}: {exc}") from exc
        self._result: Finished | None = None

    def __enter__(self) -> Child:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.kill()
        self._stdout.close()
        self._stderr.close()

    def _read(self, stream: IO[bytes]) -> str:
        stream.seek(0)
        return stream.read().decode(errors="replace")

    def stderr_line(self, marker: str, timeout: float) -> str:
        """The first stderr line holding ``marker``, waited for; ChildFailed if the child ends or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self._read(self._stderr).splitlines():
                if marker in line:
                    return line
            if self._poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise ChildFailed(f"{self.name} did not say {marker!r}: {self._read(self._stderr).strip()[-2000:]}")
            time.sleep(_POLL)

    def _poll(self) -> Finished | None:
        if self._result is None:
            pid, status, usage = os.wait4(self._proc.pid, os.WNOHANG)
            if pid:
                self._reaped(status, usage)
        return self._result

    def _reaped(self, status: int, usage: resource.struct_rusage) -> None:
        code = os.waitstatus_to_exitcode(status)
        self._proc.returncode = code  # so that Popen does not wait for a pid that is gone
        self._result = Finished(
            returncode=code,
            stdout=self._read(self._stdout),
            stderr=self._read(self._stderr),
            cpu_seconds=usage.ru_utime + usage.ru_stime,
        )

    def finish(self, timeout: float, *, check: bool = True) -> Finished:
        """Wait for the child's exit; ChildFailed (after killing it) past ``timeout``, or on a non-zero exit
        when ``check``."""
        deadline = time.monotonic() + timeout
        while (result := self._poll()) is None:
            if time.monotonic() > deadline:
                self.kill()
                raise ChildFailed(f"{self.name} still running after {timeout:.0f} s, killed")
            time.sleep(_POLL)
        problem = result.failure(self.name)
        if check and problem is not None:
            raise ChildFailed(problem)
        return result

    def kill(self) -> None:
        """End the child if it still runs, and reap it."""
        if self._result is None:
            # os.kill, not Popen.send_signal: that one polls, and could reap the pid before wait4 does.
            os.kill(self._proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(self._proc.pid, 0)
            self._reaped(status, usage)

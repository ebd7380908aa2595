"""Numbers the Linux kernel gives about processes in /proc."""

from __future__ import annotations

import os

__all__ = ["cpu_seconds", "kib_field"]


def kib_field(path: str, key: str) -> int | None:
    """The ``key`` line of ``path`` (``/proc/meminfo``, ``/proc/self/status``) in bytes.

    None where the file cannot be read or has no such line.
    """
    prefix = f"{key}:"
    try:
        with open(path, encoding="ascii") as lines:
            for line in lines:
                if line.startswith(prefix):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of process ``pid`` (all its threads) so far.

    None where ``/proc/PID/stat`` cannot be read (no such process).
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')':
    # the fields after the last ')' start at field 3, so utime and stime
    # (fields 14 and 15) are the 12th and 13th of them.
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

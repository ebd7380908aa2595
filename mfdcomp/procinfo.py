"""Numbers the Linux kernel gives in /proc as ``Key:   N kB`` lines."""

from __future__ import annotations

__all__ = ["kib_field"]


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

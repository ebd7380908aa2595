"""Reserving a target file's disk space before any page arrives.

A page written through a shared mapping onto a full disk ends the process
with SIGBUS; reserving the whole file first turns that into one clean error
before the session starts. It also makes each page's first write cheaper: on
ext4 the blocks are then already allocated (as unwritten extents), so the page
fault no longer reserves them one page at a time. Measured on 1 GiB over 2
channels into a file on ext4, alternating, median of 6: mixed image 0.96 ->
0.86 s; 90%-zero image 0.356 -> 0.374 s (the reservation's own cost).

In-memory filesystems are only checked for room: reserving there would
allocate and zero every page, including the zero pages a fresh target never
has to touch. Filesystems without fallocate are left alone (glibc's
posix_fallocate would write every block instead).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import struct

__all__ = ["reserve"]

# f_type values of struct statfs (linux/magic.h) for memory-backed filesystems.
_IN_MEMORY = {0x01021994: "tmpfs", 0x858458F6: "ramfs", 0x958458F6: "hugetlbfs"}
# struct statfs on 64-bit Linux is 120 bytes and begins with the long f_type.
_STATFS = struct.Struct("=l112x")


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_char_p]
    return libc


def _filesystem_type(fd: int) -> int | None:
    buffer = ctypes.create_string_buffer(_STATFS.size)
    if _libc().fstatfs(fd, buffer) != 0:
        return None
    kind: int = _STATFS.unpack(buffer.raw)[0]
    return kind


def reserve(fd: int, size: int) -> bool:
    """Allocate ``size`` bytes of disk for ``fd``'s file; True if it was done, False if only checked.

    Raises OSError (ENOSPC, EDQUOT, EFBIG...) when the filesystem has no room.
    """
    kind = _filesystem_type(fd)
    if kind in _IN_MEMORY:
        stats = os.fstatvfs(fd)
        free = stats.f_bavail * stats.f_frsize
        if free < size:
            raise OSError(errno.ENOSPC, f"{_IN_MEMORY[kind]} has {free} bytes free")
        return False
    # Mode 0: allocate, reading back as zeros; the file's size is already ``size``.
    if _libc().fallocate(fd, 0, 0, size) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(code, os.strerror(code))

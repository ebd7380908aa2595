"""A thin ctypes layer over UADK 2.10's libwd_comp (uadk/wd_comp.h), as QEMU uses it.

``wd_comp_init2`` is a macro over the exported ``wd_comp_init2_`` (its last
argument NULL); then one session per channel and direction
(``wd_comp_alloc_sess``/``wd_comp_free_sess``) and one synchronous request per
page (``wd_do_comp_sync``). A session may only be allocated while an init that
returned 0 or -EEXIST is in force: after a failed init, ``wd_comp_alloc_sess``
crashes the process. :class:`Runtime` is the one gate to it.

Structure layouts are checked against the installed header by the compiler
(tests/test_vendor_layouts.py). libwd finds its drivers (``lib/uadk/``) next to
itself, with no environment variable. The libraries are ``ctypes.CDLL``: every
call releases the GIL.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from pathlib import Path
from typing import Any

from mfdcomp.errors import CodecError
from mfdcomp_uadk import locate

# enum wd_comp_alg_type, wd_comp_op_type, sched_policy_type, alg_task_type
WD_ZLIB = 1
WD_DIR_COMPRESS = 0
WD_DIR_DECOMPRESS = 1
SCHED_POLICY_RR = 0
TASK_HW = 1
ALGORITHM = b"zlib"


class WdMmOps(ctypes.Structure):
    """``struct wd_mm_ops`` (wd.h): left zeroed, the library's own memory."""

    _fields_ = [
        ("alloc", ctypes.c_void_p),
        ("free", ctypes.c_void_p),
        ("iova_map", ctypes.c_void_p),
        ("iova_unmap", ctypes.c_void_p),
        ("get_bufsize", ctypes.c_void_p),
        ("usr", ctypes.c_void_p),
        ("sva_mode", ctypes.c_bool),
    ]


class SchedParams(ctypes.Structure):
    """``struct sched_params`` (wd_sched.h): zeroed but for ``type``, the direction."""

    _fields_ = [
        ("numa_id", ctypes.c_int),
        ("type", ctypes.c_uint8),
        ("mode", ctypes.c_uint8),
        ("begin", ctypes.c_uint32),
        ("end", ctypes.c_uint32),
        ("dev_id", ctypes.c_uint32),
    ]


class WdCompSessSetup(ctypes.Structure):
    """``struct wd_comp_sess_setup``: level and window left 0 (the library's level 1, 4 KiB window)."""

    _fields_ = [
        ("alg_type", ctypes.c_int),
        ("comp_lv", ctypes.c_int),
        ("win_sz", ctypes.c_int),
        ("op_type", ctypes.c_int),
        ("sched_param", ctypes.c_void_p),
        ("mm_ops", WdMmOps),
        ("mm_type", ctypes.c_int),
    ]


class WdCompReq(ctypes.Structure):
    """``struct wd_comp_req``; ``src``/``dst`` are the flat-buffer members of their unions."""

    _fields_ = [
        ("src", ctypes.c_void_p),
        ("src_len", ctypes.c_uint32),
        ("dst", ctypes.c_void_p),
        ("dst_len", ctypes.c_uint32),
        ("cb", ctypes.c_void_p),
        ("cb_param", ctypes.c_void_p),
        ("op_type", ctypes.c_int),
        ("data_fmt", ctypes.c_int),
        ("last", ctypes.c_uint32),
        ("status", ctypes.c_uint32),
        ("priv", ctypes.c_void_p),
    ]


# The C name of each structure, for the layout test.
C_TYPES: dict[type[ctypes.Structure], str] = {
    WdMmOps: "struct wd_mm_ops",
    SchedParams: "struct sched_params",
    WdCompSessSetup: "struct wd_comp_sess_setup",
    WdCompReq: "struct wd_comp_req",
}

HANDLE = ctypes.c_size_t  # handle_t is uintptr_t
SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "wd_comp_init2_": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p]),
    "wd_comp_uninit2": (None, []),
    "wd_comp_alloc_sess": (HANDLE, [ctypes.POINTER(WdCompSessSetup)]),
    "wd_comp_free_sess": (None, [HANDLE]),
    "wd_do_comp_sync": (ctypes.c_int, [HANDLE, ctypes.POINTER(WdCompReq)]),
}


def errno_text(code: int) -> str:
    """``-22 (EINVAL)`` for a negative errno result."""
    name = errno.errorcode.get(-code, "unknown") if code < 0 else "not an errno"
    return f"{code} ({name})"


class Library:
    """libwd_comp from one path, libwd from the same folder loaded first and globally."""

    def __init__(self, path: str) -> None:
        folder = Path(path).parent if os.sep in path else None
        if folder is not None and (folder / locate.DEPENDENCY).exists():
            # libwd_comp resolves libwd's symbols through the global scope; a private build is not in the cache.
            self._wd = ctypes.CDLL(str(folder / locate.DEPENDENCY), mode=ctypes.RTLD_GLOBAL)
        else:
            self._wd = ctypes.CDLL(locate.DEPENDENCY, mode=ctypes.RTLD_GLOBAL)
        self._dll = ctypes.CDLL(path)
        self.path = path
        for name, (restype, argtypes) in SIGNATURES.items():
            function = getattr(self._dll, name)  # AttributeError: not libwd_comp
            function.restype = restype
            function.argtypes = argtypes
        self.version = _version(path)

    def init(self) -> int:
        """``wd_comp_init2("zlib", SCHED_POLICY_RR, TASK_HW)``: 0, -EEXIST, or a negative errno."""
        rc: int = self._dll.wd_comp_init2_(ALGORITHM, SCHED_POLICY_RR, TASK_HW, None)
        return rc

    def uninit(self) -> None:
        self._dll.wd_comp_uninit2()

    def alloc_session(self, op_type: int) -> int:
        params = SchedParams(type=op_type)
        setup = WdCompSessSetup(alg_type=WD_ZLIB, op_type=op_type, sched_param=ctypes.addressof(params))
        handle: int = self._dll.wd_comp_alloc_sess(ctypes.byref(setup))
        return handle

    def free_session(self, handle: int) -> None:
        self._dll.wd_comp_free_sess(handle)

    def do_sync(self, handle: int, request: WdCompReq) -> int:
        rc: int = self._dll.wd_do_comp_sync(handle, ctypes.byref(request))
        return rc


def _version(path: str) -> str | None:
    """The file version of a versioned library file (``libwd_comp.so.2.10.0`` → 2.10.0)."""
    name = Path(path).resolve().name
    marker = ".so."
    return name.split(marker, 1)[1] if marker in name else None


class Runtime:
    """libwd_comp's process-wide init, counted: the first user inits, the last uninits.

    ``acquire`` returns init's result; a session may be allocated only when it
    is 0 or -EEXIST (then the caller must ``release``).
    """

    def __init__(self, library: Library) -> None:
        self.library = library
        self._lock = threading.Lock()
        self._users = 0
        self._owned = False  # our init returned 0, so uninit is ours to call

    def acquire(self) -> int:
        with self._lock:
            if self._users:
                self._users += 1
                return 0
            rc = self.library.init()
            if rc == 0 or rc == -errno.EEXIST:
                self._users = 1
                self._owned = rc == 0
            return rc

    def release(self) -> None:
        with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0 and self._owned:
                self._owned = False
                self.library.uninit()


class Session:
    """One channel's session in one direction; only made while the runtime is held."""

    def __init__(self, runtime: Runtime, op_type: int) -> None:
        rc = runtime.acquire()
        if rc != 0 and rc != -errno.EEXIST:
            raise CodecError(f"wd_comp_init2 returned {errno_text(rc)}: no UADK session can be allocated")
        self._runtime = runtime
        self.handle = runtime.library.alloc_session(op_type)
        if not self.handle:
            runtime.release()
            raise CodecError("wd_comp_alloc_sess returned no session")
        self.op_type = op_type
        self.request = WdCompReq()

    def run(self, source: int, size: int, destination: int, room: int) -> tuple[int, int, int]:
        """One synchronous request: (return code, request status, bytes written)."""
        request = self.request
        request.src = source
        request.src_len = size
        request.dst = destination
        request.dst_len = room
        request.op_type = self.op_type
        rc = self._runtime.library.do_sync(self.handle, request)
        return rc, request.status, request.dst_len

    def close(self) -> None:
        if self.handle:
            self._runtime.library.free_session(self.handle)
            self.handle = 0
            self._runtime.release()


def address(view: memoryview) -> int:
    """Where a writable buffer's bytes are, without a copy."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))

"""A thin ctypes layer over libqatzip (qatzip.h of QATzip 1.3.1, API 2.5).

Only what the codec needs: a deflate session (``qzInit`` with software backup,
``qzGetDefaultsDeflate``, ``qzSetupSessionDeflate``), one-shot ``qzCompress``
(``last=1``) and ``qzDecompress``, ``qzMaxCompressedLength`` and teardown.
ctypes drops the GIL for every call into a ``CDLL``, so channels compress in
parallel.

Quiet: without a QAT device, every ``qzCompress``/``qzDecompress`` call re-runs
libqatzip's hardware probe; libqatzip then logs two lines (silenced for good
with ``qzSetLogLevel(LOG_NONE)``) and libqat prints "Cannot open /dev/vfio"
through C stdio's ``stderr``, which no API turns off. So while any libqatzip
call runs, C stdio's ``stderr`` points at /dev/null. File descriptor 2 is
left alone: Python's own stderr (progress bar, errors) keeps working.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from typing_extensions import Buffer

from mfdcomp.errors import CodecError
from mfdcomp_qatzip.locate import DEPENDENCIES, Candidate, loaded_path

# Return codes and session states (qatzip.h).
QZ_OK = 0
QZ_NO_HW = 11
STATUS_NAMES = {
    0: "QZ_OK",
    1: "QZ_DUPLICATE",
    2: "QZ_FORCE_SW",
    -1: "QZ_PARAMS",
    -2: "QZ_FAIL",
    -3: "QZ_BUF_ERROR",
    -4: "QZ_DATA_ERROR",
    -5: "QZ_TIMEOUT",
    -100: "QZ_INTEG",
    11: "QZ_NO_HW",
    12: "QZ_NO_MDRV",
    13: "QZ_NO_INST_ATTACH",
    14: "QZ_LOW_MEM",
    15: "QZ_LOW_DEST_MEM",
    16: "QZ_UNSUPPORTED_FMT",
    100: "QZ_NONE",
    -101: "QZ_NOSW_NO_HW",
    -102: "QZ_NOSW_NO_MDRV",
    -103: "QZ_NOSW_NO_INST_ATTACH",
    -104: "QZ_NOSW_LOW_MEM",
    -105: "QZ_NO_SW_AVAIL",
    -116: "QZ_NOSW_UNSUPPORTED_FMT",
    -200: "QZ_NOT_SUPPORTED",
}
_LOG_NONE = 0
_SW_BACKUP = 1
_DEFLATE_GZIP_EXT = 2
# Requests smaller than input_sz_thrshold go to software (qatzip.h); the largest value sends all there.
_ALL_TO_SOFTWARE = 0xFFFFFFFF


def status_name(code: int) -> str:
    return f"{STATUS_NAMES.get(code, 'unknown')} ({code})"


class QzSession(ctypes.Structure):
    _fields_ = [
        ("hw_session_stat", ctypes.c_long),
        ("thd_sess_stat", ctypes.c_int),
        ("internal", ctypes.c_void_p),
        ("total_in", ctypes.c_ulong),
        ("total_out", ctypes.c_ulong),
    ]


class QzSessionParamsCommon(ctypes.Structure):
    _fields_ = [
        ("direction", ctypes.c_int),
        ("comp_lvl", ctypes.c_uint),
        ("comp_algorithm", ctypes.c_ubyte),
        ("max_forks", ctypes.c_uint),
        ("sw_backup", ctypes.c_ubyte),
        ("hw_buff_sz", ctypes.c_uint),
        ("strm_buff_sz", ctypes.c_uint),
        ("input_sz_thrshold", ctypes.c_uint),
        ("req_cnt_thrshold", ctypes.c_uint),
        ("wait_cnt_thrshold", ctypes.c_uint),
        ("polling_mode", ctypes.c_int),
        ("is_sensitive_mode", ctypes.c_uint),
    ]


class QzSessionParamsDeflate(ctypes.Structure):
    _fields_ = [
        ("common_params", QzSessionParamsCommon),
        ("huffman_hdr", ctypes.c_int),
        ("data_fmt", ctypes.c_int),
    ]


_P = ctypes.c_void_p
_UINT_P = ctypes.POINTER(ctypes.c_uint)
_SESSION_P = ctypes.POINTER(QzSession)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "qzSetLogLevel": (ctypes.c_int, [ctypes.c_int]),
    "qzInit": (ctypes.c_int, [_SESSION_P, ctypes.c_ubyte]),
    "qzGetDefaultsDeflate": (ctypes.c_int, [ctypes.POINTER(QzSessionParamsDeflate)]),
    "qzSetupSessionDeflate": (ctypes.c_int, [_SESSION_P, ctypes.POINTER(QzSessionParamsDeflate)]),
    "qzMaxCompressedLength": (ctypes.c_uint, [ctypes.c_uint, _SESSION_P]),
    "qzCompress": (ctypes.c_int, [_SESSION_P, _P, _UINT_P, _P, _UINT_P, ctypes.c_uint]),
    "qzDecompress": (ctypes.c_int, [_SESSION_P, _P, _UINT_P, _P, _UINT_P]),
    "qzTeardownSession": (ctypes.c_int, [_SESSION_P]),
    "qzClose": (ctypes.c_int, [_SESSION_P]),
}


class _QuietStdio:
    """Points C stdio's ``stderr`` at /dev/null while at least one thread is inside libqatzip."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None)
        fopen = libc.fopen
        fopen.restype = ctypes.c_void_p
        fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        # The process-wide symbol every shared library's stdio calls resolve to.
        self._slot = ctypes.c_void_p.in_dll(libc, "stderr")
        self._null: int | None = fopen(b"/dev/null", b"w")
        self._saved: int | None = None
        self._depth = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0 and self._null is not None:
                self._saved = self._slot.value
                self._slot.value = self._null
            self._depth += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._null is not None:
                self._slot.value = self._saved


_QUIET: list[_QuietStdio] = []  # at most one, made under _QUIET_LOCK
_QUIET_LOCK = threading.Lock()


def _quiet_stdio() -> _QuietStdio:
    # One for the process: two guards saving and restoring the same pointer could leave it at /dev/null.
    # A lock, not functools.cache: two channels probing at once could each miss the cache and make one.
    with _QUIET_LOCK:
        if not _QUIET:
            _QUIET.append(_QuietStdio())
        return _QUIET[0]


def _c_buffer(buffer: Buffer, *, writable: bool) -> ctypes.Array[ctypes.c_char]:
    """A ctypes view of ``buffer`` without a copy; read-only input is copied once."""
    view = memoryview(buffer).cast("B")
    array_type = ctypes.c_char * view.nbytes
    if writable or not view.readonly:
        return array_type.from_buffer(view)
    return array_type.from_buffer_copy(view)


def _init_openssl_first() -> None:
    """Let OpenSSL's libssl initialise itself before libqat (which links libcrypto) is used.

    Seen here (trixie's libqat 24.02 on Debian 12's OpenSSL 3.0): after about 1500 qatzip packets in a
    process, the process's first ``SSL_CTX_new`` failed with "malloc failure" (ssl_lib.c, SSL_CTX_new_ex),
    so a TLS connection made after qatzip had run (a tap, a long-lived caller) could not be set up; a
    context made once before libqat is loaded keeps every later one working
    (tests/codecs/test_qatzip_openssl.py). The cause inside libqat was not found.
    """
    import ssl  # here: importing the plugin must stay cheap and load nothing

    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class Library:
    """libqatzip loaded from one :class:`Candidate`, its dependencies first."""

    def __init__(self, candidate: Candidate) -> None:
        _init_openssl_first()
        folder = candidate.folder
        if folder is not None:
            for dependency in DEPENDENCIES:
                # Debian 12 has no libqat/libusdm: load the private folder's copies by path, globally,
                # so that libqatzip's own DT_NEEDED entries resolve to them.
                if (folder / dependency).exists():
                    ctypes.CDLL(str(folder / dependency), mode=ctypes.RTLD_GLOBAL)
        self._dll = ctypes.CDLL(candidate.path)
        self.candidate = candidate
        self.path = candidate.path if candidate.folder is not None else loaded_path() or candidate.path
        self.quiet = _quiet_stdio()
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(self._dll, name)
            function.restype = restype
            function.argtypes = argtypes
        self._dll.qzSetLogLevel(_LOG_NONE)

    def call(self, name: str, *args: Any) -> int:
        function: Callable[..., int] = getattr(self._dll, name)
        with self.quiet:
            return function(*args)

    def session(self, level: int, *, software_only: bool = False) -> Session:
        return Session(self, level, software_only=software_only)


class Session:
    """One libqatzip deflate session (GZIP_EXT, the library's defaults) at one level.

    ``software_only`` routes every request to libqatzip's software code even
    where a QAT device is present (for the software path). ``hardware`` says
    whether the session runs on a device.
    """

    def __init__(self, library: Library, level: int, *, software_only: bool = False) -> None:
        self._lib = library
        self.level = level
        self.software_only = software_only
        self._session = QzSession()
        self._open = False
        self._setup()

    def _setup(self) -> None:
        lib = self._lib
        params = QzSessionParamsDeflate()
        rc = lib.call("qzGetDefaultsDeflate", ctypes.byref(params))
        if rc != QZ_OK:
            raise CodecError(f"qzGetDefaultsDeflate failed: {status_name(rc)}")
        params.common_params.comp_lvl = self.level
        params.common_params.sw_backup = _SW_BACKUP
        params.data_fmt = _DEFLATE_GZIP_EXT
        if self.software_only:
            params.common_params.input_sz_thrshold = _ALL_TO_SOFTWARE
        self._session = QzSession()
        session = ctypes.byref(self._session)
        rc = lib.call("qzInit", session, _SW_BACKUP)
        if rc < 0:
            raise CodecError(f"qzInit(sw_backup=1) failed: {status_name(rc)}")
        self._open = True
        rc = lib.call("qzSetupSessionDeflate", session, ctypes.byref(params))
        if rc < 0:
            self.close()
            raise CodecError(f"qzSetupSessionDeflate(level {self.level}) failed: {status_name(rc)}")

    @property
    def state(self) -> int:
        """``hw_session_stat``: QZ_OK on a device, QZ_NO_HW (11) and others in software."""
        return int(self._session.hw_session_stat)

    @property
    def hardware(self) -> bool:
        return self.state == QZ_OK and not self.software_only

    def max_compressed_length(self, size: int) -> int:
        return self._lib.call("qzMaxCompressedLength", size, ctypes.byref(self._session))

    def compress(self, source: Buffer, destination: Buffer) -> int:
        """Compress all of ``source`` (``last=1``) into ``destination``; returns the bytes written."""
        src = _c_buffer(source, writable=False)
        dst = _c_buffer(destination, writable=True)
        src_len, dst_len = ctypes.c_uint(len(src)), ctypes.c_uint(len(dst))
        rc = self._lib.call(
            "qzCompress", ctypes.byref(self._session), src, ctypes.byref(src_len), dst, ctypes.byref(dst_len), 1
        )
        if rc != QZ_OK or src_len.value != len(src):
            self.reset()
            raise CodecError(f"qzCompress failed: {status_name(rc)}, {src_len.value} of {len(src)} bytes consumed")
        return dst_len.value

    def decompress(self, source: Buffer, destination: Buffer) -> tuple[int, int]:
        """Decompress ``source`` into ``destination``: (bytes consumed, bytes written).

        A session that returned an error fails the next valid input too
        (seen with 1.3.1), so it is set up again after any error.
        """
        src = _c_buffer(source, writable=False)
        dst = _c_buffer(destination, writable=True)
        src_len, dst_len = ctypes.c_uint(len(src)), ctypes.c_uint(len(dst))
        rc = self._lib.call(
            "qzDecompress", ctypes.byref(self._session), src, ctypes.byref(src_len), dst, ctypes.byref(dst_len)
        )
        if rc != QZ_OK:
            self.reset()
            raise CodecError(f"qzDecompress rejected the payload: {status_name(rc)}")
        return src_len.value, dst_len.value

    def reset(self) -> None:
        self.close()
        self._setup()

    def close(self) -> None:
        if self._open:
            self._open = False
            session = ctypes.byref(self._session)
            self._lib.call("qzTeardownSession", session)
            self._lib.call("qzClose", session)

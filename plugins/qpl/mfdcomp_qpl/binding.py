"""A thin ctypes layer over libqpl's job API (qpl/c_api/job.h of QPL 1.6).

Only what the codec needs: one ``qpl_job`` per channel and direction
(``qpl_get_job_size`` + ``qpl_init_job``, ``qpl_execute_job``,
``qpl_fini_job``) running stateless one-page deflate and inflate.

``qpl_job`` has no setters: its public fields are written directly, so the
:class:`QplJob` layout below must match the header byte for byte. It is
checked by the compiler, not by eye: tests/test_vendor_layouts.py compiles a C
program against the installed ``qpl.h`` printing ``offsetof``/``sizeof`` of
every field here and compares.

The library is a ``ctypes.CDLL``, not a ``PyDLL``: every call releases the
GIL, so channels compress in parallel. Nothing here is loaded at import time.
"""

from __future__ import annotations

import ctypes
import weakref
from pathlib import Path
from typing import Any

from mfdcomp.errors import CodecError

# qpl_path_t
PATH_HARDWARE = 1
PATH_SOFTWARE = 2
PATH_NAMES = {PATH_HARDWARE: "qpl_path_hardware", PATH_SOFTWARE: "qpl_path_software"}

# qpl_operation
OP_DECOMPRESS = 0x00
OP_COMPRESS = 0x01

# QPL_FLAGS (defs.h). No QPL_FLAG_DYNAMIC_HUFFMAN and no zlib/gzip mode: raw deflate, fixed Huffman.
FLAG_FIRST = 0x0001
FLAG_LAST = 0x0002
FLAG_OMIT_VERIFY = 0x4000
COMPRESS_FLAGS = FLAG_FIRST | FLAG_LAST | FLAG_OMIT_VERIFY
DECOMPRESS_FLAGS = FLAG_FIRST | FLAG_LAST

DEFAULT_LEVEL = 1  # qpl_default_level == qpl_level_1

# qpl_status values the codec acts on (status.h); the rest are reported by number and name.
STS_OK = 0
STS_MORE_OUTPUT_NEEDED = 2
STS_QUEUES_ARE_BUSY_ERR = 5
STS_DST_IS_SHORT_ERR = 225
STATUS_NAMES = {
    0: "QPL_STS_OK",
    1: "QPL_STS_BEING_PROCESSED",
    2: "QPL_STS_MORE_OUTPUT_NEEDED",
    3: "QPL_STS_MORE_INPUT_NEEDED",
    4: "QPL_STS_JOB_NOT_CONTINUABLE_ERR",
    5: "QPL_STS_QUEUES_ARE_BUSY_ERR",
    6: "QPL_STS_LIBRARY_INTERNAL_ERR",
    7: "QPL_STS_JOB_NOT_SUBMITTED",
    8: "QPL_STS_NOT_SUPPORTED_BY_WQ",
    50: "QPL_STS_NULL_PTR_ERR",
    51: "QPL_STS_OPERATION_ERR",
    53: "QPL_STS_BAD_JOB_STRUCT_ERR",
    54: "QPL_STS_PATH_ERR",
    55: "QPL_STS_INVALID_PARAM_ERR",
    56: "QPL_STS_FLAG_CONFLICT_ERR",
    57: "QPL_STS_SIZE_ERR",
    101: "QPL_STS_NO_MEM_ERR",
    201: "QPL_STS_BIG_HEADER_ERR",
    202: "QPL_STS_UNDEF_CL_CODE_ERR",
    209: "QPL_STS_BAD_LL_CODE_LEN_ERR",
    211: "QPL_STS_BAD_LL_CODE_ERR",
    212: "QPL_STS_BAD_D_CODE_ERR",
    213: "QPL_STS_INVALID_BLOCK_TYPE",
    214: "QPL_STS_INVALID_STORED_LEN_ERR",
    215: "QPL_STS_BAD_EOF_ERR",
    216: "QPL_STS_BAD_LEN_ERR",
    217: "QPL_STS_BAD_DIST_ERR",
    218: "QPL_STS_REF_BEFORE_START_ERR",
    225: "QPL_STS_DST_IS_SHORT_ERR",
    500: "QPL_STS_INIT_HW_NOT_SUPPORTED",
    501: "QPL_STS_INIT_LIBACCEL_NOT_FOUND",
    502: "QPL_STS_INIT_LIBACCEL_ERROR",
    503: "QPL_STS_INIT_WORK_QUEUES_NOT_AVAILABLE",
}
# What the initialisation statuses mean, in status.h's words, for probe reasons.
INIT_MEANINGS = {
    500: "the hardware path is not supported on this system",
    501: "libaccel-config is not found or not compatible",
    502: "libaccel-config internal error",
    503: "no supported and enabled IAA work queue (or no permission to open one)",
}


def status_name(code: int) -> str:
    return f"{code} ({STATUS_NAMES.get(code, 'unknown status')})"


class QplData(ctypes.Structure):
    """``struct qpl_aux_data`` (``qpl_data``): the library's own pointers, never touched here."""

    _fields_ = [
        ("compress_state_ptr", ctypes.c_void_p),
        ("decompress_state_ptr", ctypes.c_void_p),
        ("analytics_state_ptr", ctypes.c_void_p),
        ("middle_layer_buffer_ptr", ctypes.c_void_p),
        ("hw_state_ptr", ctypes.c_void_p),
        ("path", ctypes.c_int),
    ]


class QplJob(ctypes.Structure):
    """``qpl_job`` (job.h). Enums are C ``int``-sized; every field is listed so ``sizeof`` matches too."""

    _fields_ = [
        ("next_in_ptr", ctypes.c_void_p),
        ("available_in", ctypes.c_uint32),
        ("total_in", ctypes.c_uint32),
        ("next_out_ptr", ctypes.c_void_p),
        ("available_out", ctypes.c_uint32),
        ("total_out", ctypes.c_uint32),
        ("op", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("crc", ctypes.c_uint32),
        ("xor_checksum", ctypes.c_uint32),
        ("last_bit_offset", ctypes.c_uint32),
        ("level", ctypes.c_int),
        ("statistics_mode", ctypes.c_int),
        ("huffman_table", ctypes.c_void_p),
        ("dictionary", ctypes.c_void_p),
        ("mini_block_size", ctypes.c_int),
        ("idx_array", ctypes.c_void_p),
        ("idx_max_size", ctypes.c_uint32),
        ("idx_num_written", ctypes.c_uint32),
        ("decomp_end_processing", ctypes.c_uint8),
        ("ignore_start_bits", ctypes.c_uint8),
        ("ignore_end_bits", ctypes.c_uint8),
        ("crc64_poly", ctypes.c_uint64),
        ("crc64", ctypes.c_uint64),
        ("next_src2_ptr", ctypes.c_void_p),
        ("available_src2", ctypes.c_uint32),
        ("src1_bit_width", ctypes.c_uint32),
        ("src2_bit_width", ctypes.c_uint32),
        ("num_input_elements", ctypes.c_uint32),
        ("out_bit_width", ctypes.c_int),
        ("param_low", ctypes.c_uint32),
        ("param_high", ctypes.c_uint32),
        ("drop_initial_bytes", ctypes.c_uint32),
        ("initial_output_index", ctypes.c_uint32),
        ("parser", ctypes.c_int),
        ("first_index_min_value", ctypes.c_uint32),
        ("last_index_max_value", ctypes.c_uint32),
        ("sum_value", ctypes.c_uint32),
        ("numa_id", ctypes.c_int32),
        ("data_ptr", QplData),
    ]


# The C name of each structure, for the layout test.
C_TYPES: dict[type[ctypes.Structure], str] = {QplJob: "qpl_job", QplData: "qpl_data"}

_JOB_P = ctypes.POINTER(QplJob)
SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "qpl_get_job_size": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)]),
    "qpl_init_job": (ctypes.c_int, [ctypes.c_int, _JOB_P]),
    "qpl_execute_job": (ctypes.c_int, [_JOB_P]),
    "qpl_fini_job": (ctypes.c_int, [_JOB_P]),
}
OPTIONAL_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "qpl_get_library_version": (ctypes.c_char_p, []),
}


class Library:
    """libqpl loaded from one path; its functions typed once."""

    def __init__(self, path: str) -> None:
        # CDLL, not PyDLL: calls drop the GIL (a job runs on a channel's own thread).
        self._dll = ctypes.CDLL(path)
        self.path = path
        for name, (restype, argtypes) in SIGNATURES.items():
            function = getattr(self._dll, name)  # AttributeError: not libqpl
            function.restype = restype
            function.argtypes = argtypes
        self.get_job_size = self._dll.qpl_get_job_size
        self.init_job = self._dll.qpl_init_job
        self.execute_job = self._dll.qpl_execute_job
        self.fini_job = self._dll.qpl_fini_job
        self.version = self._version()

    def _version(self) -> str | None:
        function = getattr(self._dll, "qpl_get_library_version", None)
        if function is not None:
            function.restype, function.argtypes = OPTIONAL_SIGNATURES["qpl_get_library_version"]
            raw = function()
            if isinstance(raw, bytes) and raw:
                return raw.decode("ascii", "replace")
        # Builds without the export: the private build records its tarball's name.
        source = Path(self.path).resolve().parent.parent / "SOURCE"
        try:
            words = source.read_text().split()
        except OSError:
            return None
        name = words[0] if words else ""
        return name.split("-")[1] if name.startswith("qpl-") and name.count("-") >= 1 else None

    def job(self, path: int) -> Job:
        return Job(self, path)


class JobInitError(CodecError):
    """``qpl_init_job`` refused a path (501/503 without IAA); ``status`` is its qpl_status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _release(library: Library, job: Any) -> None:
    library.fini_job(job)


class Job:
    """One initialised ``qpl_job`` on one path. Not thread safe (neither is libqpl's job)."""

    def __init__(self, library: Library, path: int) -> None:
        self.library = library
        self.path = path
        size = ctypes.c_uint32()
        status = library.get_job_size(path, ctypes.byref(size))
        if status != STS_OK:
            raise JobInitError(f"qpl_get_job_size({PATH_NAMES[path]}) returned {status_name(status)}", status)
        if size.value < ctypes.sizeof(QplJob):
            raise CodecError(f"qpl_get_job_size says {size.value} bytes, less than qpl_job ({ctypes.sizeof(QplJob)})")
        # The library keeps its state right after the public fields: the whole block is ours to keep alive.
        # A u64 array is 8-byte aligned (malloc gives 16) like the C allocation libqpl expects.
        self._memory = (ctypes.c_uint64 * ((size.value + 7) // 8))()
        self.job = QplJob.from_buffer(self._memory)
        self._pointer = ctypes.pointer(self.job)
        status = library.init_job(path, self._pointer)
        if status != STS_OK:
            raise JobInitError(f"qpl_init_job({PATH_NAMES[path]}) returned {status_name(status)}", status)
        self._finalizer = weakref.finalize(self, _release, library, self._pointer)

    @property
    def hardware(self) -> bool:
        return self.path == PATH_HARDWARE

    def compress(self, source: int, size: int, destination: int, room: int) -> tuple[int, int]:
        """Deflate ``size`` bytes at address ``source`` into ``room`` bytes at ``destination``: (status, written)."""
        job = self.job
        job.op = OP_COMPRESS
        job.next_in_ptr = source
        job.available_in = size
        job.next_out_ptr = destination
        job.available_out = room
        job.flags = COMPRESS_FLAGS
        job.level = DEFAULT_LEVEL
        status: int = self.library.execute_job(self._pointer)
        return status, job.total_out

    def decompress(self, source: int, size: int, destination: int, room: int) -> tuple[int, int, int]:
        """Inflate one whole stream: (status, bytes read, bytes written)."""
        job = self.job
        job.op = OP_DECOMPRESS
        job.next_in_ptr = source
        job.available_in = size
        job.next_out_ptr = destination
        job.available_out = room
        job.flags = DECOMPRESS_FLAGS
        status: int = self.library.execute_job(self._pointer)
        return status, job.total_in, job.total_out

    def close(self) -> None:
        self._finalizer()


def address(view: memoryview) -> int:
    """Where a writable buffer's bytes are, without a copy (the export ends with this call)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))

/* A multifd zstd channel's stream, compiled against the system's libzstd (the library QEMU links).
 *
 * CStream.compress(spans): a packet's pages into the channel's one open frame, ended with a block
 * flush; DStream.decompress_into(payload, spans): a packet's payload straight into its pages. Each
 * call holds its buffers and runs without the GIL. python-zstandard in codec.py is the reference;
 * decompress_into reproduces its outcome exactly (tests/test_zstd_compiled.py), including where a
 * payload that decodes to too much and a corrupt one part: the reference decodes into one buffer of
 * `output_size` bytes and judges after each call, so the pages here are followed by a scratch area
 * that makes up the same size.
 *
 * Each stream also offers mfdcomp's engine a hook (packet_compressor, packet_decompressor: capsules of the
 * contracts in mfdcomp/_speedups.h), so its compiled loops compress and decode a packet on the same stream
 * without calling back into Python; the decoder's hook judges and words a payload as codec.py does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <zstd.h>

/* mfdcomp's compiled send path calls a codec's compressor through this (mfdcomp/_speedups.h, version 1 of
 * the contract: the capsule's name says which layout it holds). */
#define MFDCOMP_COMPRESSOR_CAPSULE "mfdcomp.compressor.v1"
typedef struct {
    void *ctx;
    Py_ssize_t (*compress)(void *ctx, const struct iovec *pages, int count, const char **out, char *error,
                           size_t error_size);
} mfdcomp_compressor;
#define MFDCOMP_DECOMPRESSOR_CAPSULE "mfdcomp.decompressor.v1"
typedef struct {
    void *ctx;
    int (*decompress)(void *ctx, const unsigned char *payload, size_t size, unsigned char *out, size_t out_size,
                      unsigned long long packet_num, unsigned int pages, Py_ssize_t page_size, char *error,
                      size_t error_size);
} mfdcomp_decompressor;

static const unsigned char FRAME_MAGIC[4] = {0x28, 0xb5, 0x2f, 0xfd};

static PyObject *ZstdPagesError;

/* A sequence of buffers, held for a call made without the GIL. */
typedef struct {
    Py_buffer *views;
    Py_ssize_t count;
    size_t total;
} Spans;

static void spans_release(Spans *spans) {
    for (Py_ssize_t i = 0; i < spans->count; i++)
        PyBuffer_Release(&spans->views[i]);
    PyMem_Free(spans->views);
    spans->views = NULL;
    spans->count = 0;
}

static int spans_get(PyObject *sequence, int flags, Spans *spans) {
    spans->views = NULL;
    spans->count = 0;
    spans->total = 0;
    PyObject *fast = PySequence_Fast(sequence, "spans must be a sequence of buffers");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    spans->views = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    if (spans->views == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, i), &spans->views[i], flags | PyBUF_C_CONTIGUOUS) < 0) {
            Py_DECREF(fast);
            spans_release(spans);
            return -1;
        }
        spans->count = i + 1;
        spans->total += (size_t)spans->views[i].len;
    }
    Py_DECREF(fast);
    return 0;
}

/* One channel's object is used by one thread at a time; a second caller is refused, not raced. */
static int claim(int *busy) {
    if (*busy) {
        PyErr_SetString(PyExc_RuntimeError, "this zstd stream is already in use by another thread");
        return -1;
    }
    *busy = 1;
    return 0;
}

/* --- CStream ----------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    ZSTD_CCtx *cctx;
    /* The payloads' bytearray, reused once no view of the last payload is left: a fresh 512 KiB
     * object per packet is mapped and faulted in anew by malloc (~70 page faults a packet). */
    PyObject *out;
    /* mfdcomp's compiled send path: the hook its capsule points at, and the payload buffer it fills
     * (the channel thread's alone; valid until the next packet). */
    mfdcomp_compressor hook;
    char *raw;
    size_t raw_size;
    int busy;
} CStream;

/* The pages through the stream, then a block flush, into out: 0, or the library's error code; *full when
 * the output ran out of room first. Without the GIL. */
static size_t feed(ZSTD_CCtx *cctx, const struct iovec *pages, int count, ZSTD_outBuffer *out, int *full) {
    size_t rc = 0;
    *full = 0;
    for (int i = 0; i < count; i++) {
        ZSTD_inBuffer in = {pages[i].iov_base, pages[i].iov_len, 0};
        while (in.pos < in.size) {
            rc = ZSTD_compressStream2(cctx, out, &in, ZSTD_e_continue);
            if (ZSTD_isError(rc))
                return rc;
            if ((*full = out->pos == out->size))
                return 0;
        }
    }
    ZSTD_inBuffer none = {NULL, 0, 0};
    do {
        rc = ZSTD_compressStream2(cctx, out, &none, ZSTD_e_flush);
    } while (!ZSTD_isError(rc) && rc != 0 && !(*full = out->pos == out->size));
    return ZSTD_isError(rc) ? rc : 0;
}

/* A flushed stream's output fits the library's single-shot bound (frame and block headers included);
 * the slack covers the frame header again, at most 18 bytes, in case it is not. */
static size_t bound_of(size_t total) {
    return ZSTD_compressBound(total) + 64;
}

/* mfdcomp_compressor.compress: the same bytes as CStream.compress, into the hook's own buffer. */
static Py_ssize_t CStream_hook(void *ctx, const struct iovec *pages, int count, const char **out_data, char *error,
                               size_t error_size) {
    CStream *self = ctx;
    size_t total = 0;
    for (int i = 0; i < count; i++)
        total += pages[i].iov_len;
    size_t bound = bound_of(total);
    if (self->raw_size < bound) {
        free(self->raw);
        self->raw_size = 0;
        self->raw = malloc(bound);
        if (self->raw == NULL) {
            snprintf(error, error_size, "zstd compression failed: no memory for a %zu-byte payload", bound);
            return -1;
        }
        self->raw_size = bound;
    }
    ZSTD_outBuffer out = {self->raw, bound, 0};
    int full;
    size_t rc = feed(self->cctx, pages, count, &out, &full);
    if (ZSTD_isError(rc) || full) {
        if (full)
            snprintf(error, error_size, "zstd compression failed: zstd compress error: output exceeds its bound of %zu bytes",
                     bound);
        else
            snprintf(error, error_size, "zstd compression failed: zstd compress error: %s", ZSTD_getErrorName(rc));
        return -1;
    }
    *out_data = self->raw;
    return (Py_ssize_t)out.pos;
}

static void capsule_release(PyObject *capsule) {
    Py_XDECREF(PyCapsule_GetContext(capsule));
}

/* A capsule of one of the engine's contracts over a stream's hook; it keeps the stream alive for as long as
 * the engine holds it. */
static PyObject *hook_capsule(PyObject *stream, void *hook, const char *name) {
    PyObject *capsule = PyCapsule_New(hook, name, capsule_release);
    if (capsule == NULL)
        return NULL;
    Py_INCREF(stream);
    if (PyCapsule_SetContext(capsule, stream) < 0) {
        Py_DECREF(stream);
        Py_DECREF(capsule);
        return NULL;
    }
    return capsule;
}

static PyObject *CStream_packet_compressor(CStream *self, PyObject *unused) {
    if (self->cctx == NULL) {
        PyErr_SetString(PyExc_ValueError, "CStream was not initialised");
        return NULL;
    }
    self->hook.ctx = self;
    self->hook.compress = CStream_hook;
    return hook_capsule((PyObject *)self, &self->hook, MFDCOMP_COMPRESSOR_CAPSULE);
}

static int CStream_init(CStream *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"level", NULL};
    int level;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i", keywords, &level))
        return -1;
    if (self->cctx == NULL)
        self->cctx = ZSTD_createCCtx();
    if (self->cctx == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    /* The library's defaults otherwise, as QEMU's ZSTD_initCStream(level). */
    size_t rc = ZSTD_CCtx_reset(self->cctx, ZSTD_reset_session_and_parameters);
    if (!ZSTD_isError(rc))
        rc = ZSTD_CCtx_setParameter(self->cctx, ZSTD_c_compressionLevel, level);
    if (ZSTD_isError(rc)) {
        PyErr_Format(ZstdPagesError, "zstd compress error: %s", ZSTD_getErrorName(rc));
        return -1;
    }
    return 0;
}

static void CStream_dealloc(CStream *self) {
    ZSTD_freeCCtx(self->cctx);
    Py_XDECREF(self->out);
    free(self->raw);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A bytearray of at least `size` bytes that nobody else sees: the last one unless a view of it lives. */
static char *CStream_output(CStream *self, size_t size) {
    PyByteArrayObject *out = (PyByteArrayObject *)self->out;
    if (out == NULL || out->ob_exports > 0 || (size_t)Py_SIZE(out) < size) {
        Py_CLEAR(self->out);
        self->out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)size);
        if (self->out == NULL)
            return NULL;
    }
    return PyByteArray_AS_STRING(self->out);
}

/* Feeds every span, then flushes a block: the packet's payload, a read-only view valid for as long as
 * it is held (the next call writes elsewhere while it lives). */
static PyObject *CStream_compress(CStream *self, PyObject *spans_arg) {
    if (self->cctx == NULL) {
        PyErr_SetString(PyExc_ValueError, "CStream was not initialised");
        return NULL;
    }
    Spans spans;
    if (spans_get(spans_arg, PyBUF_SIMPLE, &spans) < 0)
        return NULL;
    size_t bound = bound_of(spans.total);
    struct iovec *pages = PyMem_Malloc((size_t)(spans.count ? spans.count : 1) * sizeof *pages);
    char *output = pages != NULL ? CStream_output(self, bound) : NULL;
    if (pages == NULL || output == NULL || claim(&self->busy) < 0) {
        if (pages == NULL)
            PyErr_NoMemory();
        PyMem_Free(pages);
        spans_release(&spans);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < spans.count; i++)
        pages[i] = (struct iovec){spans.views[i].buf, (size_t)spans.views[i].len};
    ZSTD_outBuffer out = {output, bound, 0};
    size_t rc;
    int full;
    Py_BEGIN_ALLOW_THREADS
    rc = feed(self->cctx, pages, (int)spans.count, &out, &full);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyMem_Free(pages);
    spans_release(&spans);
    if (ZSTD_isError(rc) || full) {
        if (full)
            PyErr_Format(ZstdPagesError, "zstd compress error: output exceeds its bound of %zu bytes", bound);
        else
            PyErr_Format(ZstdPagesError, "zstd compress error: %s", ZSTD_getErrorName(rc));
        return NULL;
    }
    PyObject *whole = PyMemoryView_FromObject(self->out);
    if (whole == NULL)
        return NULL;
    PyObject *end = PyLong_FromSize_t(out.pos);
    PyObject *part = end ? PySlice_New(NULL, end, NULL) : NULL;
    PyObject *view = part ? PyObject_GetItem(whole, part) : NULL;
    Py_XDECREF(part);
    Py_XDECREF(end);
    Py_DECREF(whole);
    if (view == NULL)
        return NULL;
    /* read-only, as bytes would be: the view is the payload, not a place to write */
    PyObject *readonly = PyObject_CallMethod(view, "toreadonly", NULL);
    Py_DECREF(view);
    return readonly;
}

static PyMethodDef CStream_methods[] = {
    {"packet_compressor", (PyCFunction)CStream_packet_compressor, METH_NOARGS,
     "packet_compressor() -> capsule: this stream as mfdcomp's compiled send path calls it (" MFDCOMP_COMPRESSOR_CAPSULE
     "); the same bytes as compress(), in the same stream."},
    {"compress", (PyCFunction)CStream_compress, METH_O,
     "compress(spans) -> memoryview: the spans through the open frame, then a block flush (ZSTD_e_flush); "
     "the view stays valid while it is held."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CStreamType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mfdcomp_zstd._zstdpages.CStream",
    .tp_doc = PyDoc_STR("CStream(level): one channel's zstd compression stream (one frame, never ended)."),
    .tp_basicsize = sizeof(CStream),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)CStream_init,
    .tp_dealloc = (destructor)CStream_dealloc,
    .tp_methods = CStream_methods,
};

/* --- DStream ----------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    ZSTD_DCtx *dctx;
    char *scratch;       /* output past the pages lands here, to be counted, never kept */
    size_t output_size;  /* the reference's output buffer: pages plus scratch add up to it */
    int busy;
    /* The channel's stream state, shared by ZstdMethods.recv and the hook (whichever takes a packet):
     * a payload decoded whole (a later one may not open a new frame), a payload failed (no more). */
    int started, broken;
    int channel;         /* for the hook's message */
    mfdcomp_decompressor hook;
} DStream;

static int DStream_init(DStream *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"window_log_max", "output_size", "channel", NULL};
    int window_log_max, channel = 0;
    Py_ssize_t output_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "in|i", keywords, &window_log_max, &output_size, &channel))
        return -1;
    self->channel = channel;
    self->started = self->broken = 0;
    if (output_size < 1) {
        PyErr_SetString(PyExc_ValueError, "output_size must be at least 1");
        return -1;
    }
    if (self->dctx == NULL)
        self->dctx = ZSTD_createDCtx();
    PyMem_RawFree(self->scratch);
    self->scratch = PyMem_RawMalloc((size_t)output_size);
    if (self->dctx == NULL || self->scratch == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->output_size = (size_t)output_size;
    size_t rc = ZSTD_DCtx_reset(self->dctx, ZSTD_reset_session_and_parameters);
    if (!ZSTD_isError(rc))
        rc = ZSTD_DCtx_setParameter(self->dctx, ZSTD_d_windowLogMax, window_log_max);
    if (ZSTD_isError(rc)) {
        PyErr_Format(ZstdPagesError, "zstd decompress error: %s", ZSTD_getErrorName(rc));
        return -1;
    }
    return 0;
}

static void DStream_dealloc(DStream *self) {
    ZSTD_freeDCtx(self->dctx);
    PyMem_RawFree(self->scratch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Decodes all of the payload into the targets (total bytes), then the scratch, without the GIL: the library's
 * code (an error, or 0); *written the bytes it decoded to, which exceed total when the payload decodes to
 * too much (counting stops once the scratch is full, where the reference would have judged too); *left the
 * input bytes left when the library stopped making progress (else 0). */
static size_t decode(DStream *self, const void *src, size_t size, const struct iovec *targets, Py_ssize_t count,
                     size_t total, size_t *written_out, size_t *left) {
    size_t rc = 0, written = 0;
    *left = 0;
    ZSTD_inBuffer in = {src, size, 0};
    Py_ssize_t next = 0;  /* the next target to fill; count means the scratch */
    ZSTD_outBuffer out = {NULL, 0, 0};
    int filled = 0;       /* the last call filled its output: the decoder may hold more */
    for (;;) {
        if (out.pos == out.size) {
            written += out.pos;
            if (next > count)
                break;  /* the scratch is full: too much, as the reference judges */
            if (next < count)
                out = (ZSTD_outBuffer){targets[next].iov_base, targets[next].iov_len, 0};
            else
                out = (ZSTD_outBuffer){self->scratch, self->output_size - total, 0};
            next++;
            if (out.size == 0)
                continue;
        }
        if (in.pos == in.size && !filled)
            break;
        size_t in_before = in.pos, out_before = out.pos;
        rc = ZSTD_decompressStream(self->dctx, &out, &in);
        if (ZSTD_isError(rc))
            break;
        filled = out.pos == out.size;
        if (in.pos < in.size && in.pos == in_before && out.pos == out_before) {
            *left = in.size - in.pos;  /* input left, yet it neither read nor wrote: it would be called forever */
            break;
        }
    }
    if (out.pos != out.size)
        written += out.pos;  /* the partly filled output (a full one was counted at the loop's top) */
    *written_out = written;
    return ZSTD_isError(rc) ? rc : 0;
}

/* Decodes all of the payload into the spans, then the scratch; returns the bytes it decoded to,
 * which exceed the spans' total when the payload decodes to too much (it stops counting once the
 * scratch is full, where the reference would have judged too). */
static PyObject *DStream_decompress_into(DStream *self, PyObject *args) {
    Py_buffer payload;
    PyObject *spans_arg;
    if (self->dctx == NULL) {
        PyErr_SetString(PyExc_ValueError, "DStream was not initialised");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*O", &payload, &spans_arg))
        return NULL;
    Spans spans;
    if (spans_get(spans_arg, PyBUF_WRITABLE, &spans) < 0) {
        PyBuffer_Release(&payload);
        return NULL;
    }
    if (spans.total >= self->output_size) {  /* the scratch must hold at least a byte */
        PyErr_Format(PyExc_ValueError, "the spans hold %zu bytes, not less than the output size %zu", spans.total,
                     self->output_size);
    } else {
        claim(&self->busy);
    }
    if (PyErr_Occurred()) {
        spans_release(&spans);
        PyBuffer_Release(&payload);
        return NULL;
    }
    struct iovec *targets = PyMem_Malloc((size_t)(spans.count ? spans.count : 1) * sizeof *targets);
    if (targets == NULL) {
        self->busy = 0;
        spans_release(&spans);
        PyBuffer_Release(&payload);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < spans.count; i++)
        targets[i] = (struct iovec){spans.views[i].buf, (size_t)spans.views[i].len};
    size_t written = 0, rc = 0, left = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = decode(self, payload.buf, (size_t)payload.len, targets, spans.count, spans.total, &written, &left);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyMem_Free(targets);
    spans_release(&spans);
    PyBuffer_Release(&payload);
    if (ZSTD_isError(rc))
        return PyErr_Format(ZstdPagesError, "zstd decompress error: %s", ZSTD_getErrorName(rc));
    if (left)
        return PyErr_Format(ZstdPagesError, "zstd decompress error: no progress with %zu input bytes left", left);
    return PyLong_FromSize_t(written);
}

/* mfdcomp_decompressor.decompress: one packet's payload into its pages, judged and worded as ZstdMethods.recv
 * judges and words it (codec.py): a new frame after the first packet, a library error, too many or too few
 * bytes. A failed packet leaves the stream broken, as the Python path drops it. */
static int DStream_hook(void *ctx, const unsigned char *payload, size_t size, unsigned char *out, size_t out_size,
                        unsigned long long packet_num, unsigned int pages, Py_ssize_t page_size, char *error,
                        size_t error_size) {
    DStream *self = ctx;
    if (self->broken) {
        snprintf(error, error_size,
                 "the zstd stream of channel %d is closed (cleaned up, or an earlier packet failed)", self->channel);
        return -1;
    }
    char what[96];
    snprintf(what, sizeof what, "zstd payload of packet %llu (pages: %u \xc3\x97 %zd bytes)", packet_num, pages,
             page_size);
    self->broken = 1;
    if (self->started && size >= sizeof FRAME_MAGIC && memcmp(payload, FRAME_MAGIC, sizeof FRAME_MAGIC) == 0) {
        snprintf(error, error_size, "%s starts a new zstd frame, but QEMU keeps one open frame per channel", what);
        return -1;
    }
    struct iovec target = {out, out_size};
    size_t written = 0, left = 0;
    size_t rc = out_size < self->output_size ? decode(self, payload, size, &target, 1, out_size, &written, &left) : 0;
    if (out_size >= self->output_size)
        snprintf(error, error_size, "%s do not fit the decoder's %zu-byte output", what, self->output_size);
    else if (ZSTD_isError(rc))
        snprintf(error, error_size, "%s is corrupt or unsupported: zstd decompress error: %s", what,
                 ZSTD_getErrorName(rc));
    else if (left)
        snprintf(error, error_size, "%s is corrupt or unsupported: zstd decompress error: no progress with %zu input "
                 "bytes left", what, left);
    else if (written > out_size)
        snprintf(error, error_size, "%s decodes to more than %zu bytes", what, out_size);
    else if (written != out_size)
        snprintf(error, error_size, "%s decodes to %zu bytes, short of %zu", what, written, out_size);
    else {
        self->broken = 0;
        self->started = 1;
        return 0;
    }
    return -1;
}

static PyObject *DStream_packet_decompressor(DStream *self, PyObject *unused) {
    if (self->dctx == NULL) {
        PyErr_SetString(PyExc_ValueError, "DStream was not initialised");
        return NULL;
    }
    self->hook.ctx = self;
    self->hook.decompress = DStream_hook;
    return hook_capsule((PyObject *)self, &self->hook, MFDCOMP_DECOMPRESSOR_CAPSULE);
}

static PyMemberDef DStream_members[] = {
    {"started", T_BOOL, offsetof(DStream, started) , 0, "a payload of this stream decoded whole"},
    {"broken", T_BOOL, offsetof(DStream, broken), 0, "a payload of this stream failed: no more are taken"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef DStream_methods[] = {
    {"packet_decompressor", (PyCFunction)DStream_packet_decompressor, METH_NOARGS,
     "packet_decompressor() -> capsule: this stream as mfdcomp's compiled receive loop calls it ("
     MFDCOMP_DECOMPRESSOR_CAPSULE "); judged and worded as ZstdMethods.recv."},
    {"decompress_into", (PyCFunction)DStream_decompress_into, METH_VARARGS,
     "decompress_into(payload, spans) -> int: all of the payload into the spans; the bytes it decoded to "
     "(more than the spans hold when it decodes to too much)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DStreamType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mfdcomp_zstd._zstdpages.DStream",
    .tp_doc = PyDoc_STR("DStream(window_log_max, output_size): one channel's zstd decompression stream."),
    .tp_basicsize = sizeof(DStream),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)DStream_init,
    .tp_dealloc = (destructor)DStream_dealloc,
    .tp_methods = DStream_methods,
    .tp_members = DStream_members,
};

/* --- module ------------------------------------------------------------------------------------ */

static PyObject *version(PyObject *module, PyObject *unused) {
    return PyUnicode_FromString(ZSTD_versionString());
}

static PyMethodDef module_methods[] = {
    {"version", version, METH_NOARGS, "version() -> str: the libzstd this module runs on."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "mfdcomp_zstd._zstdpages",
    "A multifd zstd channel's streams on the system's libzstd, without the GIL.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__zstdpages(void) {
    if (PyType_Ready(&CStreamType) < 0 || PyType_Ready(&DStreamType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    ZstdPagesError = PyErr_NewException("mfdcomp_zstd._zstdpages.Error", NULL, NULL);
    if (ZstdPagesError == NULL || PyModule_AddObjectRef(module, "Error", ZstdPagesError) < 0 ||
        PyModule_AddObjectRef(module, "CStream", (PyObject *)&CStreamType) < 0 ||
        PyModule_AddObjectRef(module, "DStream", (PyObject *)&DStreamType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

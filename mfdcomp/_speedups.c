/* mfdcomp._speedups: compiled per-packet hot paths (issue 18.3).
 *
 * The pure-Python code stays the reference and the fallback (mfdcomp.speedups
 * picks one; MFDCOMP_PURE_PYTHON=1 forces the pure path). Each function here
 * checks its own arguments again, so a direct call with hostile values raises
 * the same ValueError the Python path raises instead of reading out of bounds.
 *
 * page_digests(block, offsets, page_size, table) -> None
 *     XXH3-128 of each page at the byte offsets, canonical, into the page's
 *     16-byte slot of table (mfdcomp.pagedigest), without the GIL.
 *
 * zero_flags(block, offsets, page_size) -> list[bool]
 *     For each byte offset, whether the page_size bytes there are all zero.
 *     numpy's reduceat reads every byte of every page; here a page stops at
 *     its first non-zero KiB, so normal pages (text, random) cost a few
 *     loads and only zero pages are read whole. The scan runs without
 *     the GIL: the other channels' threads keep going meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* xxHash (BSD 2-Clause, mfdcomp/_vendor/xxhash-LICENSE), inlined: the xxh3-128 page digests. */
#define XXH_INLINE_ALL
#include "_vendor/xxhash.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* Pages at least this long (in total) are scanned with the GIL released: below it the release costs more. */
#define RELEASE_GIL_BYTES (64 * 1024)

static inline int
page_is_zero(const unsigned char *page, Py_ssize_t size)
{
    Py_ssize_t i = 0;
    /* 1 KiB per test: the OR of 128 unaligned words vectorises (SSE2 at -O3), and a normal page
     * (text, random, half) almost always ends at its first step. 64 bytes per test read zero pages
     * at 4 GB/s against numpy's 5.5; 1 KiB reads them at memory speed. */
    for (; i + 1024 <= size; i += 1024) {
        uint64_t acc = 0;
        for (int j = 0; j < 128; j++) {
            uint64_t w;
            memcpy(&w, page + i + 8 * j, sizeof w);
            acc |= w;
        }
        if (acc != 0)
            return 0;
    }
    for (; i + 8 <= size; i += 8) {
        uint64_t w;
        memcpy(&w, page + i, sizeof w);
        if (w != 0)
            return 0;
    }
    /* page_size is a multiple of 8 (checked below), so no bytes are left here. */
    return 1;
}

/* One build per instruction set, picked at load by the CPU (GCC's ifunc): the OR of a zero page's
 * words in 64-byte (AVX-512) or 32-byte (AVX2) registers instead of SSE2's 16. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void
scan_pages(const unsigned char *base, const Py_ssize_t *offsets, Py_ssize_t count, Py_ssize_t page_size,
           unsigned char *flags)
{
    for (Py_ssize_t k = 0; k < count; k++)
        flags[k] = (unsigned char)page_is_zero(base + offsets[k], page_size);
}

/* Offsets of a sequence as Py_ssize_t, each a page of a len-byte buffer, NULL with ValueError otherwise:
 * aligned to page_size with page_digests' message when aligned != 0, anywhere with zero_flags' otherwise
 * (each the message of its pure-Python twin). *count gets the length; free the result with PyMem_Free. */
static Py_ssize_t *
page_offsets(PyObject *offsets_obj, Py_ssize_t len, Py_ssize_t page_size, int aligned, Py_ssize_t *count)
{
    PyObject *seq = PySequence_Fast(offsets_obj, "offsets must be a sequence of ints");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t *offsets = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *offsets);
    if (offsets == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t offset = PyNumber_AsSsize_t(items[k], PyExc_OverflowError);
        if (offset == -1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                goto fail;
            PyErr_Clear();
            offset = -1; /* out of range either way: reported below */
        }
        if (offset < 0 || len < page_size || offset > len - page_size || (aligned && offset % page_size)) {
            if (!aligned) {
                PyErr_Format(PyExc_ValueError,
                             "page offsets must lie in [0, %zd] for a %zd-byte block and %zd-byte pages",
                             len - page_size, len, page_size);
                goto fail;
            }
            /* The offset as Python prints the int (a huge one is not clipped): the pure path's message. */
            PyObject *index = PyNumber_Index(items[k]);
            if (index != NULL) {
                PyErr_Format(PyExc_ValueError, "offset %S is not a page of a %zd-byte block (%zd-byte pages)",
                             index, len, page_size);
                Py_DECREF(index);
            }
            goto fail;
        }
        offsets[k] = offset;
    }
    Py_DECREF(seq);
    *count = n;
    return offsets;
fail:
    Py_DECREF(seq);
    PyMem_Free(offsets);
    return NULL;
}

static PyObject *
zero_flags(PyObject *self, PyObject *args)
{
    PyObject *block, *offsets_obj;
    Py_ssize_t page_size;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOn:zero_flags", &block, &offsets_obj, &page_size))
        return NULL;
    if (page_size <= 0 || page_size % 8) {
        PyErr_Format(PyExc_ValueError, "page_size must be a positive multiple of 8, got %zd", page_size);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(block, &view, PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "zero-page detection needs a C-contiguous buffer");
        return NULL;
    }
    PyObject *result = NULL;
    unsigned char *flags = NULL;
    Py_ssize_t count = 0;
    Py_ssize_t *offsets = page_offsets(offsets_obj, view.len, page_size, 0, &count);
    if (offsets == NULL)
        goto done;
    flags = PyMem_Malloc((size_t)(count ? count : 1));
    if (flags == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const unsigned char *base = view.buf;
    if ((double)count * (double)page_size >= RELEASE_GIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        scan_pages(base, offsets, count, page_size, flags);
        Py_END_ALLOW_THREADS
    } else {
        scan_pages(base, offsets, count, page_size, flags);
    }
    result = PyList_New(count);
    if (result == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *flag = flags[k] ? Py_True : Py_False;
        Py_INCREF(flag);
        PyList_SET_ITEM(result, k, flag);
    }
done:
    PyMem_Free(offsets);
    PyMem_Free(flags);
    PyBuffer_Release(&view);
    return result;
}

/* populate_write(buffer) -> bool
 *     Map every page of a writable mapping ahead (MADV_POPULATE_WRITE) without the GIL: one call instead
 *     of a page fault per page as the channels write and the digest reads. Content is unchanged. False
 *     when the kernel cannot (before 5.14, or not a mapping): the pages then fault in as they are used. */
static PyObject *
populate_write(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t start = ((uintptr_t)view.buf + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t end = ((uintptr_t)view.buf + (uintptr_t)view.len) & ~((uintptr_t)page - 1);
    int ok = 1;
    if (end > start) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = madvise((void *)start, end - start, MADV_POPULATE_WRITE);
        Py_END_ALLOW_THREADS
        ok = rc == 0;
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}

#define DIGEST_SIZE 16

static void
hash_pages(const unsigned char *base, const Py_ssize_t *offsets, Py_ssize_t count, Py_ssize_t page_size,
           unsigned char *table)
{
    for (Py_ssize_t k = 0; k < count; k++) {
        XXH128_canonical_t canonical;
        XXH128_canonicalFromHash(&canonical, XXH3_128bits(base + offsets[k], (size_t)page_size));
        memcpy(table + offsets[k] / page_size * DIGEST_SIZE, canonical.digest, DIGEST_SIZE);
    }
}

static PyObject *
page_digests(PyObject *self, PyObject *args)
{
    PyObject *block, *offsets_obj, *table_obj;
    Py_ssize_t page_size;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOnO:page_digests", &block, &offsets_obj, &page_size, &table_obj))
        return NULL;
    if (page_size <= 0) {
        PyErr_Format(PyExc_ValueError, "page_size must be positive, got %zd", page_size);
        return NULL;
    }
    Py_buffer view, table;
    if (PyObject_GetBuffer(block, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(table_obj, &table, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t count = 0;
    Py_ssize_t *offsets = page_offsets(offsets_obj, view.len, page_size, 1, &count);
    if (offsets == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < count; k++) {
        if ((offsets[k] / page_size + 1) * DIGEST_SIZE > table.len) {
            PyErr_Format(PyExc_ValueError, "offset %zd: no slot for its page in a %zd-byte digest table",
                         offsets[k], table.len);
            goto done;
        }
    }
    if ((double)count * (double)page_size >= RELEASE_GIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        hash_pages(view.buf, offsets, count, page_size, table.buf);
        Py_END_ALLOW_THREADS
    } else {
        hash_pages(view.buf, offsets, count, page_size, table.buf);
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(offsets);
    PyBuffer_Release(&table);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"page_digests", page_digests, METH_VARARGS,
     "page_digests(block, offsets, page_size, table): XXH3-128 of each page into its 16-byte slot of table."},
    {"populate_write", populate_write, METH_O,
     "populate_write(buffer) -> bool: map a writable mapping's pages ahead (MADV_POPULATE_WRITE)."},
    {"zero_flags", zero_flags, METH_VARARGS,
     "zero_flags(block, offsets, page_size) -> list[bool]: whether each page at offsets is all zero."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "mfdcomp._speedups", "mfdcomp's compiled per-packet hot paths.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}

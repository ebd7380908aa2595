/* mfdcomp._speedups: compiled per-packet hot paths (issue 18.3).
 *
 * The pure-Python code stays the reference and the fallback (mfdcomp.speedups
 * picks one; MFDCOMP_PURE_PYTHON=1 forces the pure path). Each function here
 * checks its own arguments again, so a direct call with hostile values raises
 * the same ValueError the Python path raises instead of reading out of bounds.
 *
 * page_digests(block, offsets, page_size, table) -> None
 *     XXH3-128 of each page at the byte offsets, canonical, into the page's
 *     16-byte slot of table (mfdcomp.pagedigest), without the GIL. The hashing
 *     has a build per instruction set (mfdcomp/_xxh3_pages.h), picked at load;
 *     xxh3_builds(), xxh3_build() and set_xxh3_build(name) tell and choose.
 *
 * store_pages(fd, block, staged, offsets, page_size, table) -> None
 *     A destination channel's staged pages into the target (mfdcomp.pagestore):
 *     hashed into table from the staging buffer, then written with pwrite to
 *     the file block maps (through the mapping while another thread pwrites
 *     that file), or copied into block, without the GIL.
 *
 * recv_packets(fd, header, staging, blocks, page_size, capacity, max_packets, zero_digest[, codec_flag,
 *              payload_buffer, decompressor, reader]) -> tuple
 *     A destination channel's packets, read from its socket (or its reader: TLS), checked, decoded by the
 *     codec's compiled decompressor (nocomp: none) and stored without the GIL until a SYNC packet or one the
 *     Python loop must take (mfdcomp/_recvloop.c, mfdcomp.engine.fastrecv).
 *
 * send_packet(fd, block, offsets, page_size, capacity, detect_zero, packet_num, name_field, table, zero_digest,
 *             flags, compressor, out)
 *     One RAM packet of a source channel: zero pages found and put last as QEMU does, the normal pages
 *     compressed by the codec's compiled compressor (or sent as they are), header and payload written with
 *     sendmsg (or packed into out, for a TLS stream to send), pages hashed, all without the GIL
 *     (mfdcomp/_sendloop.c).
 *
 * send_packets(fd, block, batches, page_size, capacity, detect_zero, first_packet_num, name_field, table,
 *              zero_digest, flags, compressor, out)
 *     send_packet for several batches of one block, the GIL released once (mfdcomp/_sendloop.c).
 *
 * zero_flags(block, offsets, page_size) -> list[bool]
 *     For each byte offset, whether the page_size bytes there are all zero.
 *     numpy's reduceat reads every byte of every page; here a page stops at
 *     its first non-zero KiB, so normal pages (text, random) cost a few
 *     loads and only zero pages are read whole. The scan runs without
 *     the GIL: the other channels' threads keep going meanwhile.
 */
#include "_speedups.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <stdatomic.h>
#include <sys/mman.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* The xxh3-128 page digests: one build per instruction set (mfdcomp/_xxh3_pages.h), picked at load. */
void mfdcomp_xxh3_pages_default(const unsigned char *, const ssize_t *, ssize_t, ssize_t, int, unsigned char *);
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define XXH3_X86_BUILDS 1
void mfdcomp_xxh3_pages_avx2(const unsigned char *, const ssize_t *, ssize_t, ssize_t, int, unsigned char *);
void mfdcomp_xxh3_pages_avx512(const unsigned char *, const ssize_t *, ssize_t, ssize_t, int, unsigned char *);
#endif

struct xxh3_build {
    const char *name;
    xxh3_pages_fn fn;
    int (*supported)(void);
};

static int
always(void)
{
    return 1;
}

#ifdef XXH3_X86_BUILDS
static int
has_avx2(void)
{
    return __builtin_cpu_supports("avx2");
}

static int
has_avx512f(void)
{
    return __builtin_cpu_supports("avx512f");
}
#endif

/* Best first: the first one the CPU runs is used unless set_xxh3_build picks another (tests do). */
static const struct xxh3_build xxh3_builds_known[] = {
#ifdef XXH3_X86_BUILDS
    {"avx512", mfdcomp_xxh3_pages_avx512, has_avx512f},
    {"avx2", mfdcomp_xxh3_pages_avx2, has_avx2},
#endif
    {"default", mfdcomp_xxh3_pages_default, always},
};
#define XXH3_BUILDS (sizeof xxh3_builds_known / sizeof xxh3_builds_known[0])

/* Set at import (PyInit) and by set_xxh3_build, both under the GIL; read by hashing threads between calls. */
static const struct xxh3_build *xxh3_build = &xxh3_builds_known[XXH3_BUILDS - 1];

xxh3_pages_fn
mfdcomp_xxh3_pages(void)
{
    return xxh3_build->fn;
}

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
void
mfdcomp_scan_pages(const unsigned char *base, const Py_ssize_t *offsets, Py_ssize_t count, Py_ssize_t page_size,
           unsigned char *flags)
{
    for (Py_ssize_t k = 0; k < count; k++)
        flags[k] = (unsigned char)page_is_zero(base + offsets[k], page_size);
}

/* Offsets of a sequence as Py_ssize_t, each a page of a len-byte buffer, NULL with ValueError otherwise:
 * aligned to page_size with page_digests' message when aligned != 0, anywhere with zero_flags' otherwise
 * (each the message of its pure-Python twin). *count gets the length; free the result with PyMem_Free. */
Py_ssize_t *
mfdcomp_page_offsets(PyObject *offsets_obj, Py_ssize_t len, Py_ssize_t page_size, int aligned, Py_ssize_t *count)
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
    Py_ssize_t *offsets = mfdcomp_page_offsets(offsets_obj, view.len, page_size, 0, &count);
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
        mfdcomp_scan_pages(base, offsets, count, page_size, flags);
        Py_END_ALLOW_THREADS
    } else {
        mfdcomp_scan_pages(base, offsets, count, page_size, flags);
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

#define DIGEST_SIZE 16

/* Slot check of page_digests, store_pages and send_packet: every page's 16-byte slot lies in the table. */
int
mfdcomp_check_slots(const Py_ssize_t *offsets, Py_ssize_t count, Py_ssize_t page_size, Py_ssize_t table_len)
{
    for (Py_ssize_t k = 0; k < count; k++) {
        if ((offsets[k] / page_size + 1) * DIGEST_SIZE > table_len) {
            PyErr_Format(PyExc_ValueError, "offset %zd: no slot for its page in a %zd-byte digest table",
                         offsets[k], table_len);
            return -1;
        }
    }
    return 0;
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
    Py_ssize_t *offsets = mfdcomp_page_offsets(offsets_obj, view.len, page_size, 1, &count);
    if (offsets == NULL)
        goto done;
    if (mfdcomp_check_slots(offsets, count, page_size, table.len) < 0)
        goto done;
    xxh3_pages_fn hash = xxh3_build->fn;
    if ((double)count * (double)page_size >= RELEASE_GIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        hash(view.buf, offsets, count, page_size, 0, table.buf);
        Py_END_ALLOW_THREADS
    } else {
        hash(view.buf, offsets, count, page_size, 0, table.buf);
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(offsets);
    PyBuffer_Release(&table);
    PyBuffer_Release(&view);
    return result;
}

/* All size bytes at file offset at: pwrite again after a short write or EINTR. 0, or -1 with errno. */
static int
pwrite_all(int fd, const unsigned char *from, size_t size, off_t at)
{
    while (size > 0) {
        ssize_t done = pwrite(fd, from, size, at);
        if (done < 0 && errno == EINTR)
            continue;
        if (done < 0)
            return -1;
        if (done == 0) {
            errno = EIO; /* a regular file that takes nothing: treated as an error, never spun on */
            return -1;
        }
        from += done;
        size -= (size_t)done;
        at += done;
    }
    return 0;
}

/* One flag per descriptor slot (fd % WRITE_SLOTS), set while a thread writes that file with pwrite. Each
 * pwrite holds the file's inode lock, and a second channel's would wait for it (on tmpfs spinning: 9-15 %
 * of a 2-channel receiver's samples). That channel stores through the file's mapping instead: its page
 * faults take no such lock. Two files that share a slot only make one of them use its mapping. */
#define WRITE_SLOTS 64
static atomic_int file_writing[WRITE_SLOTS];

/* A run into the file's shared mapping at `to`: its pages made first with MADV_POPULATE_WRITE, which says
 * ENOSPC and the like as an error where a store into a page the file cannot get would be a SIGBUS. 0, or -1
 * when the mapping can't take it (the caller then pwrites the run and gets the error from that). */
static int
store_mapped(unsigned char *to, const unsigned char *from, size_t size)
{
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t start = (uintptr_t)to & ~(uintptr_t)(page - 1);
    if (madvise((void *)start, (size_t)((uintptr_t)to + size - start), MADV_POPULATE_WRITE) < 0)
        return -1;
    memcpy(to, from, size);
    return 0;
}

/* Write staged page k to offsets[k] of the target: runs of adjacent pages as one pwrite to fd (the file
 * the block maps, at the same offsets; through the mapping while another thread pwrites that file, see
 * file_writing), or one memcpy into block when fd < 0. 0, or -1 with errno. */
int
mfdcomp_write_runs(int fd, unsigned char *block, const unsigned char *staged, const Py_ssize_t *offsets, Py_ssize_t count,
           Py_ssize_t page_size)
{
    atomic_int *slot = fd >= 0 ? &file_writing[fd % WRITE_SLOTS] : NULL;
    int mine = slot != NULL && atomic_exchange(slot, 1) == 0;
    int rc = 0;
    Py_ssize_t k = 0;
    while (k < count) {
        Py_ssize_t run = 1;
        while (k + run < count && offsets[k + run] == offsets[k] + run * page_size)
            run++;
        const unsigned char *from = staged + k * page_size;
        size_t size = (size_t)(run * page_size);
        if (fd < 0)
            memcpy(block + offsets[k], from, size);
        else if ((mine || store_mapped(block + offsets[k], from, size) < 0) &&
                 pwrite_all(fd, from, size, (off_t)offsets[k]) < 0) {
            rc = -1;
            break;
        }
        k += run;
    }
    if (mine)
        atomic_store(slot, 0);
    return rc;
}

/* set_write_slot(fd, taken) -> bool: mark fd's writer slot taken (or free) as a pwriting thread does; the
 * previous state. For tests: with the slot taken, writes to that file go through its mapping. */
static PyObject *
set_write_slot(PyObject *self, PyObject *args)
{
    int fd, taken;
    (void)self;
    if (!PyArg_ParseTuple(args, "ip:set_write_slot", &fd, &taken))
        return NULL;
    if (fd < 0) {
        PyErr_Format(PyExc_ValueError, "fd must be a file descriptor, got %d", fd);
        return NULL;
    }
    return PyBool_FromLong(atomic_exchange(&file_writing[fd % WRITE_SLOTS], taken));
}

/* store_pages(fd, block, staged, offsets, page_size, table) -> None
 *     Page k of staged (packed, page_size bytes each) becomes the page at offsets[k] of block: written
 *     with pwrite to fd (the file block maps; no page of the mapping is faulted in; through the mapping
 *     while another thread pwrites that file, see mfdcomp_write_runs) or copied into block when fd is -1. With a table (not None), each page's XXH3-128 goes into its slot first, hashed from
 *     staged while it is cache-hot. Offsets are checked as page_digests checks them, staged must hold
 *     the pages; the hashing and writing run without the GIL. OSError (errno set) if a write fails. */
static PyObject *
store_pages(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *block_obj, *staged_obj, *offsets_obj, *table_obj;
    Py_ssize_t page_size;
    (void)self;
    if (!PyArg_ParseTuple(args, "iOOOnO:store_pages", &fd, &block_obj, &staged_obj, &offsets_obj, &page_size,
                          &table_obj))
        return NULL;
    if (page_size <= 0) {
        PyErr_Format(PyExc_ValueError, "page_size must be positive, got %zd", page_size);
        return NULL;
    }
    if (fd < -1) {
        PyErr_Format(PyExc_ValueError, "fd must be a file descriptor or -1, got %d", fd);
        return NULL;
    }
    Py_buffer block, staged, table = {0};
    if (PyObject_GetBuffer(block_obj, &block, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(staged_obj, &staged, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&block);
        return NULL;
    }
    int hashing = table_obj != Py_None;
    if (hashing && PyObject_GetBuffer(table_obj, &table, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&staged);
        PyBuffer_Release(&block);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t count = 0;
    Py_ssize_t *offsets = mfdcomp_page_offsets(offsets_obj, block.len, page_size, 1, &count);
    if (offsets == NULL)
        goto done;
    if (hashing && mfdcomp_check_slots(offsets, count, page_size, table.len) < 0)
        goto done;
    if ((double)count * (double)page_size > (double)staged.len) {
        PyErr_Format(PyExc_ValueError, "%zd pages of %zd bytes are not staged in a %zd-byte buffer", count,
                     page_size, staged.len);
        goto done;
    }
    xxh3_pages_fn hash = xxh3_build->fn;
    int rc, saved_errno = 0;
    Py_BEGIN_ALLOW_THREADS
    if (hashing)
        hash(staged.buf, offsets, count, page_size, 1, table.buf);
    rc = mfdcomp_write_runs(fd, block.buf, staged.buf, offsets, count, page_size);
    saved_errno = errno;
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        errno = saved_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(offsets);
    if (hashing)
        PyBuffer_Release(&table);
    PyBuffer_Release(&staged);
    PyBuffer_Release(&block);
    return result;
}

/* xxh3_builds() -> list[str]: the builds of the page hashing this CPU runs, best first. */
static PyObject *
xxh3_builds(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyObject *names = PyList_New(0);
    for (size_t k = 0; names != NULL && k < XXH3_BUILDS; k++) {
        if (!xxh3_builds_known[k].supported())
            continue;
        PyObject *name = PyUnicode_FromString(xxh3_builds_known[k].name);
        if (name == NULL || PyList_Append(names, name) < 0) {
            Py_XDECREF(name);
            Py_CLEAR(names);
            break;
        }
        Py_DECREF(name);
    }
    return names;
}

/* set_xxh3_build(name) -> str: use that build (one of xxh3_builds()); returns the one it replaces. */
static PyObject *
set_xxh3_build(PyObject *self, PyObject *arg)
{
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL)
        return NULL;
    for (size_t k = 0; k < XXH3_BUILDS; k++) {
        if (strcmp(xxh3_builds_known[k].name, name) == 0 && xxh3_builds_known[k].supported()) {
            const char *previous = xxh3_build->name;
            xxh3_build = &xxh3_builds_known[k];
            return PyUnicode_FromString(previous);
        }
    }
    PyErr_Format(PyExc_ValueError, "no xxh3 build %R runs on this CPU", arg);
    return NULL;
}

/* xxh3_build_name() -> str: the build in use. */
static PyObject *
xxh3_build_name(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyUnicode_FromString(xxh3_build->name);
}

static PyMethodDef methods[] = {
    {"page_digests", page_digests, METH_VARARGS,
     "page_digests(block, offsets, page_size, table): XXH3-128 of each page into its 16-byte slot of table."},
    {"set_write_slot", set_write_slot, METH_VARARGS,
     "set_write_slot(fd, taken) -> bool: mark fd's writer slot (for tests: writes then go through the mapping)."},
    {"store_pages", store_pages, METH_VARARGS,
     "store_pages(fd, block, staged, offsets, page_size, table): staged pages into the target (and their digests)."},
    {"send_packet", mfdcomp_send_packet, METH_VARARGS,
     "send_packet(fd, block, offsets, page_size, capacity, detect_zero, packet_num, name_field, table, zero_digest"
     "[, flags, compressor, out]) -> tuple: one RAM packet, scanned, compressed, written (or packed) and hashed "
     "(mfdcomp/_sendloop.c)."},
    {"send_packets", mfdcomp_send_packets, METH_VARARGS,
     "send_packets(fd, block, batches, page_size, capacity, detect_zero, first_packet_num, name_field, table, "
     "zero_digest[, flags, compressor, out]) -> tuple: send_packet for each batch, the GIL released once "
     "(mfdcomp/_sendloop.c)."},
    {"tls_bind", mfdcomp_tls_bind, METH_O,
     "tls_bind(path) -> str | None: bind to the OpenSSL of the _ssl module at path; why not, or None."},
    {"recv_packets", mfdcomp_recv_packets, METH_VARARGS,
     "recv_packets(fd, header, staging, blocks, page_size, capacity, max_packets, zero_digest[, codec_flag, "
     "payload_buffer, decompressor, reader]) -> tuple: RAM packets from a socket or a reader into the targets "
     "(mfdcomp/_recvloop.c)."},
    {"xxh3_builds", xxh3_builds, METH_NOARGS, "xxh3_builds() -> list[str]: page-hashing builds this CPU runs."},
    {"xxh3_build", xxh3_build_name, METH_NOARGS, "xxh3_build() -> str: the page-hashing build in use."},
    {"set_xxh3_build", set_xxh3_build, METH_O, "set_xxh3_build(name) -> str: use that build; returns the last."},
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
    for (size_t k = 0; k < XXH3_BUILDS; k++) {
        if (xxh3_builds_known[k].supported()) {
            xxh3_build = &xxh3_builds_known[k];
            break;
        }
    }
    return PyModule_Create(&module);
}

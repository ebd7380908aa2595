/* mfdcomp._speedups.recv_packets: a destination channel's packets, read, decoded and stored without the GIL.
 *
 * The pure-Python channel loop (mfdcomp/engine/destination.py) costs a few GIL hand-offs per packet (a read
 * of the header, of its rest, of the payload, the store), and with two channels and the main thread taking
 * turns those hand-offs, not the Python itself, were most of the interpreter's share of a transfer. Here one
 * call reads packet after packet from a plain socket, checks each as mfdcomp.wire does, and stores its pages
 * (hashed into the digest table, zero pages by QEMU's received-bitmap rule) until a SYNC packet, max_packets
 * packets, or anything it does not take.
 *
 * It takes only what the Python loop accepts and would treat the same way; everything else (a device-state
 * packet, any check that fails, the end of the stream) is left to the Python loop, which raises the typed
 * error with its message: the bytes of that packet read so far are handed back (header first, then the
 * payload in staging) for the caller to put in front of the stream. A failing read gives its errno, for the
 * caller to translate as the stream would; one failing inside the payload leaves the packet counted and its
 * zero pages applied, as the Python loop leaves it (it counts a packet, then applies them, then reads).
 *
 * A compressing codec's packets (codec_flag and a decompressor capsule given) are read the same way, their
 * payload of next_packet_size bytes into payload_buffer, then decoded by the codec's compiled decompressor
 * into staging. Once decoding began, the packet can't be handed back (the codec's stream moved on): a payload
 * the codec refuses ends the call with the codec's message, the packet counted as the Python loop counts it
 * before its codec fails (the packet and its wire bytes, its zero pages applied).
 *
 * A TLS stream's session is read by the loop itself through OpenSSL (mfdcomp/_tlsdirect.c), without the GIL,
 * while the caller holds the session. Any other stream without a descriptor, and a TLS one where that can't
 * be done, is read through its read_some method: the loop takes the GIL for each read only (three a packet:
 * the header's first 12 bytes, its rest, the payload), and does the checks, the decoding and the stores
 * without it, as for a socket.
 *
 * recv_packets(fd, header, staging, blocks, page_size, capacity, max_packets, zero_digest[, codec_flag,
 *              payload_buffer, decompressor, reader, tls])
 *     fd: the channel's socket (blocking; SO_RCVTIMEO makes a stall EAGAIN), or -1 with a reader or tls, a
 *     session spec (mfdcomp/_tlsdirect.c): it ends the call as a socket's read would, a wait longer than its
 *     timeout with errno ETIMEDOUT (status 3), OpenSSL's failure with status 7 (problem: its reason). A reader:
 *     a callable
 *     taking a writable memoryview and returning how many bytes it put there, fewer than asked only at the
 *     end of the stream; whatever it raises ends the call (status 6, problem: the exception, the packet's
 *     bytes read so far dropped, as the Python loop's read would leave them). header: a writable buffer of at
 *     least one RAM packet header (320 + 8 * capacity bytes); staging: of capacity pages. blocks: a sequence
 *     of (name: bytes, size: int, fd: int, memory, received, table or None): memory the block's writable
 *     mapping, received its byte per page, table its 16-byte digest slots (mfdcomp.pagedigest); fd the file
 *     memory maps, or -1. zero_digest: the 16-byte digest of a zero page. codec_flag: the session's codec
 *     bits (0: nocomp, and no more arguments); payload_buffer: writable, as large as the largest payload the
 *     session allows; decompressor: a MFDCOMP_DECOMPRESSOR_CAPSULE.
 *     Returns (status, given_back, errno, packets, sync_packets, pages_packets, normal_pages, zero_pages,
 *     payload_bytes, wire_bytes, failed_pages, problem), the counts of the packets taken whole: status 0
 *     after max_packets, 1 after a SYNC packet, 2 when the next packet is the Python loop's (given_back of
 *     its bytes were read: the header's, then the payload's, in staging for nocomp, else in payload_buffer),
 *     3 when a read failed with errno (given_back as for 2), 4 when writing failed_pages pages into block
 *     number given_back failed with errno (its zero pages applied, its pages hashed and maybe written in
 *     part, as TargetMemory leaves them; the packet is not counted), 5 when the codec refused a payload
 *     (problem: its message; counted as said above), 6 when the reader raised (problem: the exception), 7
 *     when OpenSSL failed a read (problem: its reason; given_back as for 2). problem is None otherwise.
 */
#include "_speedups.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BLOCKS 256

enum { MORE = 0, SYNC = 1, SLOW = 2, FAILED = 3, STORE_FAILED = 4, CODEC_FAILED = 5, RAISED = 6, TLS_FAILED = 7 };

struct block {
    const char *name;
    Py_ssize_t name_len;
    Py_ssize_t size;
    int fd;
    Py_buffer memory, received, table;
    int hashing;
};

struct totals {
    long long packets, sync_packets, pages_packets, normal, zero, payload, wire;
};

static uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t
be64(const unsigned char *p)
{
    return ((uint64_t)be32(p) << 32) | be32(p + 4);
}

/* Up to size bytes into buf; the count read (size unless the stream ended), or -1 with *err set. */
static Py_ssize_t
recv_full(int fd, unsigned char *buf, Py_ssize_t size, int *err)
{
    Py_ssize_t got = 0;
    while (got < size) {
        ssize_t n = recv(fd, buf + got, (size_t)(size - got), MSG_WAITALL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *err = errno;
            return -got - 1;
        }
        if (n == 0)
            break;
        got += n;
    }
    return got;
}

/* The block a RAM packet's NUL-terminated name field names, or NULL (unknown, or not terminated). */
static struct block *
find_block(struct block *blocks, Py_ssize_t count, const unsigned char *field)
{
    if (field[NAME_LEN - 1] != 0)
        return NULL;
    Py_ssize_t len = (Py_ssize_t)strnlen((const char *)field, NAME_LEN);
    for (Py_ssize_t k = 0; k < count; k++) {
        if (blocks[k].name_len == len && memcmp(blocks[k].name, field, (size_t)len) == 0)
            return &blocks[k];
    }
    return NULL;
}

/* Whether slots [0, used) of the offset array are pages of block: page-aligned and inside it. */
static int
offsets_fit(const unsigned char *array, uint32_t used, const struct block *block, Py_ssize_t page_size,
            Py_ssize_t *offsets)
{
    if (block->size < page_size)
        return 0;
    uint64_t last = (uint64_t)(block->size - page_size);
    for (uint32_t k = 0; k < used; k++) {
        uint64_t offset = be64(array + 8 * (size_t)k);
        if (offset > last || offset % (uint64_t)page_size)
            return 0;
        offsets[k] = (Py_ssize_t)offset;
    }
    return 1;
}

/* Zero pages by QEMU's rule (only a page received before is cleared; a fresh target is zero), as
 * TargetMemory.apply_zero: every page is tested before any is marked, then all are marked. */
static void
apply_zero(struct block *block, const Py_ssize_t *offsets, uint32_t count, Py_ssize_t page_size,
           const unsigned char *zero_digest)
{
    unsigned char *received = block->received.buf;
    unsigned char *memory = block->memory.buf;
    for (uint32_t k = 0; k < count; k++) {
        if (received[offsets[k] / page_size])
            memset(memory + offsets[k], 0, (size_t)page_size);
    }
    for (uint32_t k = 0; k < count; k++) {
        Py_ssize_t index = offsets[k] / page_size;
        received[index] = 1;
        if (block->hashing)
            memcpy((unsigned char *)block->table.buf + 16 * index, zero_digest, 16);
    }
}

struct loop {
    int fd;
    unsigned char *header;
    unsigned char *staging;
    struct block *blocks;
    Py_ssize_t nblocks, page_size, capacity, max_packets;
    const unsigned char *zero_digest;
    Py_ssize_t *offsets;
    /* a compressing codec's: its bits, where its payloads go, its decoder (NULL for nocomp) */
    uint32_t codec_flag;
    unsigned char *payload_buffer;
    Py_ssize_t max_payload;
    const mfdcomp_decompressor *decompressor;
    /* a stream without a descriptor: its read_some (NULL: read fd), and what it raised (taken with the GIL) */
    PyObject *reader;
    PyObject *raised;
    /* or its TLS session, read here without the GIL (tls.ssl NULL: none) */
    struct mfdcomp_tls tls;
    /* out */
    int status, err;
    Py_ssize_t given_back, failed_pages;
    struct totals totals;
    char problem[512];
};

/* The exception being raised, taken (the caller owns it). */
static PyObject *
take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && traceback != NULL)
        PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
#endif
}

/* As recv_full, from the loop's socket or, with the GIL taken for the call, from its reader; a reader's
 * exception is kept in loop->raised (-1 returned, nothing read). */
static Py_ssize_t
read_full(struct loop *loop, unsigned char *buf, Py_ssize_t size)
{
    if (loop->tls.ssl != NULL)
        return mfdcomp_tls_read(&loop->tls, buf, size, &loop->err, loop->problem, sizeof loop->problem);
    if (loop->reader == NULL)
        return recv_full(loop->fd, buf, size, &loop->err);
    Py_ssize_t got = -1;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *view = PyMemoryView_FromMemory((char *)buf, size, PyBUF_WRITE);
    PyObject *count = view == NULL ? NULL : PyObject_CallOneArg(loop->reader, view);
    if (count != NULL) {
        got = PyLong_AsSsize_t(count);
        if (got == -1 && PyErr_Occurred())
            got = -1;
        else if (got < 0 || got > size) {
            PyErr_Format(PyExc_ValueError, "the reader gave %zd bytes for %zd", got, size);
            got = -1;
        }
    }
    Py_XDECREF(count);
    Py_XDECREF(view);
    if (got < 0)
        loop->raised = take_exception();
    PyGILState_Release(gil);
    return got;
}

/* The status of a read that failed: the reader raised, OpenSSL failed (problem set), or errno. */
static int
read_failure(const struct loop *loop)
{
    return loop->raised != NULL ? RAISED : loop->problem[0] ? TLS_FAILED : FAILED;
}

/* Runs without the GIL: touches only the buffers acquired for it (and takes it for a reader's reads). */
static void
run_loop(struct loop *loop)
{
    const Py_ssize_t ps = loop->page_size;
    const Py_ssize_t header_size = FIXED_SIZE + 8 * loop->capacity;
    struct totals *t = &loop->totals;
    for (Py_ssize_t done = 0; done < loop->max_packets; done++) {
        unsigned char *h = loop->header;
        /* The 12-byte header first, as the Python loop reads it: a device-state packet is shorter. */
        Py_ssize_t got = read_full(loop, h, HEADER_SIZE);
        if (got < 0) {
            loop->status = read_failure(loop);
            loop->given_back = -got - 1;
            return;
        }
        uint32_t flags = be32(h + 8);
        uint32_t codec = flags & ~FLAG_SYNC;
        if (got < HEADER_SIZE || be32(h) != MULTIFD_MAGIC || be32(h + 4) != MULTIFD_VERSION ||
            (codec != 0 && codec != loop->codec_flag)) {
            loop->status = SLOW; /* the end, a device-state packet, another codec, a bad header */
            loop->given_back = got;
            return;
        }
        got = read_full(loop, h + HEADER_SIZE, header_size - HEADER_SIZE);
        if (got < 0) {
            loop->status = read_failure(loop);
            loop->given_back = HEADER_SIZE - got - 1;
            return;
        }
        loop->given_back = HEADER_SIZE + got;
        if (got < header_size - HEADER_SIZE) {
            loop->status = SLOW;
            return;
        }
        uint32_t pages_alloc = be32(h + 12), normal = be32(h + 16), zero = be32(h + 32);
        if (pages_alloc > (uint64_t)loop->capacity || normal > pages_alloc || zero > pages_alloc - normal) {
            loop->status = SLOW;
            return;
        }
        /* The session's codec bits on a packet with pages, none on one without (a SYNC): anything else,
         * and a compressed packet's payload beyond the bound or on one without normal pages, is the
         * Python loop's to refuse or take. */
        if (normal + zero > 0 ? codec != loop->codec_flag : codec != 0) {
            loop->status = SLOW;
            return;
        }
        Py_ssize_t payload = (Py_ssize_t)normal * ps;
        unsigned char *payload_at = loop->staging;
        if (loop->decompressor != NULL && normal + zero > 0) {
            payload = (Py_ssize_t)be32(h + 20);
            payload_at = loop->payload_buffer;
            if (payload > loop->max_payload || (normal == 0 && payload != 0)) {
                loop->status = SLOW;
                return;
            }
        }
        struct block *block = NULL;
        if (normal + zero > 0) {
            block = find_block(loop->blocks, loop->nblocks, h + NAME_AT);
            if (block == NULL || !offsets_fit(h + FIXED_SIZE, normal + zero, block, ps, loop->offsets)) {
                loop->status = SLOW;
                return;
            }
        } else if (h[NAME_AT] != 0 && find_block(loop->blocks, loop->nblocks, h + NAME_AT) == NULL) {
            loop->status = SLOW; /* a name the Python loop would decode (or refuse) itself */
            return;
        } else if (h[NAME_AT + NAME_LEN - 1] != 0) {
            loop->status = SLOW;
            return;
        }
        if (normal + zero == 0)
            payload = 0;
        if (payload > 0) {
            got = read_full(loop, payload_at, payload);
            if (got < 0) {
                if (block != NULL) {
                    /* As the Python loop stands when its read of the payload fails: the packet counted, its
                     * zero pages in (it applies them before it reads). */
                    apply_zero(block, loop->offsets + normal, zero, ps, loop->zero_digest);
                    t->packets++;
                    t->wire += header_size + payload;
                }
                loop->status = read_failure(loop);
                loop->given_back = header_size - got - 1;
                return;
            }
            if (got < payload) {
                loop->status = SLOW;
                loop->given_back = header_size + got;
                return;
            }
        }
        /* The whole packet is in: it is this loop's now, nothing is handed back. */
        loop->given_back = 0;
        if (block != NULL) {
            apply_zero(block, loop->offsets + normal, zero, ps, loop->zero_digest);
            if (normal > 0 && loop->decompressor != NULL &&
                loop->decompressor->decompress(loop->decompressor->ctx, payload_at, (size_t)payload, loop->staging,
                                               (size_t)normal * (size_t)ps, be64(h + 24), normal, ps,
                                               loop->problem, sizeof loop->problem) < 0) {
                /* As the Python loop stands when its codec raises: the packet counted, its zero pages in. */
                t->packets++;
                t->wire += header_size + payload;
                loop->status = CODEC_FAILED;
                return;
            }
            if (normal > 0) {
                if (block->hashing)
                    mfdcomp_xxh3_pages()(loop->staging, loop->offsets, normal, ps, 1, block->table.buf);
                if (mfdcomp_write_runs(block->fd, block->memory.buf, loop->staging, loop->offsets, normal, ps) < 0) {
                    /* Stored in part: the Python loop can't redo it. The caller raises the store's error. */
                    loop->err = errno;
                    loop->status = STORE_FAILED;
                    loop->given_back = block - loop->blocks;
                    loop->failed_pages = normal;
                    return;
                }
                unsigned char *received = block->received.buf;
                for (uint32_t k = 0; k < normal; k++)
                    received[loop->offsets[k] / ps] = 1;
                t->pages_packets++;
            }
            t->normal += normal;
            t->zero += zero;
            t->payload += payload;
        }
        t->packets++;
        t->wire += header_size + payload;
        if (flags & FLAG_SYNC) {
            t->sync_packets++;
            loop->status = SYNC;
            return;
        }
    }
    loop->status = MORE;
}

static void
release_blocks(struct block *blocks, Py_ssize_t count)
{
    for (Py_ssize_t k = 0; k < count; k++) {
        PyBuffer_Release(&blocks[k].memory);
        PyBuffer_Release(&blocks[k].received);
        if (blocks[k].hashing)
            PyBuffer_Release(&blocks[k].table);
    }
}

/* The blocks argument into blocks[]; the count filled (all, or those to release after an error). */
static Py_ssize_t
take_blocks(PyObject *seq, struct block *blocks, Py_ssize_t count, Py_ssize_t page_size)
{
    for (Py_ssize_t k = 0; k < count; k++) {
        struct block *b = &blocks[k];
        PyObject *table_obj;
        PyObject *item = PySequence_Fast_GET_ITEM(seq, k);
        memset(b, 0, sizeof *b);
        if (!PyArg_ParseTuple(item, "y#niw*w*O:recv_packets block", &b->name, &b->name_len, &b->size, &b->fd,
                              &b->memory, &b->received, &table_obj))
            return k;
        b->hashing = table_obj != Py_None;
        if (b->hashing && PyObject_GetBuffer(table_obj, &b->table, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            PyBuffer_Release(&b->memory);
            PyBuffer_Release(&b->received);
            return k;
        }
        Py_ssize_t pages = b->size / page_size;
        if (b->size < 0 || b->memory.len < b->size || b->received.len < pages ||
            (b->hashing && b->table.len / 16 < pages) || b->fd < -1) {
            PyErr_Format(PyExc_ValueError, "block %zd: memory, received or table too short for %zd bytes", k,
                         b->size);
            return k + 1;
        }
    }
    return count;
}

PyObject *
mfdcomp_recv_packets(PyObject *self, PyObject *args)
{
    struct loop loop;
    Py_buffer header, staging, zero_digest;
    Py_buffer payload_buffer = {0};
    PyObject *blocks_obj, *payload_obj = Py_None, *decompressor_obj = Py_None, *reader_obj = Py_None;
    PyObject *tls_obj = Py_None;
    unsigned int codec_flag = 0;
    (void)self;
    memset(&loop, 0, sizeof loop);
    if (!PyArg_ParseTuple(args, "iw*w*Onnny*|IOOOO:recv_packets", &loop.fd, &header, &staging, &blocks_obj,
                          &loop.page_size, &loop.capacity, &loop.max_packets, &zero_digest, &codec_flag,
                          &payload_obj, &decompressor_obj, &reader_obj, &tls_obj))
        return NULL;
    PyObject *result = NULL, *seq = NULL;
    struct block *blocks = NULL;
    Py_ssize_t nblocks = 0, taken = 0;
    int has_payload_buffer = 0;
    if (codec_flag != 0) {
        /* A compressing codec: its decoder and a payload buffer, or nothing is taken. */
        if (codec_flag & FLAG_SYNC) {
            PyErr_SetString(PyExc_ValueError, "codec_flag holds the SYNC bit");
            goto done;
        }
        loop.decompressor = PyCapsule_GetPointer(decompressor_obj, MFDCOMP_DECOMPRESSOR_CAPSULE);
        if (loop.decompressor == NULL ||
            PyObject_GetBuffer(payload_obj, &payload_buffer, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        has_payload_buffer = 1;
        loop.codec_flag = codec_flag;
        loop.payload_buffer = payload_buffer.buf;
        loop.max_payload = payload_buffer.len;
    }
    int sources = (reader_obj != Py_None) + (tls_obj != Py_None);
    if (loop.fd < 0 ? sources != 1 || (reader_obj != Py_None && !PyCallable_Check(reader_obj)) : sources != 0) {
        PyErr_SetString(PyExc_ValueError, "a socket (fd >= 0), or a reader or a TLS session (fd -1)");
        goto done;
    }
    if (tls_obj != Py_None && mfdcomp_tls_take(tls_obj, &loop.tls) < 0)
        goto done;
    if (reader_obj != Py_None)
        loop.reader = reader_obj;
    if (loop.page_size <= 0 || loop.capacity <= 0 || loop.capacity > (1 << 20) || loop.max_packets <= 0) {
        PyErr_SetString(PyExc_ValueError, "page_size, capacity and max_packets must be positive");
        goto done;
    }
    if (header.len < FIXED_SIZE + 8 * loop.capacity || staging.len / loop.page_size < loop.capacity ||
        zero_digest.len != 16) {
        PyErr_SetString(PyExc_ValueError, "header, staging or zero_digest too short");
        goto done;
    }
    seq = PySequence_Fast(blocks_obj, "blocks must be a sequence");
    if (seq == NULL)
        goto done;
    nblocks = PySequence_Fast_GET_SIZE(seq);
    if (nblocks > MAX_BLOCKS) {
        PyErr_Format(PyExc_ValueError, "at most %d blocks", MAX_BLOCKS);
        goto done;
    }
    blocks = PyMem_Calloc((size_t)(nblocks ? nblocks : 1), sizeof *blocks);
    loop.offsets = PyMem_Calloc((size_t)loop.capacity, sizeof *loop.offsets);
    if (blocks == NULL || loop.offsets == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    taken = take_blocks(seq, blocks, nblocks, loop.page_size);
    if (PyErr_Occurred())
        goto done;
    loop.header = header.buf;
    loop.staging = staging.buf;
    loop.blocks = blocks;
    loop.nblocks = nblocks;
    loop.zero_digest = zero_digest.buf;
    Py_BEGIN_ALLOW_THREADS
    run_loop(&loop);
    Py_END_ALLOW_THREADS
    struct totals *t = &loop.totals;
    if (loop.status == RAISED)
        result = Py_BuildValue("(inLLLLLLLLnN)", loop.status, loop.given_back, (long long)loop.err, t->packets,
                               t->sync_packets, t->pages_packets, t->normal, t->zero, t->payload, t->wire,
                               loop.failed_pages, loop.raised);
    else if (loop.status == CODEC_FAILED || loop.status == TLS_FAILED)
        result = Py_BuildValue("(inLLLLLLLLns)", loop.status, loop.given_back, (long long)loop.err, t->packets,
                               t->sync_packets, t->pages_packets, t->normal, t->zero, t->payload, t->wire,
                               loop.failed_pages, loop.problem[0] ? loop.problem : "the codec failed without a message");
    else
        result = Py_BuildValue("(inLLLLLLLLnO)", loop.status, loop.given_back, (long long)loop.err, t->packets,
                               t->sync_packets, t->pages_packets, t->normal, t->zero, t->payload, t->wire,
                               loop.failed_pages, Py_None);
done:
    if (blocks != NULL)
        release_blocks(blocks, taken);
    PyMem_Free(blocks);
    PyMem_Free(loop.offsets);
    Py_XDECREF(seq);
    if (has_payload_buffer)
        PyBuffer_Release(&payload_buffer);
    PyBuffer_Release(&zero_digest);
    PyBuffer_Release(&staging);
    PyBuffer_Release(&header);
    return result;
}

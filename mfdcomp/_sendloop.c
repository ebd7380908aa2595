/* mfdcomp._speedups.send_packet: one RAM packet of a source channel, prepared and written without the GIL.
 *
 * The Python path (mfdcomp.engine.source) takes a few GIL hand-offs per packet: the zero-page scan, the
 * codec, the sendmsg, the page hashing, each released and taken again, with the other channel threads
 * waiting in between. Here one call scans the batch for zero pages, orders it as QEMU's sender does (normal
 * pages first, mfdcomp.zeropage.partition), has the codec's compiled compressor turn the normal pages into
 * the payload (nocomp: the pages themselves), builds the header (mfdcomp.wire.RamPacket.data().encode()),
 * writes it and the payload with sendmsg (MSG_NOSIGNAL, short writes resumed) and hashes the pages into the
 * digest table, with the GIL released once. The Python path stays the reference; tests demand the same
 * bytes on the wire, the same order of offsets and the same digests of both.
 *
 * A stream without a descriptor (TLS: OpenSSL must write it, with the GIL) gets the packet packed instead:
 * with fd -1, header and payload are copied one after the other into out, for the caller to send whole.
 *
 * send_packet(fd, block, offsets, page_size, capacity, detect_zero, packet_num, name_field, table,
 *             zero_digest, flags=0, compressor=None, out=None)
 *             -> (normal, zero, written, errno, ordered, payload, problem)
 *     block: the source RAM block (readable buffer); offsets: a list of byte offsets of its pages (at most
 *     capacity; checked: ValueError otherwise, with zero_flags' message); name_field: the 256-byte NUL
 *     padded block name; table: its 16-byte digest slots or None; zero_digest: a zero page's digest;
 *     flags: the codec's bits of hdr.flags; compressor: a MFDCOMP_COMPRESSOR_CAPSULE or None (nocomp).
 *     written: bytes sent; errno: 0, or why the sendmsg failed (the packet may be cut: the channel is
 *     then unusable, as after the Python path's failed send_all). ordered: the offsets as sent. payload:
 *     the payload's size. problem: None, or the compressor's message (nothing was sent). With fd -1 and out
 *     (a writable buffer): written is the packet's size in out, errno EMSGSIZE (nothing packed) if it does
 *     not fit, and the pages are hashed as packed (pass table None to hash them after the send instead).
 *
 * send_packets(fd, block, batches, page_size, capacity, detect_zero, first_packet_num, name_field, table,
 *              zero_digest, flags=0, compressor=None, out=None)
 *             -> (packets, pages_packets, normal, zero, written, payload, errno, problem)
 *     send_packet for each offset list of batches (all pages of block), packet k numbered first_packet_num
 *     + k, with the GIL released once for them all: the Python around each packet (taking the batch, the
 *     call, counting it) was a tenth of a nocomp source channel's CPU. packets: how many went out whole
 *     (pages_packets of them with normal pages), and their sums; it stops at the first that fails (errno, or
 *     problem: the compressor's message) and, packing, before one that might not fit behind the others
 *     (errno 0: the rest are the next call's). Every list is checked before anything is sent.
 */
#include "_speedups.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define MAX_IOV 1024

static void
put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void
put64(unsigned char *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

/* QEMU's partition of a batch: normal pages first (mfdcomp.zeropage.partition, swap for swap). */
static Py_ssize_t
partition(Py_ssize_t *offsets, unsigned char *zero, Py_ssize_t count)
{
    Py_ssize_t i = 0, j = count - 1;
    while (i <= j) {
        if (!zero[i]) {
            i++;
        } else {
            Py_ssize_t o = offsets[i];
            offsets[i] = offsets[j];
            offsets[j] = o;
            unsigned char z = zero[i];
            zero[i] = zero[j];
            zero[j] = z;
            j--;
        }
    }
    return i;
}

/* All iov bytes with sendmsg, resuming after short writes and EINTR; the bytes sent, *err set on failure. */
static Py_ssize_t
sendmsg_all(int fd, struct iovec *iov, int iovcnt, int *err)
{
    Py_ssize_t sent = 0;
    int first = 0;
    while (first < iovcnt) {
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov + first;
        msg.msg_iovlen = (size_t)(iovcnt - first > MAX_IOV ? MAX_IOV : iovcnt - first);
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *err = errno;
            return sent;
        }
        sent += n;
        while (first < iovcnt && (size_t)n >= iov[first].iov_len) {
            n -= (ssize_t)iov[first].iov_len;
            first++;
        }
        if (first < iovcnt) {
            iov[first].iov_base = (char *)iov[first].iov_base + n;
            iov[first].iov_len -= (size_t)n;
        }
    }
    return sent;
}

/* The iov bytes one after the other into out: their count, or 0 with *err EMSGSIZE if they do not fit. */
static Py_ssize_t
pack(const struct iovec *iov, int iovcnt, unsigned char *out, Py_ssize_t room, int *err)
{
    Py_ssize_t size = 0;
    for (int k = 0; k < iovcnt; k++)
        size += (Py_ssize_t)iov[k].iov_len;
    if (size > room) {
        *err = EMSGSIZE;
        return 0;
    }
    unsigned char *at = out;
    for (int k = 0; k < iovcnt; k++) {
        memcpy(at, iov[k].iov_base, iov[k].iov_len);
        at += iov[k].iov_len;
    }
    return size;
}

/* What every packet of a call shares: the block, its name field, the digest table, the codec and the
 * scratch buffers (header, zero flags, iovecs), acquired with the GIL and used without it. */
struct sender {
    int fd, detect_zero, hashing, packing;
    Py_buffer block, name, zero_digest, table, out;
    struct mfdcomp_tls tls; /* a TLS session written here (ssl NULL: none) */
    unsigned char *gather;  /* its small pieces, gathered (GATHER bytes) */
    const mfdcomp_compressor *compressor;
    Py_ssize_t page_size, capacity, header_size;
    uint32_t flags;
    unsigned char *packet, *zero;
    struct iovec *iov;
};

/* What one packet came to: its pages, the bytes written (or packed), why it stopped (errno, or the
 * compressor's message in problem with payload -1, or OpenSSL's reason in problem with err TLS_REASON). */
struct sent {
    Py_ssize_t normal, zero, written, payload;
    int err;
};

#define TLS_REASON (-1) /* sent.err: OpenSSL failed, its reason in problem */
#define RECORD (16 << 10) /* TLS's largest record of plaintext */
#define GATHER (64 << 10)

/* The packet's pieces through the TLS session: a piece of a record or more as it is (OpenSSL cuts it into
 * records, encrypting straight from the pages or the codec's output), smaller ones (the header, lone pages)
 * gathered first, so that each does not cost a record of its own. The bytes written, all of them unless it
 * failed (*err). */
static Py_ssize_t
tls_writev(struct sender *s, const struct iovec *iov, int iovcnt, int *err, char *problem, size_t problem_size)
{
    Py_ssize_t sent = 0;
    size_t used = 0; /* gathered, not yet written */
    for (int k = 0; k < iovcnt; k++) {
        size_t n = iov[k].iov_len;
        if (used > 0 && (n >= RECORD || used + n > GATHER)) {
            if (mfdcomp_tls_write(&s->tls, s->gather, used, err, problem, problem_size) < 0)
                goto failed;
            sent += (Py_ssize_t)used;
            used = 0;
        }
        if (n < RECORD) {
            memcpy(s->gather + used, iov[k].iov_base, n);
            used += n;
        } else {
            if (mfdcomp_tls_write(&s->tls, iov[k].iov_base, n, err, problem, problem_size) < 0)
                goto failed;
            sent += (Py_ssize_t)n;
        }
    }
    if (used > 0 && mfdcomp_tls_write(&s->tls, s->gather, used, err, problem, problem_size) < 0)
        goto failed;
    return sent + (Py_ssize_t)used;
failed:
    if (*err == 0) /* OpenSSL's reason, in problem */
        *err = TLS_REASON;
    return sent;
}

/* Arguments after fd, block and the offsets, as send_packet and send_packets take them. 0, or -1 with the
 * error set (the caller releases the sender either way). */
static int
sender_start(struct sender *s, PyObject *table_obj, PyObject *compressor_obj, PyObject *out_obj, PyObject *tls_obj)
{
    /* Set as each buffer is acquired: sender_release releases those. */
    s->hashing = s->packing = 0;
    s->compressor = NULL;
    s->packet = s->zero = NULL;
    s->iov = NULL;
    if (table_obj != Py_None) {
        if (PyObject_GetBuffer(table_obj, &s->table, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
            return -1;
        s->hashing = 1;
    }
    if (out_obj != Py_None) {
        if (PyObject_GetBuffer(out_obj, &s->out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
            return -1;
        s->packing = 1;
    }
    if (compressor_obj != Py_None &&
        (s->compressor = PyCapsule_GetPointer(compressor_obj, MFDCOMP_COMPRESSOR_CAPSULE)) == NULL)
        return -1;
    if (tls_obj != Py_None && (s->packing || mfdcomp_tls_take(tls_obj, &s->tls) < 0)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a TLS session or out, not both");
        return -1;
    }
    if (s->page_size <= 0 || s->page_size % 8 || s->capacity <= 0 || s->capacity > (1 << 20) ||
        s->name.len != NAME_LEN || s->zero_digest.len != 16 ||
        (s->packing || s->tls.ssl != NULL ? s->fd != -1 : s->fd < 0) || (s->flags & FLAG_SYNC)) {
        PyErr_SetString(PyExc_ValueError, "bad page_size, capacity, name field, zero digest, fd (or out) or flags");
        return -1;
    }
    if (s->tls.ssl != NULL && (s->gather = PyMem_Malloc(GATHER)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    s->header_size = FIXED_SIZE + 8 * s->capacity;
    s->packet = PyMem_Calloc((size_t)s->header_size, 1);
    s->zero = PyMem_Calloc((size_t)s->capacity, 1);
    s->iov = PyMem_Calloc((size_t)s->capacity + 1, sizeof *s->iov);
    if (s->packet == NULL || s->zero == NULL || s->iov == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* The arguments of send_packet and send_packets (format: their shared format, the call's name after ':'), the
 * sender started: 0, or -1 with the error set. s must start zeroed: sender_release is then right either way (a
 * failed parse leaves its buffers released, their obj NULL). */
static int
sender_parse(struct sender *s, PyObject *args, const char *format, PyObject **pages_obj, unsigned long long *number)
{
    PyObject *table_obj, *compressor_obj = Py_None, *out_obj = Py_None, *tls_obj = Py_None;
    unsigned int flags = 0;
    if (!PyArg_ParseTuple(args, format, &s->fd, &s->block, pages_obj, &s->page_size, &s->capacity, &s->detect_zero,
                          number, &s->name, &table_obj, &s->zero_digest, &flags, &compressor_obj, &out_obj,
                          &tls_obj))
        return -1;
    s->flags = flags;
    return sender_start(s, table_obj, compressor_obj, out_obj, tls_obj);
}

/* Everything sender_parse acquired. */
static void
sender_release(struct sender *s)
{
    PyMem_Free(s->packet);
    PyMem_Free(s->zero);
    PyMem_Free(s->iov);
    PyMem_Free(s->gather);
    if (s->hashing)
        PyBuffer_Release(&s->table);
    if (s->packing)
        PyBuffer_Release(&s->out);
    PyBuffer_Release(&s->zero_digest);
    PyBuffer_Release(&s->name);
    PyBuffer_Release(&s->block);
}

/* The batch's offsets, checked as send_packet checks them (capacity, alignment when hashed, digest slots):
 * NULL with the error set otherwise. Free with PyMem_Free. */
static Py_ssize_t *
batch_offsets(const struct sender *s, PyObject *offsets_obj, Py_ssize_t *count)
{
    /* Pages anywhere in the block, as zero_flags takes them; page-aligned when hashed, as page_digests. */
    Py_ssize_t *offsets = mfdcomp_page_offsets(offsets_obj, s->block.len, s->page_size, s->hashing, count);
    if (offsets == NULL)
        return NULL;
    if (*count > s->capacity) {
        PyErr_Format(PyExc_ValueError, "a batch holds at most %zd pages, got %zd", s->capacity, *count);
        PyMem_Free(offsets);
        return NULL;
    }
    if (s->hashing && mfdcomp_check_slots(offsets, *count, s->page_size, s->table.len) < 0) {
        PyMem_Free(offsets);
        return NULL;
    }
    return offsets;
}

/* One packet of the count pages at offsets (reordered: normal pages first), written to s->fd or packed into
 * out at *packed (advanced past it). Runs without the GIL. */
static struct sent
one_packet(struct sender *s, Py_ssize_t *offsets, Py_ssize_t count, unsigned long long packet_num,
           Py_ssize_t *packed, char *problem, size_t problem_size)
{
    struct sent r = {count, 0, 0, 0, 0};
    const Py_ssize_t ps = s->page_size;
    const unsigned char *base = s->block.buf;
    struct iovec *iov = s->iov;
    if (s->detect_zero) {
        mfdcomp_scan_pages(base, offsets, count, ps, s->zero);
        r.normal = partition(offsets, s->zero, count);
    }
    r.zero = count - r.normal;
    /* The header first, then the normal pages in runs of adjacent ones. */
    int iovcnt = 1;
    for (Py_ssize_t k = 0; k < r.normal;) {
        Py_ssize_t run = 1;
        while (k + run < r.normal && offsets[k + run] == offsets[k] + run * ps)
            run++;
        iov[iovcnt].iov_base = (void *)(base + offsets[k]);
        iov[iovcnt++].iov_len = (size_t)(run * ps);
        k += run;
    }
    r.payload = r.normal * ps;
    /* A codec's pages are hashed before it reads them: its window and tables push them out of the cache
     * before the write (512 MiB of zstd-1 over 2 channels: the sender's CPU 1.039 -> 1.021 s, 8 pairs). */
    const int hash_first = s->compressor != NULL && s->hashing;
    if (hash_first)
        mfdcomp_xxh3_pages()(base, offsets, r.normal, ps, 0, s->table.buf);
    if (s->compressor != NULL && r.normal > 0) {
        /* The codec's payload replaces the pages (a packet without normal pages has none, as in Python). */
        const char *out = NULL;
        r.payload = s->compressor->compress(s->compressor->ctx, iov + 1, iovcnt - 1, &out, problem, problem_size);
        iovcnt = 1;
        if (r.payload < 0)
            return r;
        if (r.payload > 0) {
            iov[iovcnt].iov_base = (void *)out;
            iov[iovcnt++].iov_len = (size_t)r.payload;
        }
    }
    unsigned char *h = s->packet;
    put32(h, MULTIFD_MAGIC);
    put32(h + 4, MULTIFD_VERSION);
    put32(h + 8, s->flags); /* the codec's bits; never SYNC */
    put32(h + 12, (uint32_t)s->capacity);
    put32(h + 16, (uint32_t)r.normal);
    put32(h + 20, (uint32_t)r.payload);
    put64(h + 24, packet_num);
    put32(h + 32, (uint32_t)r.zero);
    memcpy(h + NAME_AT, s->name.buf, NAME_LEN);
    for (Py_ssize_t k = 0; k < count; k++)
        put64(h + FIXED_SIZE + 8 * k, (uint64_t)offsets[k]);
    memset(h + FIXED_SIZE + 8 * count, 0, (size_t)(8 * (s->capacity - count))); /* the unused slots */
    iov[0].iov_base = h;
    iov[0].iov_len = (size_t)s->header_size;
    if (s->packing) {
        r.written = pack(iov, iovcnt, (unsigned char *)s->out.buf + *packed, s->out.len - *packed, &r.err);
        *packed += r.written;
    } else if (s->tls.ssl != NULL) {
        r.written = tls_writev(s, iov, iovcnt, &r.err, problem, problem_size);
    } else {
        r.written = sendmsg_all(s->fd, iov, iovcnt, &r.err);
    }
    if (r.err == 0 && s->hashing) {
        /* Without a codec after the write, as the Python path: the pages were just read, and are hashed from
         * the cache. (A failed write fails the channel and the session: digests recorded before it are
         * never compared.) */
        if (!hash_first)
            mfdcomp_xxh3_pages()(base, offsets, r.normal, ps, 0, s->table.buf);
        for (Py_ssize_t k = r.normal; k < count; k++)
            memcpy((unsigned char *)s->table.buf + 16 * (offsets[k] / ps), s->zero_digest.buf, 16);
    }
    return r;
}

PyObject *
mfdcomp_send_packet(PyObject *self, PyObject *args)
{
    struct sender s = {0};
    PyObject *offsets_obj, *result = NULL;
    unsigned long long packet_num;
    Py_ssize_t *offsets = NULL, count = 0;
    (void)self;
    if (sender_parse(&s, args, "iy*OnnpKy*Oy*|IOOO:send_packet", &offsets_obj, &packet_num) < 0 ||
        (offsets = batch_offsets(&s, offsets_obj, &count)) == NULL)
        goto done;
    char problem[256] = "";
    Py_ssize_t packed = 0;
    struct sent r;
    Py_BEGIN_ALLOW_THREADS
    r = one_packet(&s, offsets, count, packet_num, &packed, problem, sizeof problem);
    Py_END_ALLOW_THREADS
    PyObject *ordered = PyList_New(count);
    if (ordered == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *o = PyLong_FromSsize_t(offsets[k]);
        if (o == NULL) {
            Py_DECREF(ordered);
            goto done;
        }
        PyList_SET_ITEM(ordered, k, o);
    }
    if (r.payload < 0)
        result = Py_BuildValue("(nnniNns)", r.normal, r.zero, (Py_ssize_t)0, 0, ordered, (Py_ssize_t)0,
                               problem[0] ? problem : "the compressor failed without a message");
    else if (r.err == TLS_REASON)
        result = Py_BuildValue("(nnniNns)", r.normal, r.zero, r.written, r.err, ordered, r.payload, problem);
    else
        result = Py_BuildValue("(nnniNnO)", r.normal, r.zero, r.written, r.err, ordered, r.payload, Py_None);
done:
    PyMem_Free(offsets);
    sender_release(&s);
    return result;
}

PyObject *
mfdcomp_send_packets(PyObject *self, PyObject *args)
{
    struct sender s = {0};
    PyObject *batches_obj, *result = NULL, *seq = NULL;
    unsigned long long first_num;
    Py_ssize_t **offsets = NULL, *counts = NULL, nbatches = 0;
    (void)self;
    if (sender_parse(&s, args, "iy*OnnpKy*Oy*|IOOO:send_packets", &batches_obj, &first_num) < 0)
        goto done;
    seq = PySequence_Fast(batches_obj, "batches must be a sequence of offset lists");
    if (seq == NULL)
        goto done;
    nbatches = PySequence_Fast_GET_SIZE(seq);
    offsets = PyMem_Calloc((size_t)(nbatches ? nbatches : 1), sizeof *offsets);
    counts = PyMem_Calloc((size_t)(nbatches ? nbatches : 1), sizeof *counts);
    if (offsets == NULL || counts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t b = 0; b < nbatches; b++) {
        offsets[b] = batch_offsets(&s, PySequence_Fast_GET_ITEM(seq, b), &counts[b]);
        if (offsets[b] == NULL)
            goto done;
    }
    char problem[256] = "";
    Py_ssize_t packed = 0, packets = 0, pages_packets = 0;
    struct sent total = {0, 0, 0, 0, 0}, r = {0, 0, 0, 0, 0};
    Py_BEGIN_ALLOW_THREADS
    /* Packed, a packet after the first needs room for its header and the payload's bound (the pages, or
     * twice them for a codec): one that could overflow waits for the next call, its codec not fed. */
    const Py_ssize_t room = s.header_size + (s.compressor != NULL ? 2 : 1) * s.capacity * s.page_size;
    for (; packets < nbatches; packets++) {
        if (s.packing && packets > 0 && s.out.len - packed < room)
            break;
        /* A packet that did not go out (or into out) whole is not one of the call's: pack() advanced nothing. */
        r = one_packet(&s, offsets[packets], counts[packets], first_num + (unsigned long long)packets, &packed,
                       problem, sizeof problem);
        if (r.payload < 0 || r.err)
            break;
        total.normal += r.normal;
        total.zero += r.zero;
        total.written += r.written;
        total.payload += r.payload;
        pages_packets += r.normal > 0;
    }
    Py_END_ALLOW_THREADS
    if (r.payload < 0 || r.err == TLS_REASON)
        result = Py_BuildValue("(nnnnnnis)", packets, pages_packets, total.normal, total.zero, total.written,
                               total.payload, r.payload < 0 ? 0 : r.err,
                               problem[0] ? problem : "the compressor failed without a message");
    else
        result = Py_BuildValue("(nnnnnniO)", packets, pages_packets, total.normal, total.zero, total.written,
                               total.payload, r.err, Py_None);
done:
    for (Py_ssize_t b = 0; offsets != NULL && b < nbatches; b++)
        PyMem_Free(offsets[b]);
    PyMem_Free(offsets);
    PyMem_Free(counts);
    Py_XDECREF(seq);
    sender_release(&s);
    return result;
}

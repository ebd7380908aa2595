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

PyObject *
mfdcomp_send_packet(PyObject *self, PyObject *args)
{
    int fd, detect_zero;
    Py_buffer block, name, zero_digest, table = {0};
    PyObject *offsets_obj, *table_obj, *compressor_obj = Py_None, *out_obj = Py_None;
    Py_buffer out = {0};
    Py_ssize_t page_size, capacity;
    unsigned long long packet_num;
    unsigned int flags = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*OnnpKy*Oy*|IOO:send_packet", &fd, &block, &offsets_obj, &page_size, &capacity,
                          &detect_zero, &packet_num, &name, &table_obj, &zero_digest, &flags, &compressor_obj,
                          &out_obj))
        return NULL;
    const mfdcomp_compressor *compressor = NULL;
    PyObject *result = NULL;
    Py_ssize_t *offsets = NULL, count = 0;
    unsigned char *packet = NULL, *zero = NULL;
    struct iovec *iov = NULL;
    int hashing = table_obj != Py_None, packing = out_obj != Py_None;
    if (hashing && PyObject_GetBuffer(table_obj, &table, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        hashing = 0;
        goto done;
    }
    if (packing && PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        packing = 0;
        goto done;
    }
    if (compressor_obj != Py_None &&
        (compressor = PyCapsule_GetPointer(compressor_obj, MFDCOMP_COMPRESSOR_CAPSULE)) == NULL)
        goto done;
    if (page_size <= 0 || page_size % 8 || capacity <= 0 || capacity > (1 << 20) || name.len != NAME_LEN ||
        zero_digest.len != 16 || (packing ? fd != -1 : fd < 0) || (flags & FLAG_SYNC)) {
        PyErr_SetString(PyExc_ValueError, "bad page_size, capacity, name field, zero digest, fd (or out) or flags");
        goto done;
    }
    /* Pages anywhere in the block, as zero_flags takes them; page-aligned when hashed, as page_digests. */
    offsets = mfdcomp_page_offsets(offsets_obj, block.len, page_size, hashing, &count);
    if (offsets == NULL)
        goto done;
    if (count > capacity) {
        PyErr_Format(PyExc_ValueError, "a batch holds at most %zd pages, got %zd", capacity, count);
        goto done;
    }
    if (hashing && mfdcomp_check_slots(offsets, count, page_size, table.len) < 0)
        goto done;
    Py_ssize_t header_size = FIXED_SIZE + 8 * capacity;
    packet = PyMem_Calloc((size_t)header_size, 1);
    zero = PyMem_Calloc((size_t)(count ? count : 1), 1);
    iov = PyMem_Calloc((size_t)count + 1, sizeof *iov);
    if (packet == NULL || zero == NULL || iov == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const unsigned char *base = block.buf;
    Py_ssize_t normal = count, written = 0, payload = 0;
    int err = 0;
    char problem[256] = "";
    xxh3_pages_fn hash = mfdcomp_xxh3_pages();
    Py_BEGIN_ALLOW_THREADS
    if (detect_zero) {
        mfdcomp_scan_pages(base, offsets, count, page_size, zero);
        normal = partition(offsets, zero, count);
    }
    /* The header first, then the normal pages in runs of adjacent ones. */
    int iovcnt = 1;
    for (Py_ssize_t k = 0; k < normal;) {
        Py_ssize_t run = 1;
        while (k + run < normal && offsets[k + run] == offsets[k] + run * page_size)
            run++;
        iov[iovcnt].iov_base = (void *)(base + offsets[k]);
        iov[iovcnt++].iov_len = (size_t)(run * page_size);
        k += run;
    }
    payload = normal * page_size;
    if (compressor != NULL && normal > 0) {
        /* The codec's payload replaces the pages (a packet without normal pages has none, as in Python). */
        const char *out = NULL;
        payload = compressor->compress(compressor->ctx, iov + 1, iovcnt - 1, &out, problem, sizeof problem);
        iovcnt = 1;
        if (payload > 0) {
            iov[iovcnt].iov_base = (void *)out;
            iov[iovcnt++].iov_len = (size_t)payload;
        }
    }
    unsigned char *h = packet;
    put32(h, MULTIFD_MAGIC);
    put32(h + 4, MULTIFD_VERSION);
    put32(h + 8, flags); /* the codec's bits; never SYNC */
    put32(h + 12, (uint32_t)capacity);
    put32(h + 16, (uint32_t)normal);
    put32(h + 20, (uint32_t)payload);
    put64(h + 24, packet_num);
    put32(h + 32, (uint32_t)(count - normal));
    memcpy(h + NAME_AT, name.buf, NAME_LEN);
    for (Py_ssize_t k = 0; k < count; k++)
        put64(h + FIXED_SIZE + 8 * k, (uint64_t)offsets[k]);
    iov[0].iov_base = packet;
    iov[0].iov_len = (size_t)header_size;
    if (payload >= 0 && packing)
        written = pack(iov, iovcnt, out.buf, out.len, &err);
    else if (payload >= 0)
        written = sendmsg_all(fd, iov, iovcnt, &err);
    if (payload >= 0 && err == 0 && hashing) {
        /* After the write, as the Python path: the pages were just read, and are hashed from the cache. */
        hash(base, offsets, normal, page_size, 0, table.buf);
        for (Py_ssize_t k = normal; k < count; k++)
            memcpy((unsigned char *)table.buf + 16 * (offsets[k] / page_size), zero_digest.buf, 16);
    }
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
    if (payload < 0)
        result = Py_BuildValue("(nnniNns)", normal, count - normal, written, err, ordered, (Py_ssize_t)0,
                               problem[0] ? problem : "the compressor failed without a message");
    else
        result = Py_BuildValue("(nnniNnO)", normal, count - normal, written, err, ordered, payload, Py_None);
done:
    PyMem_Free(offsets);
    PyMem_Free(packet);
    PyMem_Free(zero);
    PyMem_Free(iov);
    if (hashing)
        PyBuffer_Release(&table);
    if (packing)
        PyBuffer_Release(&out);
    PyBuffer_Release(&zero_digest);
    PyBuffer_Release(&name);
    PyBuffer_Release(&block);
    return result;
}

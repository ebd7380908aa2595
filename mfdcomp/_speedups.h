/* What mfdcomp/_speedups.c shares with the other sources of the extension. */
#ifndef MFDCOMP_SPEEDUPS_H
#define MFDCOMP_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* A RAM packet's layout (mfdcomp.wire.packets): magic, version, flags, then the fixed fields with the
 * block name at NAME_AT, then the big-endian u64 offset array from FIXED_SIZE. */
#define MULTIFD_MAGIC 0x11223344u
#define MULTIFD_VERSION 1u
#define FLAG_SYNC 0x01u
#define HEADER_SIZE 12        /* magic, version, flags: mfdcomp.wire.packets.HEADER */
#define FIXED_SIZE 320        /* mfdcomp.wire.packets.RAM_FIXED */
#define NAME_AT 64
#define NAME_LEN 256

/* XXH3-128 of count pages (at offsets of base, or packed one after another when packed != 0),
 * canonical, into their 16-byte slots of table (slot = offset / page_size). */
typedef void (*xxh3_pages_fn)(const unsigned char *base, const ssize_t *offsets, ssize_t count, ssize_t page_size,
                              int packed, unsigned char *table);

/* The build of the page hashing in use (set at load, or by set_xxh3_build under the GIL). */
xxh3_pages_fn mfdcomp_xxh3_pages(void);

/* Staged page k into offsets[k] of the target: pwrite to fd per run of adjacent pages, or memcpy into
 * block when fd < 0. 0, or -1 with errno. */
int mfdcomp_write_runs(int fd, unsigned char *block, const unsigned char *staged, const Py_ssize_t *offsets,
                       Py_ssize_t count, Py_ssize_t page_size);

/* Offsets of a sequence, each a page of a len-byte buffer (aligned to page_size when aligned != 0), or NULL
 * with ValueError (the message of the pure-Python twin); *count gets the length; free with PyMem_Free. */
Py_ssize_t *mfdcomp_page_offsets(PyObject *offsets_obj, Py_ssize_t len, Py_ssize_t page_size, int aligned,
                                 Py_ssize_t *count);

/* 0 if every page's 16-byte slot (offset / page_size) lies in a table_len-byte digest table, else -1
 * with ValueError (the message of mfdcomp.pagedigest.check_slots). */
int mfdcomp_check_slots(const Py_ssize_t *offsets, Py_ssize_t count, Py_ssize_t page_size, Py_ssize_t table_len);

/* flags[k] = whether the page at offsets[k] of base is all zero. */
void mfdcomp_scan_pages(const unsigned char *base, const Py_ssize_t *offsets, Py_ssize_t count, Py_ssize_t page_size,
                        unsigned char *flags);

/* A codec's compiled packet compressor, handed to send_packet in a PyCapsule of this name (the contract a
 * codec's own extension implements: MultiFDMethods.packet_compressor). compress runs without the GIL, on
 * the channel's thread only: it feeds the pages (count buffers, in order) through the channel's stream as
 * one packet's payload, points *out at it (the compressor's memory, valid until its next call) and returns
 * its size; or returns -1 with the whole message for the codec's CodecError in error. */
#define MFDCOMP_COMPRESSOR_CAPSULE "mfdcomp.compressor.v1"
struct iovec;
typedef struct {
    void *ctx;
    Py_ssize_t (*compress)(void *ctx, const struct iovec *pages, int count, const char **out, char *error,
                           size_t error_size);
} mfdcomp_compressor;

/* A codec's compiled packet decompressor, handed to recv_packets in a PyCapsule of this name (the contract
 * a codec's own extension implements: MultiFDMethods.packet_decompressor). decompress runs without the GIL,
 * on the channel's thread only: it decodes one packet's payload (size bytes) through the channel's stream
 * into out, the packet's out_size bytes of normal pages packed, and returns 0 when that filled them exactly;
 * or -1 with the whole message of the codec's CodecError in error (packet_num and pages are for it). */
#define MFDCOMP_DECOMPRESSOR_CAPSULE "mfdcomp.decompressor.v1"
typedef struct {
    void *ctx;
    int (*decompress)(void *ctx, const unsigned char *payload, size_t size, unsigned char *out, size_t out_size,
                      unsigned long long packet_num, unsigned int pages, Py_ssize_t page_size, char *error,
                      size_t error_size);
} mfdcomp_decompressor;

/* A TLS session a compiled loop reads itself (mfdcomp/_tlsdirect.c): OpenSSL's SSL*, its socket, the longest
 * wait for it. Used only while the caller holds the session's lock. */
struct mfdcomp_tls {
    void *ssl;
    int fd, timeout_ms;
};

/* tls_bind(path): see mfdcomp/_tlsdirect.c. */
PyObject *mfdcomp_tls_bind(PyObject *self, PyObject *arg);

/* A session spec (sslobj, owner, fd, timeout_ms) into *tls, checked; 0, or -1 with ValueError. */
int mfdcomp_tls_take(PyObject *spec, struct mfdcomp_tls *tls);

/* Up to size bytes of the session into buf, waiting for the socket as needed (no GIL): the count, size unless
 * the session ended (close_notify, or the socket's end); or -1 - (the count read) when a wait timed out
 * (*err ETIMEDOUT), polling failed (*err its errno), or OpenSSL failed (its reason in problem). */
Py_ssize_t mfdcomp_tls_read(const struct mfdcomp_tls *tls, unsigned char *buf, Py_ssize_t size, int *err,
                            char *problem, size_t problem_size);

/* All size bytes of buf through the session, waiting for the socket as needed (no GIL): 0; or -1 when a wait
 * timed out (*err ETIMEDOUT), the socket failed (*err its errno, EPIPE for a peer gone without one), or
 * OpenSSL failed (its reason in problem). */
int mfdcomp_tls_write(const struct mfdcomp_tls *tls, const unsigned char *buf, size_t size, int *err, char *problem,
                      size_t problem_size);

/* recv_packets(...): see mfdcomp/_recvloop.c. send_packet(...), send_packets(...): see mfdcomp/_sendloop.c. */
PyObject *mfdcomp_recv_packets(PyObject *self, PyObject *args);
PyObject *mfdcomp_send_packet(PyObject *self, PyObject *args);
PyObject *mfdcomp_send_packets(PyObject *self, PyObject *args);

#endif

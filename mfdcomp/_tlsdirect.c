/* Reading and writing TLS sessions in the compiled loops without the GIL, through the OpenSSL Python's ssl uses.
 *
 * OpenSSL returns one record (16 KiB at most) per SSL_read, so a TLS channel read through ssl costs a Python
 * call and a GIL hand-off per record: a 512 KiB payload is 32 of them. Here the compiled loop calls SSL_read_ex
 * itself, on the session of the ssl.SSLSocket the handshake made (certificates, verification and --tls-authz
 * stay Python's), while the caller holds the session's lock so that no other thread calls into it.
 *
 * Nothing of OpenSSL is linked or included at build: tls_bind resolves the few functions used from the _ssl
 * module's own library (dlopen of the loaded module, RTLD_NOLOAD), so they are the very ones that made the
 * session, and an _ssl built without a shared libssl simply leaves the loops on the Python path. The session
 * pointer is the second field of _ssl's socket object (CPython 3.7 to 3.13: the weak reference to its
 * owner, then the SSL*); it is taken only after the type's name and size and that weak reference (which must
 * name the given owner) check out, and the session's descriptor must be the owner's.
 *
 * tls_bind(path) -> str | None
 *     Binds to the library of the _ssl module at path (None: the program itself, for an _ssl built in); None
 *     when bound, else why not. Once bound, later calls return None at once.
 *
 * The source's compiled loop writes a TLS channel the same way (SSL_write_ex, the session's send lock and lock
 * held), its packets' pieces straight from the pages or the codec's output, without packing them first.
 *
 * A session spec, as recv_packets and send_packets take it: (sslobj, owner, fd, timeout_ms), sslobj the owner's _sslobj,
 * owner the ssl.SSLSocket, fd its descriptor, timeout_ms the longest wait for the socket (-1: none).
 */
#include "_speedups.h"

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

/* OpenSSL's SSL_get_error values (ssl.h; part of its ABI since 0.9). */
enum { E_SSL = 1, E_WANT_READ = 2, E_WANT_WRITE = 3, E_SYSCALL = 5, E_ZERO_RETURN = 6 };

static struct {
    int (*read_ex)(void *ssl, void *buf, size_t num, size_t *readbytes);
    int (*write_ex)(void *ssl, const void *buf, size_t num, size_t *written);
    int (*get_error)(const void *ssl, int ret);
    int (*get_rfd)(const void *ssl);
    unsigned long (*peek_last_error)(void);
    const char *(*reason_error_string)(unsigned long e);
    void (*clear_error)(void);
} api; /* set once by tls_bind, under the GIL, before any session is taken */
static int bound;

PyObject *
mfdcomp_tls_bind(PyObject *self, PyObject *arg)
{
    (void)self;
    if (bound)
        Py_RETURN_NONE;
    const char *path = NULL;
    if (arg != Py_None && (path = PyUnicode_AsUTF8(arg)) == NULL)
        return NULL;
    void *library = dlopen(path, RTLD_NOW | (path != NULL ? RTLD_NOLOAD : 0));
    if (library == NULL)
        return PyUnicode_FromFormat("%s is not loaded (%s)", path ? path : "the program", dlerror());
    struct {
        const char *name;
        void **slot;
    } wanted[] = {
        {"SSL_read_ex", (void **)&api.read_ex},
        {"SSL_write_ex", (void **)&api.write_ex},
        {"SSL_get_error", (void **)&api.get_error},
        {"SSL_get_rfd", (void **)&api.get_rfd},
        {"ERR_peek_last_error", (void **)&api.peek_last_error},
        {"ERR_reason_error_string", (void **)&api.reason_error_string},
        {"ERR_clear_error", (void **)&api.clear_error},
    };
    const size_t count = sizeof wanted / sizeof wanted[0];
    void *found[sizeof wanted / sizeof wanted[0]];
    for (size_t k = 0; k < count; k++) {
        found[k] = dlsym(library, wanted[k].name);
        if (found[k] == NULL) {
            dlclose(library);
            return PyUnicode_FromFormat("OpenSSL's %s is not found from %s", wanted[k].name,
                                        path ? path : "the program");
        }
    }
    /* All or none; the library kept open: the functions stay as long as the process. */
    for (size_t k = 0; k < count; k++)
        *wanted[k].slot = found[k];
    bound = 1;
    Py_RETURN_NONE;
}

/* The head of CPython's _ssl socket object (Modules/_ssl.c, PySSLSocket), as far as it is read here. */
struct ssl_socket_head {
    PyObject_HEAD
    PyObject *socket_ref; /* a weak reference to the ssl.SSLSocket that owns it */
    void *ssl;
};

int
mfdcomp_tls_take(PyObject *spec, struct mfdcomp_tls *tls)
{
    PyObject *sslobj, *owner;
    if (!PyArg_ParseTuple(spec, "OOii:TLS session", &sslobj, &owner, &tls->fd, &tls->timeout_ms))
        return -1;
#if PY_VERSION_HEX < 0x03070000 || PY_VERSION_HEX >= 0x030E0000
    (void)sslobj;
    (void)owner;
    PyErr_SetString(PyExc_ValueError, "direct TLS calls are not known to work with this Python");
    return -1;
#else
    if (!bound) {
        PyErr_SetString(PyExc_ValueError, "OpenSSL is not bound (tls_bind)");
        return -1;
    }
    PyTypeObject *type = Py_TYPE(sslobj);
    if (strcmp(type->tp_name, "_ssl._SSLSocket") != 0 || type->tp_basicsize < (Py_ssize_t)sizeof(struct ssl_socket_head)) {
        PyErr_Format(PyExc_ValueError, "not an _ssl._SSLSocket: %s", type->tp_name);
        return -1;
    }
    struct ssl_socket_head *head = (struct ssl_socket_head *)sslobj;
    if (head->socket_ref == NULL || !PyWeakref_CheckRef(head->socket_ref)) {
        PyErr_SetString(PyExc_ValueError,
                        "the _ssl._SSLSocket has no socket (a memory-BIO session) or a layout not known here");
        return -1;
    }
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *referent = NULL;
    if (PyWeakref_GetRef(head->socket_ref, &referent) < 0)
        return -1;
    Py_XDECREF(referent); /* compared as an address only */
#else
    PyObject *referent = PyWeakref_GetObject(head->socket_ref);
#endif
    if (referent != owner || head->ssl == NULL || api.get_rfd(head->ssl) != tls->fd) {
        PyErr_SetString(PyExc_ValueError, "the _ssl._SSLSocket is not the owner's session on its descriptor");
        return -1;
    }
    tls->ssl = head->ssl;
    return 0;
#endif
}

/* Whether fd became ready for events within timeout_ms (-1: no bound): 1, 0 on timeout, -1 with errno. */
static int
wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd p = {fd, events, 0};
    for (;;) {
        int n = poll(&p, 1, timeout_ms);
        if (n >= 0 || errno != EINTR)
            return n;
    }
}

/* After a call that did not succeed (SSL_get_error's kind): 1 when the socket became ready for what OpenSSL
 * wants (call again), else 0 with *err ETIMEDOUT or poll's errno. A TLS 1.3 read may want a write (a key
 * update's answer), a write a read. */
static int
await_want(const struct mfdcomp_tls *tls, int kind, int *err)
{
    int ready = wait_fd(tls->fd, kind == E_WANT_READ ? POLLIN : POLLOUT, tls->timeout_ms);
    if (ready > 0)
        return 1;
    *err = ready == 0 ? ETIMEDOUT : errno;
    return 0;
}

/* OpenSSL's reason for the failure (the last error queued, ``last``) into problem; the queue cleared. */
static void
say_reason(int kind, unsigned long last, char *problem, size_t problem_size)
{
    const char *reason = last ? api.reason_error_string(last) : NULL;
    if (reason != NULL)
        snprintf(problem, problem_size, "%s", reason);
    else
        snprintf(problem, problem_size, "OpenSSL error %d (code %lx)", kind, last);
    api.clear_error();
}

Py_ssize_t
mfdcomp_tls_read(const struct mfdcomp_tls *tls, unsigned char *buf, Py_ssize_t size, int *err, char *problem,
                 size_t problem_size)
{
    Py_ssize_t got = 0;
    api.clear_error();
    while (got < size) {
        size_t n = 0;
        int ok = api.read_ex(tls->ssl, buf + got, (size_t)(size - got), &n);
        if (ok == 1) {
            got += (Py_ssize_t)n;
            continue;
        }
        int kind = api.get_error(tls->ssl, ok);
        if (kind == E_WANT_READ || kind == E_WANT_WRITE) {
            if (await_want(tls, kind, err))
                continue;
            return -got - 1;
        }
        unsigned long last = api.peek_last_error();
        const char *reason = last ? api.reason_error_string(last) : NULL;
        /* The ends ssl's read treats as the end of the stream (SSLZeroReturnError, SSLEOFError): close_notify,
         * the socket's end without one (an empty error queue), OpenSSL 3's "unexpected eof". */
        if (kind == E_ZERO_RETURN || (kind == E_SYSCALL && last == 0) ||
            (kind == E_SSL && reason != NULL && strcmp(reason, "unexpected eof while reading") == 0)) {
            api.clear_error();
            break;
        }
        say_reason(kind, last, problem, problem_size);
        return -got - 1;
    }
    return got;
}

int
mfdcomp_tls_write(const struct mfdcomp_tls *tls, const unsigned char *buf, size_t size, int *err, char *problem,
                  size_t problem_size)
{
    api.clear_error();
    while (size > 0) {
        size_t n = 0;
        /* Not partial writes (ssl's mode): all of it, or a failure after which the same bytes are offered
         * again, OpenSSL having kept what it encrypted. */
        int ok = api.write_ex(tls->ssl, buf, size, &n);
        if (ok == 1) {
            buf += n;
            size -= n;
            continue;
        }
        int saved = errno;
        int kind = api.get_error(tls->ssl, ok);
        if (kind == E_WANT_READ || kind == E_WANT_WRITE) {
            if (await_want(tls, kind, err))
                continue;
            return -1;
        }
        unsigned long last = api.peek_last_error();
        if (kind == E_SYSCALL && last == 0) {
            *err = saved ? saved : EPIPE; /* the socket's own failure; none: the peer is gone */
            api.clear_error();
        } else {
            say_reason(kind, last, problem, problem_size);
        }
        return -1;
    }
    return 0;
}

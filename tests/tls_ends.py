"""One TLS server and client for tests that run channels over TLS: certificates made once per process."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from mfdcomp.transport.tls import TlsClient, TlsServer
from mfdcomp.transport.tlscreds import make_creds

_lock = threading.Lock()  # the first callers may be two threads of one test
_ends: list[tuple[TlsServer, TlsClient]] = []  # under _lock


def tls_ends() -> tuple[TlsServer, TlsClient]:
    """A server and a client of one new CA, made once; the client expects the name localhost."""
    with _lock:
        if not _ends:
            creds = make_creds(Path(tempfile.mkdtemp(prefix="mfdcomp-tls-ends-")) / "creds")
            _ends.append((TlsServer.load(creds), TlsClient.load(creds, "localhost")))
        return _ends[0]

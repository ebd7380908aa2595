"""The compiled receive loop's own reads of a TLS session (mfdcomp/_tlsdirect.c).

Bound to the OpenSSL that Python's ssl loaded; a session spec is taken only when it checks out (the _ssl
object, its owner, its descriptor); a stall, the peer's close_notify, a shutdown from another thread and a
broken record end a read as the Python read path ends it. test_fastrecv runs every input through this path
and through read_some, against the Python loop.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_fastsend import Block
from test_tlsconn import DEADLINE, creds, pair
from tls_ends import tls_ends

from mfdcomp import doctor, speedups
from mfdcomp.engine.source import SourceEngine
from mfdcomp.errors import ChannelError
from mfdcomp.methods.nocomp import Nocomp
from mfdcomp.transport.sockets import SocketStream
from mfdcomp.transport.tls import TlsStream
from mfdcomp.transport.tlsconn import SocketTlsConnection, TlsConnection
from mfdcomp.wire import INIT_SIZE

__all__ = ["creds"]  # the fixture, used by name

pytestmark = pytest.mark.skipif(speedups.compiled() is None, reason="mfdcomp._speedups is not built here")

SLOW, FAILED, TLS_FAILED = 2, 3, 7
MAGIC_AND_MORE = b"\x11\x22\x33\x44\x00"  # the first bytes of a packet header


@pytest.fixture(autouse=True)
def _bound() -> None:
    """The compiled calls below take session specs: OpenSSL is bound first, as fastrecv and fastsend bind it
    (each test runs alone too, with -k)."""
    assert speedups.bind_tls() is None


def loop_args(spec: Any) -> list[Any]:
    """recv_packets' arguments for one 8-page block, nocomp, reading the session ``spec``."""
    block = (b"pc.ram", 8 * 4096, -1, memoryview(bytearray(8 * 4096)), np.zeros(8, np.bool_), None)
    header = bytearray(320 + 8 * 128)
    return [-1, header, bytearray(128 * 4096), [block], 4096, 128, 8, bytes(16), 0, None, None, None, spec]


def test_the_openssl_of_pythons_ssl_is_bound_here() -> None:
    assert speedups.bind_tls() is None


def test_a_library_that_is_not_loaded_is_not_bound_and_says_so(tmp_path: Path) -> None:
    code = (
        "import _ssl; from mfdcomp import speedups; m = speedups.compiled(); "
        f"print(m.tls_bind({str(tmp_path / 'nothing.so')!r})); print(m.tls_bind(None)); "
        "print(m.tls_bind(_ssl.__file__)); print(m.tls_bind('anything, once bound'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    not_loaded, not_global, bound, again = out.splitlines()
    assert not_loaded.startswith(f"{tmp_path / 'nothing.so'} is not loaded"), not_loaded
    # This Python's _ssl is a module of its own, its OpenSSL loaded for it alone: not the program's.
    assert not_global == "OpenSSL's SSL_read_ex is not found from the program"
    assert (bound, again) == ("None", "None")


def test_a_session_spec_is_taken_only_when_it_checks_out(creds: dict[str, Path]) -> None:
    compiled = speedups.compiled()
    assert compiled is not None and speedups.bind_tls() is None
    with pair(creds["good"], "socket", "socket") as (client, server):
        assert isinstance(server, SocketTlsConnection)
        client.sendall(MAGIC_AND_MORE)
        client.close_notify()
        with server.held_alone() as tls:
            good = (tls._sslobj, tls, tls.fileno(), 1000)
            for wrong, words in [
                ((object(), tls, tls.fileno(), 0), "not an _ssl._SSLSocket"),
                ((good[0], object(), tls.fileno(), 0), "not the owner's session"),
                ((good[0], tls, tls.fileno() + 1000, 0), "not the owner's session"),
                ((good[0], tls), "TLS session"),
            ]:
                with pytest.raises((ValueError, TypeError), match=words):
                    compiled.recv_packets(*loop_args(wrong))
            status, back, *_ = compiled.recv_packets(*loop_args(good))
        assert (status, back) == (SLOW, len(MAGIC_AND_MORE)), "the end, the bytes read handed back"


def test_a_memory_bio_session_is_not_taken(creds: dict[str, Path]) -> None:
    compiled = speedups.compiled()
    assert compiled is not None
    with pair(creds["good"], "socket", "memory") as (_client, server):
        assert isinstance(server, TlsConnection)
        sslobj = server._session._sslobj  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="no socket"):
            compiled.recv_packets(*loop_args((sslobj, server._session, server.sock.fileno(), 0)))


def test_a_stall_ends_a_direct_read_at_its_timeout_as_the_stream_says(creds: dict[str, Path]) -> None:
    compiled = speedups.compiled()
    assert compiled is not None
    with pair(creds["good"], "socket", "socket", recv_timeout=0.3) as (client, server):
        assert isinstance(server, SocketTlsConnection)
        stream = TlsStream(server, idle_timeout=0.3)
        client.sendall(MAGIC_AND_MORE)
        started = time.monotonic()
        with stream.direct_session() as spec:
            assert spec is not None and spec[3] == 300
            status, back, err, *_ = compiled.recv_packets(*loop_args(spec))
        assert 0.25 < time.monotonic() - started < DEADLINE
        assert (status, back, err) == (FAILED, len(MAGIC_AND_MORE), errno.ETIMEDOUT)
        error = stream.direct_failed(err, None)
        assert isinstance(error, ChannelError)
        assert str(error) == "server: nothing received for 0.3 s: the peer stalled (idle timeout)"


def test_shutdown_from_another_thread_ends_a_direct_read_without_a_timeout(creds: dict[str, Path]) -> None:
    compiled = speedups.compiled()
    assert compiled is not None
    with pair(creds["good"], "socket", "socket") as (_client, server):
        assert isinstance(server, SocketTlsConnection)
        stream = TlsStream(server)
        results: list[tuple[Any, ...]] = []

        def read() -> None:
            with stream.direct_session() as spec:
                assert spec is not None and spec[3] == -1
                results.append(compiled.recv_packets(*loop_args(spec)))

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.2)  # let it block in its wait; shutdown must wake it wherever it is
        server.shutdown()
        reader.join(DEADLINE)
        assert not reader.is_alive(), "shutdown did not wake the direct read"
        assert results and results[0][:2] == (SLOW, 0)
        with stream.direct_session() as spec:
            assert spec is None, "a session shut down is read by read_some, which says so"


def test_bytes_put_back_keep_the_session_from_the_loop(creds: dict[str, Path]) -> None:
    with pair(creds["good"], "socket", "socket") as (_client, server):
        stream = TlsStream(server)
        stream.unread(b"xy")
        with stream.direct_session() as spec:
            assert spec is None, "read_some returns the bytes put back first"


def test_garbage_under_the_session_is_openssls_reason(creds: dict[str, Path]) -> None:
    compiled = speedups.compiled()
    assert compiled is not None
    with pair(creds["good"], "socket", "socket") as (client, server):
        assert isinstance(client, SocketTlsConnection) and isinstance(server, SocketTlsConnection)
        client.sendall(MAGIC_AND_MORE)
        socket.socket.sendall(client.sock, b"\x17\x03\x03\x00\x20" + bytes(range(32)))
        stream = TlsStream(server)
        with stream.direct_session() as spec:
            status, back, _err, *_, problem = compiled.recv_packets(*loop_args(spec))
        assert (status, back, problem) == (TLS_FAILED, len(MAGIC_AND_MORE), "decryption failed or bad record mac")
        assert str(stream.direct_failed(0, problem)) == "server: TLS: decryption failed or bad record mac"


def test_without_the_compiled_module_the_answer_is_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speedups, "_MODULE", None)
    monkeypatch.setattr(speedups, "_STATUS", "pure Python (forced by this test)")
    monkeypatch.setattr(speedups, "_TLS", [])
    assert speedups.bind_tls() == "pure Python (forced by this test)"


def test_doctor_says_who_reads_tls_channels() -> None:
    code = "import json, sys; from mfdcomp.cli import main; sys.exit(main(['doctor', '--json']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    (line,) = [f for f in json.loads(done.stdout)["findings"] if f["item"] == "TLS channel reads"]
    assert line["status"] == "ok" and line["detail"].startswith("read by the compiled loop itself, through the OpenSSL")


def test_doctor_says_why_not_where_openssl_is_not_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speedups, "bind_tls", lambda: "OpenSSL's SSL_read_ex is not found from the program")
    finding = doctor.tls_reads_finding()
    assert finding is not None and finding.status is doctor.Status.INFO
    assert finding.detail.endswith("a call per 16 KiB record: OpenSSL's SSL_read_ex is not found from the program")
    monkeypatch.setattr(speedups, "compiled", lambda: None)
    assert doctor.tls_reads_finding() is None


def _source_over_tls(fast: bool, case: str) -> tuple[str, str]:
    """One source channel over TLS whose peer, after the init packet, goes (or stops reading): its error."""
    ours, theirs = socket.socketpair()
    server, client = tls_ends()
    release = threading.Event()

    def peer() -> None:
        stream = server.wrap(SocketStream(theirs, "peer"))
        stream.accept_handshake(time.monotonic() + DEADLINE)
        stream.recv_exact_into(memoryview(bytearray(INIT_SIZE)))
        if case == "peer-stalls":
            release.wait(DEADLINE)
        stream.shutdown()
        stream.close()

    waiter = threading.Thread(target=peer)
    waiter.start()
    stream = client.wrap(SocketStream(ours, "source", send_idle_timeout=0.3 if case == "peer-stalls" else None))
    engine = SourceEngine([stream], Nocomp(), level=None, page_size=4096, uuid=bytes(16), detect_zero_pages=True)
    engine.fast = fast
    block = Block("pc.ram", memoryview(os.urandom(64 << 20)))
    batches = [(block, [(first + k) * 4096 for k in range(128)]) for first in range(0, 16384, 128)]
    try:
        with pytest.raises(ChannelError):
            engine.start()
            engine.send_round(batches)
            engine.finish()
    finally:
        engine.close()
        release.set()
        waiter.join(DEADLINE)
    error = engine.state.error
    assert error is not None
    return type(error).__name__, str(error)


@pytest.mark.parametrize("case", ["peer-gone", "peer-stalls"])
def test_a_tls_source_channel_fails_alike_on_both_paths(case: str) -> None:
    compiled, pure = (_source_over_tls(fast, case) for fast in (True, False))
    assert compiled == pure

"""TLS on every channel (issue 19): real openssl-made certificates, real TCP sockets, real mfdcomp processes.

A good source gets through with equal sha256; a plain source, another CA, an expired certificate, a
wrong host name and a client outside --tls-authz are refused with the reason on both ends, no --out
file appears and the receiver keeps waiting for a valid source. Hostile TLS peers (garbage before
and inside the handshake, a handshake that never ends, a peer gone after authenticating, fuzzed
ClientHellos) are dropped within their deadline and never hold up the session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine.incoming import Incoming
from mfdcomp.engine.migrate import MigrateOptions, migrate
from mfdcomp.registry import get_codec
from mfdcomp.testing import AnonymousTargets
from mfdcomp.transport.address import parse_address
from mfdcomp.transport.sockets import connect, listen
from mfdcomp.transport.tls import TlsClient, TlsError, TlsServer
from mfdcomp.transport.tlscreds import make_creds
from tests.test_engine_roundtrip import fill_mixed

MFDCOMP = [sys.executable, "-m", "mfdcomp.cli"]
DEADLINE = 30.0

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real certificates: the good pair, another CA, expired ones and an unauthorised client of the same CA."""
    root = tmp_path_factory.mktemp("creds")
    good = make_creds(root / "good")
    return {
        "good": good,
        "other-ca": make_creds(root / "other-ca"),
        "expired": make_creds(root / "expired", ca_from=good, expired=True),
        "intruder": make_creds(root / "intruder", ca_from=good, client_name="intruder"),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Recv:
    """``mfdcomp recv`` as a real process on a TCP port."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.out = tmp_path / "dst.img"
        self.proc = subprocess.Popen(
            [*MFDCOMP, "recv", "--listen", f"tcp:127.0.0.1:{self.port}", "--out", str(self.out), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on": the port is open
        assert "listening on" in line, line
        self.err_lines: list[str] = []
        self._reader = threading.Thread(target=self._read_err, daemon=True)
        self._reader.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err_lines.append(line)

    def wait_line(self, text: str, within: float = 10.0) -> str:
        end = time.monotonic() + within
        while time.monotonic() < end:
            for line in list(self.err_lines):
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} in {self.err_lines}")

    def finish(self) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=DEADLINE)
        self._reader.join(5)
        return self.proc.returncode, out

    def kill(self) -> None:
        """SIGTERM, then SIGKILL if it has not ended within DEADLINE: a hung receiver never outlives its test."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise


def send(image: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MFDCOMP, "send", str(image), "--to", f"tcp:127.0.0.1:{port}", "--multifd-channels", "2", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "src.img"
    subprocess.run([*MFDCOMP, "gen-image", str(path), "--size", "8M", "--seed", "3"], check=True, capture_output=True)
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(("dst", ".dst")))


def test_a_tls_transfer_over_tcp_has_equal_sha256(tmp_path: Path, creds: dict[str, Path], image: Path) -> None:
    recv = Recv(tmp_path, "--tls-creds", str(creds["good"]), "--tls-authz", "mfdcomp-source")
    try:
        # sha256 asked for: send's default digest is xxh3-128 (issue 18); recv's last line names the one used.
        args = ["--tls-creds", str(creds["good"]), "--multifd-compression", "zstd", "--digest", "sha256"]
        sent = send(image, recv.port, *args)
        code, out = recv.finish()
    finally:
        recv.kill()
    assert sent.returncode == 0, sent.stderr
    assert code == 0, recv.err_lines
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in out
    assert hashlib.sha256(recv.out.read_bytes()).hexdigest() == digest


REFUSALS = {
    # case: (send's extra arguments, what the source says, what the destination's line says)
    "plain": ([], "accepts only TLS connections", "not a TLS connection"),
    "other-ca": (["--tls-creds", "{other-ca}"], "destination's (server) certificate was refused", "unknown ca"),
    "expired": (["--tls-creds", "{expired}"], "certificate expired", "certificate has expired"),
    "wrong-host": (
        ["--tls-creds", "{good}", "--tls-hostname", "wrong.example"],
        "not valid for 'wrong.example'",
        "TLS refused",
    ),
    "not-authorised": (["--tls-creds", "{intruder}"], "not in --tls-authz", "intruder is not in --tls-authz"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_source_hears_why_and_no_file_appears(
    tmp_path: Path, creds: dict[str, Path], image: Path, case: str
) -> None:
    extra, source_says, destination_says = REFUSALS[case]
    args = [arg.format(**{k: str(v) for k, v in creds.items()}) for arg in extra]
    recv = Recv(tmp_path, "--tls-creds", str(creds["good"]), "--tls-authz", "mfdcomp-source")
    try:
        refused = send(image, recv.port, *args)
        assert refused.returncode == 1, refused.stdout
        assert source_says in refused.stderr
        line = recv.wait_line("dropped connection")
        assert destination_says in line, line
        assert recv.proc.poll() is None  # still waiting for a valid source, as without TLS
        assert leftovers(tmp_path) == []
        # A valid source still gets in afterwards.
        good = send(image, recv.port, "--tls-creds", str(creds["good"]))
        assert good.returncode == 0, good.stderr
        code, _ = recv.finish()
        assert code == 0
    finally:
        recv.kill()


def test_max_size_refuses_a_larger_session_on_both_ends_before_allocating(tmp_path: Path, image: Path) -> None:
    recv = Recv(tmp_path, "--max-size", "4M")
    try:
        refused = send(image, recv.port)
        code, _ = recv.finish()
    finally:
        recv.kill()
    size = image.stat().st_size
    assert refused.returncode == 1
    assert f"total {size} bytes" in refused.stderr and "--max-size 4194304 bytes" in refused.stderr
    assert code == 1
    assert f"total {size} bytes" in "".join(recv.err_lines)
    assert leftovers(tmp_path) == []


def test_max_size_lets_a_session_of_that_size_in(tmp_path: Path, image: Path) -> None:
    recv = Recv(tmp_path, "--max-size", "8M")
    try:
        sent = send(image, recv.port)
        code, _ = recv.finish()
    finally:
        recv.kill()
    assert sent.returncode == 0 and code == 0


def test_a_receiver_on_a_non_loopback_address_without_tls_warns(tmp_path: Path, creds: dict[str, Path]) -> None:
    def stderr_of(*args: str) -> str:
        proc = subprocess.Popen(
            [*MFDCOMP, "recv", "--listen", "tcp:0.0.0.0:0", "--out", str(tmp_path / "x.img"), *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stderr is not None
        first = proc.stderr.readline()
        time.sleep(0.3)
        proc.terminate()
        rest = proc.stderr.read()  # not communicate(timeout=...): it reads the fd, past what readline buffered
        proc.wait(DEADLINE)
        return first + rest

    assert "TLS is off" in stderr_of()
    assert "TLS is off" not in stderr_of("--tls-creds", str(creds["good"]))


# Hostile TLS peers against a real Incoming (in this process, to check the session is unaffected).


class TlsDestination:
    def __init__(self, creds: Path, handshake_timeout: float = 2.0, idle_timeout: float | None = None) -> None:
        self.listener = listen(parse_address("tcp:127.0.0.1:0"), idle_timeout=idle_timeout)
        self.address = parse_address(self.listener.address)
        self.targets = AnonymousTargets()
        self.incoming = Incoming(
            self.listener,
            make_targets=self.targets,
            digests=self.targets.digests,
            find_codec=get_codec,
            handshake_timeout=handshake_timeout,
            tls=TlsServer.load(creds, ["mfdcomp-source"]),
        )
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.outcome["result"] = self.incoming.run()
        except BaseException as exc:
            self.outcome["error"] = exc

    def stranger(self) -> socket.socket:
        assert self.address.port is not None
        return socket.create_connection(("127.0.0.1", self.address.port))

    def dropped_within(self, count: int, within: float) -> list[str]:
        end = time.monotonic() + within
        while time.monotonic() < end:
            with self.incoming.state.cond:
                dropped = list(self.incoming.dropped)
            if len(dropped) >= count:
                return dropped
            time.sleep(0.02)
        raise AssertionError(f"only {self.incoming.dropped} dropped within {within} s")

    def migrate(self, creds: Path) -> Any:
        tls = TlsClient.load(creds)
        with RamClient.anonymous([("ram0", 2 << 20)]) as ram:
            fill_mixed(ram)
            options = MigrateOptions(channels=2, rounds=2, dirty_fraction=0.3, result_timeout=8.0)
            return migrate(ram, lambda: tls.connect(self.address), get_codec("zstd"), options)

    def join(self) -> Any:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()
        self.targets.close()
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["result"]


@pytest.fixture
def dest(creds: dict[str, Path]) -> Iterator[TlsDestination]:
    destination = TlsDestination(creds["good"])
    yield destination
    if destination.thread.is_alive():
        from mfdcomp.errors import ChannelError

        destination.incoming.state.fail(ChannelError("the test ended"))
        destination.thread.join(DEADLINE)


def client_hello() -> bytes:
    """A real TLS ClientHello, as OpenSSL writes it."""
    context = ssl.create_default_context()
    outgoing = ssl.MemoryBIO()
    obj = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def finish(dest: TlsDestination, creds: dict[str, Path]) -> None:
    result = dest.migrate(creds["good"])
    assert result.ok
    assert dest.join().ok


def test_garbage_before_the_handshake_is_dropped(dest: TlsDestination, creds: dict[str, Path]) -> None:
    with dest.stranger() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        (why,) = dest.dropped_within(1, 5.0)
        assert "not a TLS connection" in why
        finish(dest, creds)


def test_garbage_during_the_handshake_is_dropped(dest: TlsDestination, creds: dict[str, Path]) -> None:
    hello = client_hello()
    with dest.stranger() as sock:
        # A whole record, its headers intact and its ClientHello body garbage: OpenSSL parses it and fails.
        sock.sendall(hello[:9] + random.Random(1).randbytes(len(hello) - 9))
        (why,) = dest.dropped_within(1, 5.0)
        assert "TLS refused" in why and "handshake failed" in why, why
        finish(dest, creds)


def test_a_handshake_that_never_finishes_ends_at_the_handshake_deadline(
    dest: TlsDestination, creds: dict[str, Path]
) -> None:
    hello = client_hello()
    started = time.monotonic()
    with dest.stranger() as sock:
        sock.sendall(hello[: len(hello) // 2])  # then silence
        (why,) = dest.dropped_within(1, 5.0)
        assert "no complete" in why and "handshake within" in why
        assert 1.5 < time.monotonic() - started < 5.0
        finish(dest, creds)


def test_a_handshake_that_never_finishes_ends_at_the_idle_timeout(creds: dict[str, Path]) -> None:
    dest = TlsDestination(creds["good"], handshake_timeout=30.0, idle_timeout=1.0)
    hello = client_hello()
    with dest.stranger() as sock:
        sock.sendall(hello[:10])
        (why,) = dest.dropped_within(1, 5.0)
        assert "TLS" in why
        finish(dest, creds)


def test_a_peer_that_drops_after_authenticating_is_dropped(dest: TlsDestination, creds: dict[str, Path]) -> None:
    tls = TlsClient.load(creds["good"])
    stream = tls.connect(dest.address)
    stream.close()
    (why,) = dest.dropped_within(1, 5.0)
    assert "before its magic" in why
    finish(dest, creds)


def test_a_foreign_ca_client_is_told_and_dropped(dest: TlsDestination, creds: dict[str, Path]) -> None:
    with pytest.raises(TlsError, match="certificate was refused"):
        TlsClient.load(creds["other-ca"]).connect(dest.address)
    finish(dest, creds)


@pytest.mark.parametrize("seed", range(12))
def test_fuzzed_client_hellos_are_dropped_and_the_session_goes_on(
    dest: TlsDestination, creds: dict[str, Path], seed: int
) -> None:
    rng = random.Random(seed)
    hello = bytearray(client_hello())
    for _ in range(rng.randint(1, 8)):
        hello[rng.randrange(1, len(hello))] = rng.randrange(256)  # byte 0 kept: it reaches the TLS parser
    cut = rng.randint(5, len(hello))
    with dest.stranger() as sock:
        sock.sendall(bytes(hello[:cut]))
        sock.shutdown(socket.SHUT_WR)
        (why,) = dest.dropped_within(1, 5.0)
        assert "TLS" in why or "handshake" in why
        finish(dest, creds)


def test_plain_send_still_works_without_tls(tmp_path: Path) -> None:
    """TLS is opt-in: the plain path is unchanged."""
    listener = listen(parse_address("tcp:127.0.0.1:0"))
    targets = AnonymousTargets()
    incoming = Incoming(listener, make_targets=targets, digests=targets.digests, find_codec=get_codec)
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(r=incoming.run()), daemon=True)
    thread.start()
    address = parse_address(listener.address)
    with RamClient.anonymous([("ram0", 1 << 20)]) as ram:
        fill_mixed(ram)
        result = migrate(ram, lambda: connect(address), get_codec("none"), MigrateOptions(channels=1))
    thread.join(DEADLINE)
    targets.close()
    assert result.ok and box["r"].ok


def test_the_bench_runs_mfdcomp_and_qemu_with_tls(tmp_path: Path, creds: dict[str, Path]) -> None:
    """bench --tls: both ends of mfdcomp's cell get --tls-creds, and QEMU's baseline migrates with TLS."""
    from mfdcomp.bench.images import ensure_image
    from mfdcomp.bench.procs import ChildFailed
    from mfdcomp.bench.qemu import add_qemu_run, qemu_baseline, qemu_unavailable
    from mfdcomp.bench.transfer import Endpoints, parse_codecs, transfer

    image = ensure_image(tmp_path, "mixed", 16 << 20)
    codec = parse_codecs("none")[0]
    ends = Endpoints("tcp:127.0.0.1:0", tls_creds=str(creds["good"]))
    run = transfer(Path(image.path), codec, 2, ends, tmp_path)
    assert run.guest_bytes == 16 << 20
    # Expired certificates fail the cell: the TLS row really runs TLS.
    with pytest.raises(ChildFailed, match="expired"):
        transfer(Path(image.path), codec, 2, dataclasses.replace(ends, tls_creds=str(creds["expired"])), tmp_path)
    if qemu_unavailable() is not None:
        pytest.skip(f"QEMU: {qemu_unavailable()}")
    baseline = qemu_baseline(image, codec, 2)
    add_qemu_run(baseline, image, "tcp", tls=True)
    assert baseline.not_run is None and len(baseline.seconds_runs) == 1


def test_the_tls_bench_pump_runs_under_tls(tmp_path: Path, creds: dict[str, Path]) -> None:
    """bench --tls holds nocomp against a pump under TLS as well: the pump really handshakes."""
    from mfdcomp.bench.images import ensure_image
    from mfdcomp.bench.procs import ChildFailed
    from mfdcomp.bench.transfer import pump_run

    image = Path(ensure_image(tmp_path, "mixed", 16 << 20).path)
    assert pump_run(image, "tcp", 2, tmp_path, str(creds["good"])) > 0
    # Expired certificates end the pump (both ends refuse them), in bounded time.
    with pytest.raises(ChildFailed, match=r"(?i)certificate"):
        pump_run(image, "tcp", 2, tmp_path, str(creds["expired"]))


def test_anonymous_targets_beyond_mem_available_are_refused_on_both_ends(tmp_path: Path) -> None:
    """Was: the shared anonymous mapping was made lazily, whatever size the SESSION announced."""
    from mfdcomp.errors import NoSpaceError
    from mfdcomp.procinfo import kib_field
    from tests.test_hostile_peer import Peer, refused

    available = kib_field("/proc/meminfo", "MemAvailable")
    if available is None:
        pytest.skip("no MemAvailable in /proc/meminfo")
    size = (available + (1 << 30)) // (1 << 20) * (1 << 20)
    peer = Peer(tmp_path, blocks=[("ram0", size)])  # a hand-driven source: only its SESSION announces the size
    error = refused(peer, NoSpaceError, text=f"{size} bytes needed")
    assert isinstance(error, NoSpaceError) and error.needed == size
    assert f"{size} bytes needed" in peer.main_text  # the source hears the sizes
    assert peer.targets.clients == []  # nothing was mapped

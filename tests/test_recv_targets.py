"""The receiver's target files: written beside --out, renamed only when verified, never shared, never a SIGBUS.

Real processes throughout: ``mfdcomp recv`` and ``mfdcomp send`` as child
processes, or ``recv`` against a hand-driven source (a real main channel on a
unix socket, crafted messages). Small filesystems are tmpfs mounts made for
the test (root; skipped with the reason where refused).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_image
from hypothesis import given
from hypothesis import strategies as st

from mfdcomp.cli.recv_cmd import block_file_name, target_paths
from mfdcomp.clients.ram import RamClient, block_digest
from mfdcomp.engine import mainchannel as mc
from mfdcomp.errors import ImageError, TargetError

MFDCOMP = [sys.executable, "-m", "mfdcomp"]
PS = 4096
MiB = 1 << 20


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Temporary files of mfdcomp left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part") or ".mfdcomp-" in p.name)


# --- small filesystems -------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB tmpfs."""
    where = tmp_path / f"tmpfs-{uuidlib.uuid4().hex[:6]}"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("not root: cannot mount a tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(where)], capture_output=True)
    if done.returncode:
        pytest.skip(f"mount refused: {done.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


# --- processes ---------------------------------------------------------------------------------


class Recv:
    """``mfdcomp recv`` in a child process on a unix socket, started and listening."""

    def __init__(self, tmp_path: Path, out: Path, *extra: str) -> None:
        # In /tmp, not tmp_path: a unix socket's path must stay under 108 bytes.
        self.sock = Path("/tmp") / f"mfdcomp-recv-{uuidlib.uuid4().hex[:8]}.sock"
        self.proc = subprocess.Popen(
            [*MFDCOMP, "recv", "--listen", f"unix:{self.sock}", "--out", str(out), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert "listening on" in line, line + self.proc.stderr.read()

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.sock.unlink(missing_ok=True)
        return self.proc.returncode, out, err


def send(sock: Path, *images: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MFDCOMP, "send", *images, "--to", f"unix:{sock}", "--multifd-channels", "2", *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


class Source:
    """A hand-driven source: the main channel's opening and SESSION, then whatever a test sends."""

    def __init__(self, sock: Path, blocks: list[tuple[str, int]], codec: str = "none") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(sock))
        session = mc.Session(
            uuid=uuidlib.uuid4().hex, page_size=PS, channels=1, codec=codec, level=None,
            zero_page_detection="multifd", blocks=blocks,
        )  # fmt: skip
        self.sock.sendall(mc.opening() + mc.encode(mc.Message.SESSION, session.to_json()))

    def read(self) -> tuple[int, bytes] | None:
        head = self._exact(mc.MESSAGE.size)
        if head is None:
            return None
        kind, length = mc.MESSAGE.unpack(head)
        return kind, self._exact(length) or b""

    def _exact(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


# --- source images -----------------------------------------------------------------------------


def test_a_directory_as_image_is_a_typed_error(tmp_path: Path) -> None:
    adir = tmp_path / "adir"
    adir.mkdir()
    with pytest.raises(ImageError, match=r"adir is a directory, not a memory image"):
        RamClient.from_images([str(adir)])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=r"fifo is a FIFO, not a memory image"):
        RamClient.from_images([f"x={fifo}"])  # and no wait for a writer
    with pytest.raises(ImageError, match=r"/dev/null is a character device, not a memory image"):
        RamClient.from_images(["/dev/null"])


def test_send_of_a_directory_says_so(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    done = send(tmp_path / "nobody.sock", str(tmp_path / "adir"))
    assert done.returncode == 1
    assert "adir is a directory, not a memory image" in done.stderr and "Traceback" not in done.stderr, done.stderr


# --- success: renamed over --out, nothing else left --------------------------------------------


def test_a_verified_transfer_replaces_out_and_leaves_no_part_file(tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "8M", seed=11)
    out = tmp_path / "dst" / "out.img"
    out.parent.mkdir()
    out.write_bytes(b"old")
    recv = Recv(tmp_path, out, "--multifd-compression", "none")
    sent = send(recv.sock, str(image))
    code, stdout, err = recv.finish()
    assert code == 0 and sent.returncode == 0, err + sent.stderr
    assert sha(out) == sha(image) and f"xxh3-128 {block_digest(memoryview(image.read_bytes()), 'xxh3-128')}" in stdout
    assert leftovers(out.parent) == []


# --- failures: --out untouched, no .part left -------------------------------------------------


def test_a_peer_error_leaves_an_existing_out_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out.img"
    out.write_bytes(b"precious")
    recv = Recv(tmp_path, out)
    source = Source(recv.sock, [("ram0", 4 * MiB)])
    assert source.read() == (mc.Message.READY, b"")
    assert len(leftovers(tmp_path)) == 1  # the target exists, beside --out, under a temporary name
    source.sock.sendall(mc.encode(mc.Message.ERROR, b"the guest went away"))
    code, _, err = recv.finish()
    source.close()
    assert code == 1 and "source: the guest went away" in err, err
    assert out.read_bytes() == b"precious"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signalled_receiver_leaves_no_image(tmp_path: Path, sig: signal.Signals) -> None:
    """Mid-session (targets made, source waiting): Ctrl-C and SIGTERM remove the .part file; SIGKILL cannot."""
    out = tmp_path / "out.img"
    out.write_bytes(b"precious")
    recv = Recv(tmp_path, out)
    source = Source(recv.sock, [("ram0", 4 * MiB)])
    assert source.read() == (mc.Message.READY, b"")
    recv.proc.send_signal(sig)
    code, _, err = recv.finish()
    told = source.read()
    source.close()
    assert out.read_bytes() == b"precious"
    if sig is signal.SIGKILL:
        assert code == -signal.SIGKILL
        # No clean-up is possible: the temporary file stays, under its .part name, never as --out.
        assert len(leftovers(tmp_path)) == 1 and leftovers(tmp_path)[0].endswith(".part")
        return
    assert code == 128 + sig and "Traceback" not in err, err
    assert leftovers(tmp_path) == []
    assert "interrupted" in err
    assert told is not None and told[0] == mc.Message.ERROR and b"interrupted" in told[1]
    if sig is signal.SIGTERM:
        assert "SIGTERM" in err


def test_a_mapped_ram_load_that_fails_verification_leaves_out_untouched(tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "8M", seed=12)
    saved = tmp_path / "saved.mr"
    done = subprocess.run([*MFDCOMP, "send", str(image), "--to", f"file:{saved}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out" / "dst.img"
    out.parent.mkdir()
    good = subprocess.run(
        [*MFDCOMP, "recv", "--listen", f"file:{saved}", "--out", str(out)], capture_output=True, text=True
    )
    assert good.returncode == 0 and sha(out) == sha(image), good.stderr
    out.write_bytes(b"precious")
    # A byte changed in every MiB of the pages (past the header and bitmap, before the manifest at the end).
    with saved.open("r+b") as file:
        for offset in range(MiB, saved.stat().st_size - MiB, MiB):
            file.seek(offset)
            byte = file.read(1)
            file.seek(offset)
            file.write(bytes([byte[0] ^ 0xFF]))
    bad = subprocess.run(
        [*MFDCOMP, "recv", "--listen", f"file:{saved}", "--out", str(out)], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "DIFFERS from the source" in bad.stdout, bad.stdout + bad.stderr
    assert out.read_bytes() == b"precious"
    assert leftovers(out.parent) == []


# --- --out checked before listening -----------------------------------------------------------


def test_a_missing_out_directory_is_refused_before_listening(tmp_path: Path) -> None:
    sock = tmp_path / "r.sock"
    done = subprocess.run(
        [*MFDCOMP, "recv", "--listen", f"unix:{sock}", "--out", str(tmp_path / "nowhere" / "dst.img")],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "nowhere does not exist" in done.stderr, done.stderr
    assert "listening" not in done.stderr and not sock.exists()


def test_a_read_only_out_directory_is_refused_before_listening(tmp_path: Path) -> None:
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("not root: cannot mount a read-only tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"mount refused: {mounted.stderr.decode().strip()}")
    try:
        done = subprocess.run(
            [*MFDCOMP, "recv", "--listen", f"unix:{tmp_path / 'r.sock'}", "--out", str(where / "dst.img")],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
    assert done.returncode == 1 and "cannot create files in" in done.stderr, done.stderr
    assert "Read-only file system" in done.stderr and "listening" not in done.stderr


def test_one_block_into_an_existing_directory_is_refused_and_the_directory_untouched(tmp_path: Path) -> None:
    out = tmp_path / "adir"
    out.mkdir()
    (out / "keep").write_text("mine")
    recv = Recv(tmp_path, out)
    source = Source(recv.sock, [("ram0", MiB)])
    told = source.read()
    code, _, err = recv.finish()
    source.close()
    assert code == 1 and "is a directory" in err, err
    assert told is not None and told[0] == mc.Message.ERROR and b"is a directory" in told[1]
    assert sorted(p.name for p in out.iterdir()) == ["keep"]


# --- block names -> file names ----------------------------------------------------------------


@given(st.lists(st.text(min_size=1, max_size=20).filter(lambda n: "\0" not in n), min_size=2, max_size=6, unique=True))
def test_block_file_names_are_distinct_and_stay_inside_out(names: list[str]) -> None:
    out = Path("/srv/out")
    paths = target_paths(out, [(name, PS) for name in names])
    assert len(set(paths.values())) == len(names)
    for path in paths.values():
        assert path.parent == out and not path.name.startswith(".") and "/" not in path.name


@pytest.mark.parametrize(
    ("names", "files"),
    [
        (["x", "_x", "x_"], ["x.img", "_x.img", "x_.img"]),
        (["a/b", "a_b", "a%2Fb"], ["a%2Fb.img", "a_b.img", "a%252Fb.img"]),
        (["..", ".", "../../etc/passwd"], ["%2E..img", "%2E.img", "%2E.%2F..%2Fetc%2Fpasswd.img"]),
        (["pc.ram", "0000:00:02.0/vga.vram"], ["pc.ram.img", "0000:00:02.0%2Fvga.vram.img"]),
    ],
)
def test_block_file_names(names: list[str], files: list[str]) -> None:
    assert [block_file_name(name) for name in names] == files


def test_a_block_name_too_long_for_a_file_name_is_refused() -> None:
    with pytest.raises(TargetError, match="makes a file name of 769 bytes"):
        block_file_name("/" * 255)


def test_blocks_that_would_share_a_file_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"ramblocks 'a' and 'b' would both be written to .*same\.img"):
        RamClient.create_targets([("a", PS), ("b", PS)], lambda name: tmp_path / "same.img", staged=True)
    assert list(tmp_path.iterdir()) == []


def test_blocks_with_colliding_names_of_old_each_get_their_own_file(tmp_path: Path) -> None:
    """``x`` and ``_x`` (and ``..``, ``.x``) from a real sender: each block lands in its own file, intact."""
    images = {
        name: make_image(tmp_path / f"src{i}.img", "1M", seed=20 + i) for i, name in enumerate(["x", "_x", "..", ".x"])
    }
    out = tmp_path / "dst"
    recv = Recv(tmp_path, out)
    sent = send(recv.sock, *(f"{name}={path}" for name, path in images.items()))
    code, _, err = recv.finish()
    assert code == 0 and sent.returncode == 0, err + sent.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(block_file_name(name) for name in images)
    for name, path in images.items():
        assert sha(out / block_file_name(name)) == sha(path), name


def test_a_hostile_session_with_path_names_writes_only_inside_out(tmp_path: Path) -> None:
    out = tmp_path / "dst"
    recv = Recv(tmp_path, out)
    source = Source(recv.sock, [("../escaped", MiB), ("/tmp/abs", MiB), ("a/b", MiB), ("a_b", MiB)])
    assert source.read() == (mc.Message.READY, b"")
    parts = leftovers(out)
    assert len(parts) == 4, parts  # four distinct targets, all inside --out
    source.sock.sendall(mc.encode(mc.Message.ERROR, b"bye"))
    code, _, err = recv.finish()
    source.close()
    assert code == 1, err
    assert not out.exists()  # made for this session, removed with its targets
    assert list(tmp_path.iterdir()) == []


# --- room ------------------------------------------------------------------------------------------


def test_blocks_that_fit_one_by_one_but_not_together_are_refused_before_any_write(tmpfs: Path, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.img", "30M", seed=31)
    b = make_image(tmp_path / "b.img", "30M", seed=32)
    recv = Recv(tmp_path, tmpfs / "dst")
    sent = send(recv.sock, f"a={a}", f"b={b}")
    code, _, err = recv.finish()
    assert code == 1, f"receiver ended with {code} (a negative code is a signal): {err}"
    assert "no room for targets" in err and f"{60 * MiB} bytes needed" in err, err
    assert sent.returncode != 0 and "destination: no room for targets" in sent.stderr, sent.stderr
    assert list(tmpfs.iterdir()) == []
    assert os.statvfs(tmpfs).f_bfree == os.statvfs(tmpfs).f_blocks  # nothing holds the space


FILL_THEN_WRITE = """
import sys
from pathlib import Path
from mfdcomp.clients.ram import RamClient, block_digest

fs = Path(sys.argv[1])
with RamClient.create_targets([("ram0", 30 << 20)], lambda _: fs / "dst.img") as ram:
    # Another writer takes every free byte of the filesystem after the target was made.
    with open(fs / "other", "wb") as other:
        try:
            while True:
                other.write(b"\\1" * (1 << 20))
                other.flush()
        except OSError:
            pass
    memory = ram.blocks["ram0"].memory
    for start in range(0, len(memory), 4096):
        memory[start] = 7
print("written")
"""


def test_a_filesystem_filled_after_the_targets_were_made_cannot_cause_sigbus(tmpfs: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FILL_THEN_WRITE, str(tmpfs)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"ended with {done.returncode} (-7 is SIGBUS): {done.stderr}"
    assert "written" in done.stdout
    assert (tmpfs / "dst.img").stat().st_size == 30 << 20


# --- codec --------------------------------------------------------------------------------------


def test_recv_refuses_a_sender_with_another_codec_on_both_ends(tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "2M", seed=41)
    out = tmp_path / "dst.img"
    recv = Recv(tmp_path, out, "--multifd-compression", "zlib")
    sent = send(recv.sock, str(image))
    code, _, err = recv.finish()
    assert code == 1 and "the source uses multifd compression 'none'; this destination accepts only 'zlib'" in err, err
    assert sent.returncode != 0 and "destination: the source uses multifd compression 'none'" in sent.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_recv_with_the_same_codec_accepts_it(tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "2M", seed=42)
    out = tmp_path / "dst.img"
    recv = Recv(tmp_path, out, "--multifd-compression", "zlib")
    sent = send(recv.sock, str(image), extra=("--multifd-compression", "zlib"))
    code, _, err = recv.finish()
    assert code == 0 and sent.returncode == 0, err + sent.stderr
    assert sha(out) == sha(image)


def test_recv_refuses_an_unknown_codec_before_listening(tmp_path: Path) -> None:
    done = subprocess.run(
        [*MFDCOMP, "recv", "--listen", f"unix:{tmp_path / 'r.sock'}", "--out", str(tmp_path / "d.img"),
         "--multifd-compression", "nosuch"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "no codec named 'nosuch'" in done.stderr, done.stderr


def test_a_staged_target_that_is_never_committed_is_removed(tmp_path: Path) -> None:
    final = tmp_path / "t.img"
    with RamClient.create_targets([("ram0", PS)], lambda _: final, staged=True) as ram:
        block = ram.blocks["ram0"]
        assert (
            block.path is not None and block.path.parent == tmp_path and block.path.name.startswith(".t.img.mfdcomp-")
        )
        assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_two_receivers_on_one_out_never_share_a_file(tmp_path: Path) -> None:
    """Issue 20.2: a second recv to the same --out truncated the first one's mapped file (SIGBUS).

    Each receiver now writes its own .part file: while the first holds its session, the second's
    transfer completes and replaces --out, and the first's file is untouched, then removed when its
    source goes away.
    """
    image = make_image(tmp_path / "src.img", "8M", seed=21)
    out = tmp_path / "dst" / "out.img"
    out.parent.mkdir()
    first = Recv(tmp_path, out)
    source = Source(first.sock, [("ram0", 8 * MiB)])
    assert source.read() == (mc.Message.READY, b"")  # the first receiver's target exists now
    held = leftovers(out.parent)
    assert len(held) == 1 and held[0].endswith(".part"), held
    second = Recv(tmp_path, out)
    sent = send(second.sock, str(image))
    code, _, err = second.finish()
    assert code == 0 and sent.returncode == 0, err + sent.stderr
    assert sha(out) == sha(image)
    assert leftovers(out.parent) == held  # the first receiver's file is its own, still there
    source.close()
    code, _, err = first.finish()
    assert code == 1 and "Traceback" not in err, err  # its source went away: an error, not a signal
    assert sha(out) == sha(image) and leftovers(out.parent) == []

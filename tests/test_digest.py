"""The verification's digest (issue 18.2): negotiated in the SESSION, checked strictly per algorithm."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import blake3
import numpy as np
import pytest
import xxhash

from mfdcomp.clients.ram import DIGEST_HEX, DIGESTS, RamClient, block_digest, check_digest_available
from mfdcomp.engine import mainchannel as mc
from mfdcomp.engine.migrate import MigrateOptions
from mfdcomp.errors import MfdcompError, WireError
from mfdcomp.registry import get_codec
from mfdcomp.testing import run_loopback

SIZE = 4 << 20


def _filled(ram: RamClient) -> bytes:
    memory = np.frombuffer(ram.blocks["ram0"].memory, dtype=np.uint8)
    memory[: SIZE // 2] = np.random.default_rng(5).integers(0, 256, SIZE // 2, dtype=np.uint8)
    return bytes(memory)


@pytest.mark.parametrize("algorithm", DIGESTS)
def test_both_ends_verify_with_the_sources_digest(tmp_path: Path, algorithm: str) -> None:
    with RamClient.anonymous([("ram0", SIZE)]) as ram:
        data = _filled(ram)
        options = MigrateOptions(channels=2, digest=algorithm, rounds=2, dirty_fraction=0.1)
        outcome = run_loopback(ram, get_codec("none"), options, workdir=tmp_path)
        outcome.raise_for_errors()
        data = bytes(ram.blocks["ram0"].memory)  # after the dirty round
    assert outcome.source is not None and outcome.destination is not None
    expected = _whole(data, algorithm)
    assert outcome.source.digest == algorithm and outcome.destination.session.digest == algorithm
    assert outcome.destination.digests == outcome.destination.source_digests == {"ram0": expected}
    assert outcome.source.destination["digest"] == algorithm
    assert outcome.source.as_dict()["digest"] == algorithm


def _whole(data: bytes, algorithm: str) -> str:
    """The digest of a whole image, computed here without mfdcomp."""
    if algorithm == "sha256":
        return hashlib.sha256(data).hexdigest()
    if algorithm == "blake3":
        return blake3.blake3(data).hexdigest()
    pages = b"".join(xxhash.xxh3_128_digest(data[i : i + 4096]) for i in range(0, len(data), 4096))
    return xxhash.xxh3_128_hexdigest(pages)


def test_blake3_of_a_block_larger_than_one_piece_is_the_whole_blocks() -> None:
    data = np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    assert block_digest(memoryview(data), "blake3") == blake3.blake3(data).hexdigest()
    assert block_digest(memoryview(data), "sha256") == hashlib.sha256(data).hexdigest()


def test_an_unknown_digest_is_refused_before_anything_runs() -> None:
    with pytest.raises(MfdcompError, match="unknown digest 'md5'"):
        check_digest_available("md5")
    with pytest.raises(MfdcompError, match="unknown digest"):
        MigrateOptions(digest="md5")


# --- the main channel's version and the SESSION ----------------------------------------------------------------


def test_sha256_sessions_open_as_version_2_so_older_destinations_take_them() -> None:
    assert mc.OPENING.unpack(mc.opening("sha256")) == (mc.MAIN_MAGIC, 2)
    assert mc.OPENING.unpack(mc.opening("blake3")) == (mc.MAIN_MAGIC, 3)
    assert mc.check_opening(mc.opening("sha256")) == 2 and mc.check_opening(mc.opening("blake3")) == 3


@pytest.mark.parametrize("version", [1, 4, 0xFFFFFFFF])
def test_another_main_channel_version_is_a_clear_error(version: int) -> None:
    with pytest.raises(WireError, match=f"main-channel version {version}, this mfdcomp 2 and 3") as caught:
        mc.check_opening(mc.OPENING.pack(mc.MAIN_MAGIC, version))
    assert caught.value.field == "version"


def _session(**changes: object) -> bytes:
    data = {
        "uuid": "00" * 16, "page_size": 4096, "channels": 2, "codec": "none", "level": None,
        "zero_page_detection": "multifd", "blocks": [["ram0", 1 << 20]],
    } | changes  # fmt: skip
    return json.dumps(data).encode()


def test_a_version_2_session_names_no_digest_and_means_sha256() -> None:
    assert mc.Session.from_json(_session()).digest == "sha256"
    assert mc.Session.from_json(_session(digest="blake3")).digest == "blake3"


@pytest.mark.parametrize("digest", ["md5", "BLAKE3", "", 3, None, ["blake3"]])
def test_a_session_with_another_digest_is_refused(digest: object) -> None:
    with pytest.raises(WireError, match="session digest must be one of sha256, blake3") as caught:
        mc.Session.from_json(_session(digest=digest))
    assert caught.value.field == "digest"


# --- DIGESTS: the session's algorithm, each digest its length in lowercase hex ---------------------------------


def test_digests_of_the_sessions_algorithm_are_taken() -> None:
    hexes = {"ram0": "ab" * 32}
    assert mc.decode_digests(mc.encode_digests(hexes, "blake3")[mc.MESSAGE.size :], "blake3") == hexes
    # A version-2 source's body names no algorithm: sha256.
    assert mc.decode_digests(json.dumps({"digests": hexes}).encode(), "sha256") == hexes


@pytest.mark.parametrize(
    ("body", "session"),
    [
        ({"digests": {"ram0": "ab" * 32}, "digest": "sha256"}, "blake3"),  # a mismatch with the session
        ({"digests": {"ram0": "ab" * 32}}, "blake3"),  # none named is sha256's, not the session's
        ({"digests": {"ram0": "ab" * 32}, "digest": "blake3"}, "sha256"),
        ({"digests": {"ram0": "ab" * 32}, "digest": ["blake3"]}, "blake3"),
    ],
)
def test_digests_of_another_algorithm_are_refused(body: dict[str, object], session: str) -> None:
    with pytest.raises(WireError, match=f"not the session's {session}") as caught:
        mc.decode_digests(json.dumps(body).encode(), session)
    assert caught.value.field == "digest"


@pytest.mark.parametrize("algorithm", DIGESTS)
@pytest.mark.parametrize("wrong", ["one short", "one long", "upper case", "not hex", "a number", "null"])
def test_a_digest_not_its_algorithms_hex_is_refused(algorithm: str, wrong: str) -> None:
    width = DIGEST_HEX[algorithm]
    value = {
        "one short": "ab" * (width // 2 - 1),
        "one long": "ab" * (width // 2 + 1),
        "upper case": "AB" * (width // 2),
        "not hex": "zz" * (width // 2),
        "a number": 7,
        "null": None,
    }[wrong]
    body = json.dumps({"digests": {"ram0": value}, "digest": algorithm}).encode()
    with pytest.raises(WireError, match=f"{algorithm} digest of block 'ram0' is not {width} hex digits"):
        mc.decode_digests(body, algorithm)


# --- the command line: the last line names the digest ---------------------------------------------------------


@pytest.mark.parametrize("algorithm", [None, "sha256"])
def test_recv_and_send_name_the_digest(tmp_path: Path, algorithm: str | None) -> None:
    image = tmp_path / "src.img"
    image.write_bytes(np.random.default_rng(2).integers(0, 256, 2 << 20, dtype=np.uint8).tobytes())
    sock = tmp_path / "mfd.sock"
    mfdcomp = [sys.executable, "-m", "mfdcomp"]
    recv = subprocess.Popen(
        [*mfdcomp, "recv", "--listen", f"unix:{sock}", "--out", str(tmp_path / "dst.img")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert recv.stderr is not None
        while "listening on" not in recv.stderr.readline():
            assert recv.poll() is None, "recv ended before listening"
        chosen = [] if algorithm is None else ["--digest", algorithm]
        sent = subprocess.run(
            [*mfdcomp, "send", str(image), "--to", f"unix:{sock}", *chosen],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        stdout, _ = recv.communicate(timeout=60)
    finally:
        recv.kill()
    assert sent.returncode == 0 and recv.returncode == 0, sent.stderr
    data = image.read_bytes()
    algorithm = algorithm or "xxh3-128"  # the default
    expected = f"{algorithm} {_whole(data, algorithm)}"
    assert stdout.strip().splitlines()[-1] == expected
    assert f"{expected} ram0" in sent.stdout

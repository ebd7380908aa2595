"""mfdcomp's own main channel between two mfdcomp ends (sans-IO framing).

QEMU's main stream is QEMU's business; between two mfdcomp ends the main
connection carries this control stream instead. It opens with MAIN_MAGIC so
the destination tells it from multifd channels by peeking 4 bytes, as QEMU
does with "QEVM". Then messages: u8 type, u32 body length, body (all
big-endian).
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import asdict, dataclass
from typing import Any

from mfdcomp.clients.ram import DIGEST_HEX, DIGESTS, MIN_PAGE_SIZE
from mfdcomp.errors import WireError
from mfdcomp.wire.constants import MULTIFD_PACKET_SIZE, RAMBLOCK_NAME_LEN

MAIN_MAGIC = 0x4D46444D  # "MFDM"
MAIN_VERSION = 3  # 2: READY before the channels connect; 3: the SESSION names the digest
# A source verifying by sha256 opens with 2, so that a destination of version 2 (which knows only sha256) takes it.
SHA256_VERSION = 2
MAIN_VERSIONS = (SHA256_VERSION, MAIN_VERSION)
OPENING = struct.Struct(">II")
MESSAGE = struct.Struct(">BI")
ZERO_HEADER = struct.Struct(">H")  # block name length; name and u64 offsets follow
# Bounds every body before it is read: a session with thousands of blocks
# fits, a hostile length does not.
MAX_BODY = 16 << 20


class Message(enum.IntEnum):
    SESSION = 1  # source → destination: Session as JSON
    ZERO = 2  # legacy zero pages: block name, offsets
    FLUSH = 3  # end of a round: channels synced up to here
    EOS = 4  # end of stream: every page has been sent
    ERROR = 5  # either way: the first error's text, UTF-8
    RESULT = 6  # destination → source: outcome as JSON
    DIGESTS = 7  # source → destination after EOS: per-block digests (the session's algorithm) as JSON
    READY = 8  # destination → source: session accepted, target memory made; channels may connect


@dataclass(frozen=True, slots=True)
class Session:
    """Everything the destination must know before the first page."""

    uuid: str
    page_size: int
    channels: int
    codec: str
    level: int | None
    zero_page_detection: str
    blocks: list[tuple[str, int]]
    digest: str = "sha256"  # the verification's algorithm (version 3); a version-2 source sends none: sha256

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, body: bytes) -> Session:
        """A session from a peer or a file: every field checked for its exact JSON type and its bounds."""
        data = decode_json(Message.SESSION, body)
        try:
            page_size = _int(data, "page_size", MIN_PAGE_SIZE, MULTIFD_PACKET_SIZE)
            if page_size & (page_size - 1):
                raise WireError(
                    f"session page_size {page_size} is not a power of two", field="page_size", value=page_size
                )
            level = data["level"]
            return cls(
                uuid=_text(data, "uuid", MAX_TEXT),
                page_size=page_size,
                channels=_int(data, "channels", 1, 255),
                codec=_text(data, "codec", MAX_TEXT),
                level=None if level is None else _int(data, "level", -MAX_LEVEL, MAX_LEVEL),
                zero_page_detection=_choice(data, "zero_page_detection", ZERO_PAGE_MODES),
                blocks=_blocks(data["blocks"], page_size),
                digest=_choice(data, "digest", DIGESTS) if "digest" in data else "sha256",
            )
        except KeyError as exc:
            raise WireError(f"malformed session message: no {exc} field", field="session") from exc


# Bounds of a session's fields: what any real source sends fits with room to spare.
MAX_TEXT = 256
MAX_LEVEL = 1 << 20  # zstd's negative levels reach -131072
MAX_BLOCK_SIZE = 1 << 52  # 4 PiB
MAX_BLOCKS = 4096
ZERO_PAGE_MODES = ("none", "legacy", "multifd")


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _int(data: dict[str, Any], key: str, low: int, high: int) -> int:
    value = data[key]
    # bool is an int to Python, and 1e400 parses as a float inf: neither is a JSON integer here.
    if type(value) is not int:
        raise WireError(f"session {key} must be an integer, got {_describe(value)}", field=key, value=value)
    if not low <= value <= high:
        raise WireError(f"session {key} {value} is outside {low}..{high}", field=key, value=value, limit=high)
    return value


def _text(data: dict[str, Any], key: str, most: int) -> str:
    value = data[key]
    if type(value) is not str or not 0 < len(value) <= most:
        raise WireError(f"session {key} must be a string of 1-{most} characters, got {_describe(value)}", field=key)
    return value


def _choice(data: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = data[key]
    if type(value) is not str or value not in allowed:
        raise WireError(f"session {key} must be one of {', '.join(allowed)}, got {_describe(value)}", field=key)
    return value


def _blocks(value: object, page_size: int) -> list[tuple[str, int]]:
    if type(value) is not list or not 0 < len(value) <= MAX_BLOCKS:
        raise WireError(f"session blocks must be a list of 1-{MAX_BLOCKS} [name, size] pairs", field="blocks")
    blocks: list[tuple[str, int]] = []
    for item in value:
        if type(item) is not list or len(item) != 2:
            raise WireError(f"session block {_describe(item)} is not a [name, size] pair", field="blocks")
        name, size = item
        # The packet's ramblock field is NUL-terminated: 1-255 bytes of UTF-8 without NUL.
        try:
            encoded = name.encode() if type(name) is str else b""
        except UnicodeEncodeError:
            encoded = b""
        if not 0 < len(encoded) < RAMBLOCK_NAME_LEN or b"\0" in encoded:
            raise WireError(f"session block name {_describe(name)} is not 1-255 bytes of UTF-8", field="ramblock")
        if type(size) is not int or not 0 < size <= MAX_BLOCK_SIZE or size % page_size:
            raise WireError(
                f"session block {name!r} size {_describe(size)} is not a positive multiple of {page_size} "
                f"up to {MAX_BLOCK_SIZE}",
                field="size",
                value=size,
                limit=MAX_BLOCK_SIZE,
            )
        if any(name == other for other, _ in blocks):
            raise WireError(f"session names block {name!r} twice", field="ramblock", value=name)
        blocks.append((name, size))
    return blocks


def opening(digest: str = "sha256") -> bytes:
    """The main channel's first bytes: version 2 for a sha256 session (any mfdcomp since 2 takes it), else 3."""
    return OPENING.pack(MAIN_MAGIC, SHA256_VERSION if digest == "sha256" else MAIN_VERSION)


def check_opening(data: bytes) -> int:
    """The peer's main-channel version (2 or 3); a WireError for another magic or version."""
    magic, version = OPENING.unpack(data)
    assert isinstance(version, int)
    if magic != MAIN_MAGIC:
        raise WireError(
            f"not an mfdcomp main channel (magic 0x{magic:08x}, version {version})",
            field="magic",
            value=magic,
            limit=MAIN_MAGIC,
        )
    if version not in MAIN_VERSIONS:
        raise WireError(
            f"the peer speaks mfdcomp main-channel version {version}, this mfdcomp "
            f"{' and '.join(map(str, MAIN_VERSIONS))}: run the same mfdcomp on both ends",
            field="version",
            value=version,
            limit=MAIN_VERSION,
        )
    return version


def encode(kind: Message, body: bytes = b"") -> bytes:
    return MESSAGE.pack(kind, len(body)) + body


def encode_json(kind: Message, obj: Any) -> bytes:
    return encode(kind, json.dumps(obj).encode())


def decode_head(data: bytes) -> tuple[Message, int]:
    kind, length = MESSAGE.unpack(data)
    try:
        message = Message(kind)
    except ValueError as exc:
        if all(32 <= b < 127 or b in b"\r\n\t" for b in data):
            # Text where a message type should be: another protocol's server (HTTP, SSH...) on that address.
            excerpt = data.decode("ascii").encode("unicode_escape").decode()
            raise WireError(
                f"the peer is not an mfdcomp receiver: it did not answer with mfdcomp's main-channel messages, "
                f"its bytes look like text: '{excerpt}...' (another service listening on that address?)",
                field="type",
                value=kind,
            ) from exc
        raise WireError(
            f"unknown main-channel message type {kind} (bytes {data.hex(' ')}): the peer is not an mfdcomp "
            "of this main-channel version, or not mfdcomp at all",
            field="type",
            value=kind,
        ) from exc
    if length > MAX_BODY:
        raise WireError(
            f"main-channel {message.name} body of {length} bytes exceeds {MAX_BODY}",
            field="length",
            value=length,
            limit=MAX_BODY,
        )
    return message, length


def encode_zero(block: str, offsets: list[int]) -> bytes:
    name = block.encode()
    return encode(Message.ZERO, ZERO_HEADER.pack(len(name)) + name + struct.pack(f">{len(offsets)}Q", *offsets))


def decode_zero(body: bytes) -> tuple[str, tuple[int, ...]]:
    if len(body) < ZERO_HEADER.size:
        raise WireError("ZERO message too short", field="zero", value=len(body))
    (name_len,) = ZERO_HEADER.unpack_from(body)
    rest = len(body) - ZERO_HEADER.size - name_len
    if rest < 0 or rest % 8:
        raise WireError("ZERO message has a torn offset list", field="zero", value=len(body))
    try:
        name = body[ZERO_HEADER.size : ZERO_HEADER.size + name_len].decode()
    except UnicodeDecodeError as exc:
        raise WireError("ZERO message block name is not UTF-8", field="zero") from exc
    offsets = struct.unpack_from(f">{rest // 8}Q", body, ZERO_HEADER.size + name_len)
    return name, offsets


def decode_json(kind: Message, body: bytes) -> dict[str, Any]:
    """The JSON object of a SESSION, RESULT or DIGESTS body; anything else is a WireError."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: thousands of nested brackets
        raise WireError(f"malformed {kind.name} message: {exc}", field=kind.name) from exc
    if type(data) is not dict:
        raise WireError(f"{kind.name} message must be a JSON object, got {_describe(data)}", field=kind.name)
    return data


def encode_digests(digests: dict[str, str], algorithm: str) -> bytes:
    return encode_json(Message.DIGESTS, {"digests": digests, "digest": algorithm})


def decode_digests(body: bytes, algorithm: str = "sha256") -> dict[str, str]:
    """The source's per-block digests: ``{"digests": {name: hex}, "digest": algorithm}``.

    ``algorithm`` is the session's; a body naming another is refused (a version-2
    source names none: sha256), and each digest must be that algorithm's length in hex.
    """
    data = decode_json(Message.DIGESTS, body)
    named = data.get("digest", "sha256")
    if named != algorithm:
        raise WireError(
            f"the source's digests are {_describe(named)}, not the session's {algorithm}", field="digest", value=named
        )
    return check_digests(data.get("digests"), algorithm)


def check_digests(digests: object, algorithm: str = "sha256") -> dict[str, str]:
    """``digests`` if it maps block names to ``algorithm``'s hex digests (a peer's DIGESTS, a file's manifest)."""
    width = DIGEST_HEX[algorithm]
    if type(digests) is not dict or len(digests) > MAX_BLOCKS:
        raise WireError(f"DIGESTS message without a digests object, got {_describe(digests)}", field="digests")
    for name, value in digests.items():
        if type(value) is not str or len(value) != width or not set(value) <= set("0123456789abcdef"):
            raise WireError(
                f"{algorithm} digest of block {name!r} is not {width} hex digits: {_describe(value)}", field="digests"
            )
    return digests

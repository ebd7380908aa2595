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

from mfdcomp.errors import WireError

MAIN_MAGIC = 0x4D46444D  # "MFDM"
MAIN_VERSION = 2  # 2: READY before the channels connect
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
    DIGESTS = 7  # source → destination after EOS: per-block sha256 as JSON
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

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, body: bytes) -> Session:
        try:
            data = json.loads(body)
            session = cls(
                uuid=str(data["uuid"]),
                page_size=int(data["page_size"]),
                channels=int(data["channels"]),
                codec=str(data["codec"]),
                level=None if data["level"] is None else int(data["level"]),
                zero_page_detection=str(data["zero_page_detection"]),
                blocks=[(str(name), int(size)) for name, size in data["blocks"]],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise WireError(f"malformed session message: {exc}", field="session") from exc
        if not 1 <= session.channels <= 255:
            raise WireError("channels must be 1-255", field="channels", value=session.channels, limit=255)
        return session


def opening() -> bytes:
    return OPENING.pack(MAIN_MAGIC, MAIN_VERSION)


def check_opening(data: bytes) -> None:
    magic, version = OPENING.unpack(data)
    if magic != MAIN_MAGIC or version != MAIN_VERSION:
        raise WireError(
            f"not an mfdcomp main channel (magic 0x{magic:08x}, version {version})",
            field="magic",
            value=magic,
            limit=MAIN_MAGIC,
        )


def encode(kind: Message, body: bytes = b"") -> bytes:
    return MESSAGE.pack(kind, len(body)) + body


def encode_json(kind: Message, obj: Any) -> bytes:
    return encode(kind, json.dumps(obj).encode())


def decode_head(data: bytes) -> tuple[Message, int]:
    kind, length = MESSAGE.unpack(data)
    try:
        message = Message(kind)
    except ValueError as exc:
        raise WireError(f"unknown main-channel message type {kind}", field="type", value=kind) from exc
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


def decode_json(kind: Message, body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise WireError(f"malformed {kind.name} message: {exc}", field=kind.name) from exc

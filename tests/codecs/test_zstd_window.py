"""zstd's decoder window follows the session's level: a source cannot make each channel hold 32 MiB by asking.

A streaming zstd sender (QEMU's ZSTD_initCStream) uses its level's window: 512 KiB at level 1, 32 MiB at
level 20. A destination that knows the session's level allows that window and no more; one that does not
(the tap, a capture) allows any QEMU level's.
"""

from __future__ import annotations

import pytest
import zstandard
from mfdcomp_zstd.codec import MAX_WINDOW, window_for

from mfdcomp.errors import CodecError
from mfdcomp.registry import default_registry
from mfdcomp.wire import Flag, RamPacket

PAGE = 4096


class Payload:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> memoryview:
        return memoryview(self.data)

    def read_into(self, views: object) -> None:
        raise AssertionError("zstd reads its payload whole")


def frame_start(window_log: int, pages: bytes) -> bytes:
    """The first packet of a channel whose sender streams with a ``1 << window_log`` window."""
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=window_log)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    return compressor.compress(pages) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


def receive(level: int | None, payload: bytes, pages: int) -> bytes:
    method = default_registry().get("zstd").methods(PAGE, level, default_registry().get("zstd").probe()[0].path)
    method.recv_setup(0)
    target = bytearray(pages * PAGE)
    views = [memoryview(target)[i * PAGE : (i + 1) * PAGE] for i in range(pages)]
    packet = RamPacket.data(
        flags=int(Flag.ZSTD), ramblock="ram0", normal=list(range(0, pages * PAGE, PAGE)),
        page_size=PAGE, packet_num=0, next_packet_size=len(payload),
    )  # fmt: skip
    method.recv(packet, Payload(payload), views)  # type: ignore[arg-type]
    return bytes(target)


def test_each_qemu_level_gets_its_own_window() -> None:
    assert window_for(1) == 1 << 19
    assert window_for(20) == MAX_WINDOW == 1 << 25
    assert all(window_for(level) <= window_for(level + 1) for level in range(1, 20))


@pytest.mark.parametrize("level", [1, 3, 9, 19, 20])
def test_a_sender_at_the_announced_level_is_received(level: int) -> None:
    pages = bytes(range(256)) * (2 * PAGE // 256)
    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    payload = compressor.compress(pages) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert receive(level, payload, 2) == pages


def test_a_window_beyond_the_announced_level_is_refused() -> None:
    pages = bytes(2 * PAGE)
    payload = frame_start(25, pages)  # level 20's window, while the session said level 1
    with pytest.raises(CodecError, match="corrupt or unsupported"):
        receive(1, payload, 2)
    assert receive(20, payload, 2) == pages


def test_without_a_level_any_qemu_window_is_taken_and_no_more() -> None:
    pages = bytes(2 * PAGE)
    assert receive(None, frame_start(25, pages), 2) == pages
    with pytest.raises(CodecError, match="corrupt or unsupported"):
        receive(None, frame_start(26, pages), 2)

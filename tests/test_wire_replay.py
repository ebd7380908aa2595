"""Recorded channels (mfdcomp.qemu.capture) and their replay onto an image (mfdcomp.qemu.replay)."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import pytest

from mfdcomp.errors import CodecError, MfdcompError, TruncatedError, WireError
from mfdcomp.qemu.capture import channel_events, classify, split_connections, summarize_channel
from mfdcomp.qemu.mainstream import PageRecord, ZeroPageRecord, parse_main_stream
from mfdcomp.qemu.replay import ImageWriter, main_records_applier, replay
from mfdcomp.wire import (
    ChannelIds,
    DeviceStatePacket,
    EndOfStream,
    Flag,
    InitPacket,
    RamPacket,
    ReceiverLimits,
)

PAGE = 4096
MiB = 1 << 20


def page(fill: int) -> bytes:
    return bytes([fill]) * PAGE


def channel(chan_id: int, *records: bytes) -> bytes:
    return InitPacket(uuid=bytes(16), id=chan_id).encode() + b"".join(records)


def nocomp(block: str, normal: dict[int, int], zero: tuple[int, ...] = (), num: int = 0, flags: int = 0) -> bytes:
    """A nocomp RAM record: page index -> fill byte for the normal pages, page indexes of zero pages."""
    packet = RamPacket.data(
        flags=flags,
        ramblock=block,
        normal=[i * PAGE for i in normal],
        zero=[i * PAGE for i in zero],
        next_packet_size=len(normal) * PAGE,
        packet_num=num,
    )
    return packet.encode() + b"".join(page(fill) for fill in normal.values())


def sync(num: int = 0) -> bytes:
    return RamPacket.sync(num).encode()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def sha(*pages: bytes) -> str:
    return hashlib.sha256(b"".join(pages)).hexdigest()


# --- classify / split ------------------------------------------------------------------------------------------


def test_classify(tmp_path: Path) -> None:
    assert classify(write(tmp_path, "a", channel(0))) == "multifd"
    assert classify(write(tmp_path, "b", b"QEVM\0\0\0\3")) == "main"
    for name, data in [("c", b"\x7fELF...."), ("d", b""), ("e", b"\x11\x22\x33")]:
        path = write(tmp_path, name, data)
        with pytest.raises(WireError) as info:
            classify(path)
        assert str(path) in str(info.value)
        assert (info.value.field, info.value.value) == ("magic", data[:4].hex())


def test_split_connections(tmp_path: Path) -> None:
    ch = write(tmp_path, "ch0.bin", channel(0))
    main = write(tmp_path, "main.bin", b"QEVM")
    assert split_connections([main, ch]) == ([ch], [main])
    with pytest.raises(MfdcompError, match="cannot read"):
        split_connections([tmp_path / "missing.bin"])
    with pytest.raises(MfdcompError, match="cannot read"):
        split_connections([tmp_path])


# --- channel_events / summarize ----------------------------------------------------------------------------------


def test_channel_events_of_an_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "ch0.bin", b"")
    with pytest.raises(TruncatedError) as info:
        list(channel_events(path, ReceiverLimits()))
    assert f"{path}: at byte 0:" in str(info.value)
    assert (info.value.field, info.value.value, info.value.limit) == ("init packet", 0, 64)


def test_channel_events_in_chunks(tmp_path: Path) -> None:
    """A channel larger than the 1 MiB read chunk gives the same events as read whole."""
    records = [nocomp("ram0", {i: i % 251 for i in range(k * 128, k * 128 + 128)}, num=k) for k in range(4)]
    path = write(tmp_path, "ch0.bin", channel(0, *records, sync(4)))
    events = list(channel_events(path, ReceiverLimits()))
    assert len(events) == 7 and isinstance(events[-1], EndOfStream)


def test_summary_counts_device_state_and_sync_with_pages(tmp_path: Path) -> None:
    blob = b"vfio" * 10
    data = channel(
        1,
        DeviceStatePacket("dev", 0, len(blob)).encode() + blob,
        nocomp("ram0", {0: 1, 1: 2}, (5,), num=7, flags=Flag.SYNC),
        nocomp("pc.bios", {3: 3}, num=9),
        RamPacket(
            flags=0, pages_alloc=0, normal_pages=0, next_packet_size=0, packet_num=3, ramblock="", offsets=(0,) * 128
        ).encode(),
        sync(11),
    )
    summary = summarize_channel(write(tmp_path, "ch1.bin", data), ReceiverLimits())
    assert summary.channel_id == 1 and summary.uuid == "00" * 16
    assert (summary.device_state_packets, summary.device_state_bytes) == (1, len(blob))
    assert (summary.packets, summary.sync_packets, summary.sync_packets_with_pages, summary.data_packets) == (
        4,
        2,
        1,
        2,
    )
    assert (summary.normal_pages, summary.zero_pages, summary.payload_bytes) == (3, 1, 3 * PAGE)
    assert (summary.packet_num_min, summary.packet_num_max) == (3, 11)
    assert dict(summary.codecs) == {"none": 2}
    assert summary.ramblocks["ram0"].normal_pages == 2 and summary.ramblocks["ram0"].zero_pages == 1
    assert summary.ramblocks["pc.bios"].packets == 1


def test_summaries_refuse_a_duplicate_channel(tmp_path: Path) -> None:
    ids = ChannelIds()
    summarize_channel(write(tmp_path, "a.bin", channel(0)), ReceiverLimits(), ids)
    with pytest.raises(WireError, match="already set up"):
        summarize_channel(write(tmp_path, "b.bin", channel(0)), ReceiverLimits(), ids)


# --- ImageWriter ------------------------------------------------------------------------------------------------


def test_image_writer_with_a_size(tmp_path: Path) -> None:
    image = tmp_path / "img"
    writer = ImageWriter(image, PAGE, 4 * PAGE)
    try:
        writer.write_pages((PAGE, 3 * PAGE), page(1) + page(2))
        writer.zero_pages((PAGE,))
        with pytest.raises(WireError) as info:
            writer.write_pages((4 * PAGE,), page(3))
        assert (info.value.field, info.value.value, info.value.limit) == ("offset", 4 * PAGE, 3 * PAGE)
        with pytest.raises(WireError):
            writer.zero_pages((4 * PAGE,))
        assert writer.digest() == sha(page(0), page(0), page(0), page(2))
    finally:
        writer.close()


def test_image_writer_without_a_size_grows(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(page(9))
    writer = ImageWriter(image, PAGE, None)
    try:
        writer.zero_pages(())
        writer.write_pages((2 * PAGE,), page(5))
        writer.zero_pages((0, 4 * PAGE))  # page 0 is cleared, page 4 lies past the end: the image grows
        assert writer.digest() == sha(page(0), page(0), page(5), page(0), page(0))
    finally:
        writer.close()
    assert image.stat().st_size == 5 * PAGE


# --- replay ------------------------------------------------------------------------------------------------------


def test_replay_respects_sync_epochs(tmp_path: Path) -> None:
    """Page 0 is written on channel 0 in epoch 0 and rewritten on channel 1 in epoch 1: the newest wins."""
    ch0 = write(tmp_path, "ch0.bin", channel(0, nocomp("ram0", {0: 1, 1: 1}), sync(), nocomp("ram0", {2: 2}), sync()))
    ch1 = write(tmp_path, "ch1.bin", channel(1, sync(), nocomp("ram0", {0: 3}, (1,)), nocomp("pc.bios", {0: 7})))
    for order in ([ch0, ch1], [ch1, ch0]):
        image = tmp_path / f"img-{order[0].name}"
        result = replay(order, image, "ram0", limits=ReceiverLimits(), size=4 * PAGE)
        assert result.sha256 == sha(page(3), page(0), page(2), page(0))
        assert (result.size, result.epochs, result.normal_pages, result.zero_pages) == (4 * PAGE, 3, 4, 1)


def test_replay_decodes_zlib_across_blocks(tmp_path: Path) -> None:
    """The codec stream spans every block: skipped blocks are still decoded."""
    deflate = zlib.compressobj(1)
    records = []
    for num, (block, fill) in enumerate([("pc.bios", 4), ("ram0", 5)]):
        payload = deflate.compress(page(fill)) + deflate.flush(zlib.Z_SYNC_FLUSH)
        packet = RamPacket.data(
            flags=Flag.ZLIB, ramblock=block, normal=[0], next_packet_size=len(payload), packet_num=num
        )
        records.append(packet.encode() + payload)
    path = write(tmp_path, "ch0.bin", channel(0, *records))
    result = replay([path], tmp_path / "img", "ram0", limits=ReceiverLimits())
    assert result.sha256 == sha(page(5)) and result.size == PAGE


def test_replay_refuses_a_codec_change_in_a_channel(tmp_path: Path) -> None:
    deflate = zlib.compressobj(1)
    payload = deflate.compress(page(1)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    zpacket = RamPacket.data(flags=Flag.ZLIB, ramblock="ram0", normal=[0], next_packet_size=len(payload), packet_num=1)
    path = write(tmp_path, "ch0.bin", channel(0, zpacket.encode() + payload, nocomp("ram0", {1: 1})))
    with pytest.raises(WireError) as info:
        replay([path], tmp_path / "img", "ram0", limits=ReceiverLimits())
    assert (info.value.field, info.value.value, info.value.limit) == ("flags", 0, Flag.ZLIB)


def test_replay_without_channels_or_decoder(tmp_path: Path) -> None:
    with pytest.raises(MfdcompError, match="at least one"):
        replay([], tmp_path / "img", "ram0", limits=ReceiverLimits())
    packet = RamPacket.data(flags=Flag.QPL, ramblock="ram0", normal=[0], next_packet_size=4, packet_num=1)
    path = write(tmp_path, "ch0.bin", channel(0, packet.encode() + b"abcd"))
    with pytest.raises(CodecError, match="qpl"):
        replay([path], tmp_path / "img", "ram0", limits=ReceiverLimits())


def test_replay_applies_main_stream_records(tmp_path: Path) -> None:
    """Legacy zero pages and page records of the main stream land in their epoch, after the channels'."""
    path = write(tmp_path, "ch0.bin", channel(0, nocomp("ram0", {0: 1, 1: 1}), sync(), nocomp("ram0", {2: 2})))

    class Stream:
        records = (
            ZeroPageRecord("ram0", 0, 0, epoch=0, pos=0),
            ZeroPageRecord("ram0", 3 * PAGE, 0xEE, epoch=1, pos=1),
            PageRecord("ram0", 2 * PAGE, memoryview(page(8)), epoch=1, pos=2),
            ZeroPageRecord("pc.bios", 0, 0, epoch=0, pos=3),
        )

    apply = main_records_applier(Stream(), "ram0")  # type: ignore[arg-type]
    result = replay([path], tmp_path / "img", "ram0", limits=ReceiverLimits(), size=4 * PAGE, main_epoch=apply)
    assert result.sha256 == sha(page(0), page(1), page(8), page(0xEE))


def test_replay_of_a_real_capture_with_its_main_stream(capture_dir: Path, tmp_path: Path) -> None:
    """A prefilled image: every page of ram0 must be written by a channel or the main stream."""
    manifest = json.loads((capture_dir / "manifest.json").read_text())
    stream = parse_main_stream((capture_dir / "main.bin").read_bytes())
    image = tmp_path / "img"
    image.write_bytes(b"\xa5" * (8 * MiB))
    ram0 = [ch["file"] for ch in manifest["multifd_channels"].values()]
    result = replay(
        [capture_dir / name for name in ram0],
        image,
        "ram0",
        limits=ReceiverLimits(ramblocks=stream.ramblocks),
        size=stream.ramblocks["ram0"],
        main_epoch=main_records_applier(stream, "ram0"),
    )
    assert result.sha256 == manifest["ram0"]["final_sha256"]

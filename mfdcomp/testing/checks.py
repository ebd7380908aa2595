"""The conformance checks: plain functions that take a codec and a configuration.

Each ``check_*`` returns notes (numbers worth showing) when the codec
passes, raises :class:`NotApplicable` with the reason when the check does not
concern it, and raises anything else when it fails. No pytest needed: the
pytest plugin and ``mfdcomp conformance`` both call these.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdcomp.clients.ram import RamClient
from mfdcomp.engine.migrate import MigrateOptions
from mfdcomp.errors import CodecError, MfdcompError, WireError
from mfdcomp.imagegen import KINDS, fill_memory, parse_mix
from mfdcomp.methods import Codec, CodecPath, HasImplementations, MultiFDMethods, PageViews, choose_path
from mfdcomp.testing.loopback import run_loopback
from mfdcomp.wire import EXTENSION, MULTIFD_PACKET_SIZE, RamPacket, ReceiverLimits, check_ram, ram_payload_size

Notes = dict[str, Any]
CodecLookup = Callable[[], Sequence[Codec]]

DATA_KINDS = (*KINDS, "mixed")
MIXED = "zero=10,text=40,random=30,half=20"


class NotApplicable(Exception):
    """The check does not concern this codec; the message says why."""


class NotRun(Exception):
    """The check concerns this codec but could not run here (no device, say); the message says why.

    Never a pass: a hardware path that did not run proved nothing.
    """


@dataclass(frozen=True)
class SuiteConfig:
    """What the suite runs with; every field has the embedded default."""

    workdir: Path
    channels: tuple[int, ...] = (1, 2, 4)
    zero_modes: tuple[str, ...] = ("none", "legacy", "multifd")
    kinds: tuple[str, ...] = DATA_KINDS
    image_size: int = 64 << 20
    transport: str = "unix"
    require_hw: bool = False
    """Codecs that have a hardware path must send every packet through it (software-only ones are exempt)."""
    vectors: Path | None = None
    stream_packets: int = 3000
    others: CodecLookup = field(default=lambda: [])
    """Every codec installed, for the cross-decode matrix."""


# --- helpers ------------------------------------------------------------------------------------


def _kind_mix(kind: str) -> dict[str, float]:
    return parse_mix(MIXED) if kind == "mixed" else {kind: 1.0}


def _ram(size: int, kind: str, seed: int, page_size: int = 4096) -> RamClient:
    ram = RamClient.anonymous([("ram0", size)], page_size=page_size)
    fill_memory(ram.blocks["ram0"].memory, _kind_mix(kind), seed, page_size)
    return ram


def _migrate(codec: Codec, config: SuiteConfig, ram: RamClient, options: MigrateOptions, tag: str) -> Notes:
    workdir = config.workdir / tag
    workdir.mkdir(parents=True, exist_ok=True)
    outcome = run_loopback(ram, codec, options, workdir=workdir, transport=config.transport)
    outcome.raise_for_errors()
    assert outcome.source is not None and outcome.destination is not None
    if outcome.destination.digests != ram.digests():
        raise AssertionError(f"{tag}: destination memory differs from the source")
    total = outcome.source.as_dict()["totals"]
    guest = (total["normal_pages"] + total["zero_pages"] + total["main_zero_pages"]) * options.page_size
    return {
        "guest_bytes": guest,
        "wire_bytes": total["wire_bytes"],
        "payload_bytes": total["payload_bytes"],
        "normal_pages": total["normal_pages"],
        "paths": {str(k): v for k, v in total["paths"].items()},
        "implementations": dict(total.get("implementations", {})),  # packets by library (isal, zlib, libqpl)
        "seconds": outcome.source.transfer_seconds,
    }


class BytesSource:
    """A payload held in memory, as the engine's channel would hand it over (a PayloadSource); counts reads."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.used = 0

    def read(self) -> memoryview:
        self.used += 1
        return memoryview(self.data)

    def read_into(self, views: Sequence[memoryview]) -> None:
        self.used += 1
        position = 0
        for view in views:
            chunk = self.data[position : position + len(view)]
            if len(chunk) != len(view):
                raise CodecError(f"payload of {self.size} bytes is shorter than the pages it should fill")
            view[:] = chunk
            position += len(view)
        if position != self.size:
            raise CodecError(f"payload of {self.size} bytes is longer than the pages it should fill")


@dataclass
class _Packet:
    packet: RamPacket
    payload: bytes
    pages: bytes


def _encode(method: MultiFDMethods, memory: memoryview, offsets: list[int], page_size: int, num: int) -> _Packet:
    payload = method.send_prepare(PageViews(memory, offsets, page_size))
    data = b"".join(bytes(memoryview(b).cast("B")) for b in payload.buffers)
    if len(data) != payload.size:
        raise AssertionError(f"send_prepare said {payload.size} bytes but its buffers hold {len(data)}")
    if payload.size > MULTIFD_PACKET_SIZE * 2:
        raise AssertionError(f"payload of {payload.size} bytes for {len(offsets)} pages is beyond any receiver's bound")
    packet = RamPacket.data(
        flags=method.flag | payload.flags,
        ramblock="ram0",
        normal=offsets,
        zero=[],
        next_packet_size=payload.size,
        packet_num=num,
        page_size=page_size,
        extension_id=method.extension_id,
    )
    pages = b"".join(bytes(memory[o : o + page_size]) for o in offsets)
    return _Packet(packet, data, pages)


GUARD = 0xA5


def _decode(method: MultiFDMethods, packet: _Packet, page_size: int) -> CodecPath:
    """Decode into pages inside a guarded buffer: every byte outside the pages must stay untouched."""
    count = len(packet.packet.normal_offsets)
    target = bytearray([GUARD]) * (page_size * (2 * count + 1))
    view = memoryview(target)
    # Pages at odd slots, guards between and around them.
    offsets = [(2 * i + 1) * page_size for i in range(count)]
    path = method.recv(packet.packet, BytesSource(packet.payload), PageViews(view, offsets, page_size))
    for i in range(count + 1):
        guard = view[2 * i * page_size : (2 * i + 1) * page_size]
        if guard != bytes([GUARD]) * page_size:
            raise AssertionError("the decoder wrote outside the pages the packet names")
    got = b"".join(bytes(view[o : o + page_size]) for o in offsets)
    if got != packet.pages:
        raise AssertionError("decoded pages differ from the pages sent")
    return path


def _require_hw(codec: Codec, config: SuiteConfig) -> bool:
    return config.require_hw and CodecPath.HARDWARE in codec.info.paths


def _send_paths(codec: Codec) -> list[CodecPath]:
    return [p.path for p in codec.probe() if p.available and p.path in codec.info.paths]


# --- the checks ---------------------------------------------------------------------------------


def check_engine_roundtrip(codec: Codec, config: SuiteConfig) -> Notes:
    """Every channel count × zero-page mode, three dirty rounds with sync, over real sockets."""
    runs = 0
    with _ram(8 << 20, "mixed", seed=11) as ram:
        for channels in config.channels:
            for mode in config.zero_modes:
                options = MigrateOptions(
                    channels=channels,
                    zero_page_detection=mode,
                    rounds=3,
                    dirty_fraction=0.2,
                    require_hw=_require_hw(codec, config),
                )
                _migrate(codec, config, ram, options, f"roundtrip-{channels}-{mode}")
                runs += 1
    return {"runs": runs}


def check_throughput(codec: Codec, config: SuiteConfig) -> Notes:
    """The embedded default image through the engine: ratio, throughput and the paths used."""
    channels = 2 if 2 in config.channels else config.channels[0]
    with _ram(config.image_size, "mixed", seed=1) as ram:
        options = MigrateOptions(channels=channels, require_hw=_require_hw(codec, config))
        notes = _migrate(codec, config, ram, options, "throughput")
    notes["ratio"] = notes["wire_bytes"] / notes["guest_bytes"]
    notes["gb_per_s"] = notes["guest_bytes"] / notes["seconds"] / 1e9
    notes["channels"] = channels
    return notes


def check_data_kinds(codec: Codec, config: SuiteConfig) -> Notes:
    """Each data kind at 4 KiB pages, and at every other page size the codec declares."""
    sizes = sorted({4096, *(codec.info.page_sizes or ())})
    ratios: dict[str, float] = {}
    for page_size in sizes:
        for kind in config.kinds:
            with _ram(2 << 20, kind, seed=5, page_size=page_size) as ram:
                options = MigrateOptions(channels=2, page_size=page_size, rounds=2, dirty_fraction=0.1)
                notes = _migrate(codec, config, ram, options, f"kind-{kind}-{page_size}")
            if notes["normal_pages"]:
                ratios[f"{kind}@{page_size}"] = round(notes["payload_bytes"] / (notes["normal_pages"] * page_size), 3)
    return {"page_sizes": sizes, "payload_ratio": ratios}


def check_cross_decode(codec: Codec, config: SuiteConfig) -> Notes:
    """Whatever path of whatever implementation of the same wire format encodes, every other decodes."""
    codecs = [c for c in config.others() if c.info.wire_format == codec.info.wire_format]
    if all(c.info.name != codec.info.name for c in codecs):
        codecs.append(codec)
    family: list[tuple[str, Codec]] = []
    for member in codecs:
        impl = getattr(member, "implementation", None)  # which library, where a codec has several
        family.append((f"{member.info.name} ({impl})" if impl else member.info.name, member))
        if isinstance(member, HasImplementations):
            family += [(f"{member.info.name} ({label})", other) for label, other in member.implementations().items()]
    encoders = [(label, c, p) for label, c in family for p in _send_paths(c)]
    if len(encoders) < 2 and len(family) < 2:
        raise NotApplicable(f"only one implementation of wire format {codec.info.wire_format!r} is installed")
    ps = 4096
    with _ram(1 << 20, "mixed", seed=3) as ram:
        memory = ram.blocks["ram0"].memory
        offsets = list(range(0, len(memory), ps))
        pairs = []
        for label, encoder, path in encoders:
            sender = encoder.methods(ps, None, path)
            sender.send_setup(0)
            try:
                packets = [
                    _encode(sender, memory, offsets[i : i + 64], ps, n)
                    for n, i in enumerate(range(0, len(offsets), 64))
                ]
            finally:
                sender.send_cleanup()
            for decoder_label, decoder in family:
                receiver = decoder.methods(ps, None, choose_path(decoder.info, decoder.probe()).path)
                receiver.recv_setup(0)
                try:
                    for packet in packets:
                        _decode(receiver, packet, ps)
                finally:
                    receiver.recv_cleanup()
                pairs.append(f"{label}/{path} -> {decoder_label}")
    return {"pairs": pairs}


def check_golden_vectors(codec: Codec, config: SuiteConfig) -> Notes:
    """Real QEMU channels (qemu/ captures) replay to QEMU's RAM; real library payloads (<codec>/) decode."""
    if config.vectors is None:
        raise NotApplicable(
            "no vectors directory given (mfdcomp conformance --vectors DIR, pytest --mfdcomp-vectors DIR, "
            "or MFDCOMP_VECTORS)"
        )
    checked: list[str] = []
    # Every implementation the codec has decodes QEMU's and the libraries' bytes.
    for label, implementation in _implementations(codec):
        found = (
            _golden_captures(implementation, config.vectors)
            + _golden_trimmed(implementation, config.vectors)
            + _golden_payloads(implementation, config.vectors)
        )
        checked += [f"{item} ({label})" for item in found]
    if not checked:
        raise NotApplicable(f"no QEMU capture nor library payload of {codec.info.name} under {config.vectors}")
    return {"vectors": checked}


PACKAGED_VECTORS = Path(__file__).resolve().parent / "vectors"
"""Golden vectors shipped with mfdcomp (package data): a few real packets of each QEMU capture, QATzip payloads."""


def _implementations(codec: Codec) -> list[tuple[str, Codec]]:
    found: list[tuple[str, Codec]] = [(codec.info.name, codec)]
    if isinstance(codec, HasImplementations):
        found += list(codec.implementations().items())
    return found


def _golden_trimmed(codec: Codec, vectors: Path) -> list[str]:
    """Trimmed QEMU captures (tests/vectors/make_packaged.py): each kept packet decodes to QEMU's pages."""
    import zstandard  # the channels are stored as zstd frames

    from mfdcomp.wire import ChannelReader, RamData

    decoded = []
    for manifest_path in sorted((vectors / "qemu").glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != "mfdcomp-trimmed-capture/1" or manifest["codec"] != codec.info.name:
            continue
        ps = manifest["page_size"]
        for key, entry in sorted(manifest["multifd_channels"].items()):
            data = zstandard.ZstdDecompressor().decompress((manifest_path.parent / entry["file"]).read_bytes())
            limits = ReceiverLimits(page_size=ps, channels=manifest["channels"], ramblocks=manifest["ramblocks"])
            reader = ChannelReader(limits)
            reader.feed(data)
            reader.feed_eof()
            expected = {p["packet_num"]: p["sha256"] for p in manifest["multifd_channels"][key]["data_packets"]}
            receiver = codec.methods(ps, None, choose_path(codec.info, codec.probe()).path)
            receiver.recv_setup(int(key))
            seen = 0
            try:
                for event in reader:
                    if not isinstance(event, RamData) or not event.packet.normal_pages:
                        continue
                    count = event.packet.normal_pages
                    pages = bytearray(count * ps)
                    receiver.recv(
                        event.packet,
                        BytesSource(event.payload),
                        PageViews(memoryview(pages), range(0, len(pages), ps), ps),
                    )
                    want = expected.get(event.packet.packet_num)
                    if want is not None:
                        if hashlib.sha256(pages).hexdigest() != want:
                            raise AssertionError(
                                f"{manifest_path.parent.name} channel {key} packet {event.packet.packet_num}: "
                                "decoded pages differ from QEMU's RAM"
                            )
                        seen += 1
            finally:
                receiver.recv_cleanup()
            if seen != len(expected):
                raise AssertionError(f"{manifest_path.parent.name} channel {key}: {seen} of {len(expected)} packets")
        decoded.append(f"qemu/{manifest_path.parent.name} (trimmed)")
    return decoded


def _golden_captures(codec: Codec, vectors: Path) -> list[str]:
    from mfdcomp.qemu.replay import replay_capture  # the capture tools are only needed here

    replayed = []
    for manifest_path in sorted((vectors / "qemu").glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("codec") != codec.info.name or manifest.get("format") == "mfdcomp-trimmed-capture/1":
            continue
        digest = replay_capture(manifest_path.parent, codec)
        expected = manifest["ram0"]["final_sha256"]
        if digest != expected:
            raise AssertionError(
                f"{manifest_path.parent.name}: replay gives sha256 {digest}, QEMU's RAM was {expected}"
            )
        replayed.append(f"qemu/{manifest_path.parent.name}")
    return replayed


def _golden_payloads(codec: Codec, vectors: Path) -> list[str]:
    """Each case directory holds the pages (input.bin.zst) and the payloads a real library made of them."""
    decoded: list[str] = []
    cases = sorted((vectors / codec.info.name).glob("*/manifest.json"))
    if not cases:
        return decoded
    import zstandard  # only to unpack the stored input pages

    for manifest_path in cases:
        case = manifest_path.parent
        manifest = json.loads(manifest_path.read_text())
        pages = zstandard.ZstdDecompressor().decompress((case / manifest["input"]["file"]).read_bytes())
        if hashlib.sha256(pages).hexdigest() != manifest["input"]["sha256"]:
            raise AssertionError(f"{case.name}: input.bin.zst does not hold the input its manifest names")
        ps = len(pages) // manifest["input"]["pages"]
        offsets = [i * ps for i in range(len(pages) // ps)]
        for output in sorted(case.glob("output.*.bin")):
            payload = output.read_bytes()
            packet = RamPacket.data(
                flags=codec.info.qemu_flag or 0,
                extension_id=codec.info.extension_id or 0,
                ramblock="ram0",
                normal=offsets,
                zero=[],
                next_packet_size=len(payload),
                packet_num=0,
                page_size=ps,
            )
            receiver = codec.methods(ps, None, choose_path(codec.info, codec.probe()).path)
            receiver.recv_setup(0)
            try:
                _decode(receiver, _Packet(packet, payload, pages), ps)
            finally:
                receiver.recv_cleanup()
            decoded.append(f"{codec.info.name}/{case.name}/{output.name}")
    return decoded


def check_negative(codec: Codec, config: SuiteConfig) -> Notes:
    """Truncated, padded, emptied and scrambled payloads; a foreign flag; an oversize length."""
    ps = 4096
    cases: Counter[str] = Counter()
    with _ram(256 << 10, "mixed", seed=9) as ram:
        memory = ram.blocks["ram0"].memory
        offsets = list(range(0, len(memory), ps))
        sender = codec.methods(ps, None, choose_path(codec.info, codec.probe()).path)
        sender.send_setup(0)
        try:
            good = _encode(sender, memory, offsets[:32], ps, 0)
        finally:
            sender.send_cleanup()
    rng = random.Random(4)
    broken = {
        "truncated by one byte": good.payload[:-1],
        "cut in half": good.payload[: len(good.payload) // 2],
        "empty": b"",
        "trailing garbage": good.payload + b"\x00garbage",
        "scrambled": bytes(rng.getrandbits(8) for _ in range(len(good.payload))),
    }
    must_fail = {"truncated by one byte", "cut in half", "empty", "trailing garbage"}
    for name, payload in broken.items():
        packet = dataclasses.replace(good.packet, next_packet_size=len(payload))
        receiver = codec.methods(ps, None, choose_path(codec.info, codec.probe()).path)
        receiver.recv_setup(0)
        try:
            _decode(receiver, _Packet(packet, payload, good.pages), ps)
        except MfdcompError:
            cases[name] += 1
            continue
        except AssertionError as exc:
            if "outside" in str(exc) or name in must_fail:
                raise AssertionError(f"{name} payload: {exc}") from exc
            cases[f"{name} (decoded to other bytes, no integrity check in the format)"] += 1
            continue
        finally:
            receiver.recv_cleanup()
        if name in must_fail:
            raise AssertionError(f"a {name} payload was accepted without error")
        cases[f"{name} (accepted: decodes to the right size)"] += 1
    own = EXTENSION if codec.info.qemu_flag is None else codec.info.qemu_flag
    limits = ReceiverLimits(
        page_size=ps, channels=1, ramblocks={"ram0": 1 << 20}, codec_flag=own, extension_id=codec.info.extension_id
    )
    foreign = 0x02 if own != 0x02 else 0x04
    for what, packet in {
        "foreign codec flag": dataclasses.replace(good.packet, flags=foreign),
        "oversize next_packet_size": dataclasses.replace(good.packet, next_packet_size=64 << 20),
    }.items():
        try:
            check_ram(packet, limits)
            size = ram_payload_size(packet, limits)
        except WireError:
            cases[what] += 1
            continue
        if size > limits.max_payload:
            raise AssertionError(f"a packet with a {what} passed the receiver's checks")
        # nocomp reads pages × page size whatever next_packet_size says: the read stays bounded.
        cases[f"{what} (ignored: the payload size follows from the pages)"] += 1
    return {"refused": dict(cases)}


def check_stream_state(codec: Codec, config: SuiteConfig) -> Notes:
    """Thousands of packets per channel, two channels interleaved, each with its own contexts."""
    ps = 4096
    path = choose_path(codec.info, codec.probe()).path
    with _ram(4 << 20, "mixed", seed=21) as ram:
        memory = ram.blocks["ram0"].memory
        pages = len(memory) // ps
        rng = random.Random(8)
        senders = [codec.methods(ps, None, path) for _ in range(2)]
        receivers = [codec.methods(ps, None, path) for _ in range(2)]
        for channel, (s, r) in enumerate(zip(senders, receivers, strict=True)):
            s.send_setup(channel)
            r.recv_setup(channel)
        try:
            for num in range(config.stream_packets):
                channel = num % 2
                first = rng.randrange(pages - 4)
                offsets = [(first + k) * ps for k in range(rng.randint(1, 4))]
                _decode(receivers[channel], _encode(senders[channel], memory, offsets, ps, num), ps)
        finally:
            for m in (*senders, *receivers):
                m.send_cleanup() if m in senders else m.recv_cleanup()
    return {"packets": config.stream_packets, "channels": 2}


def check_context_misuse(codec: Codec, config: SuiteConfig) -> Notes:
    """A context set up twice, used before set-up, or used from another thread is refused."""
    ps = 4096
    path = choose_path(codec.info, codec.probe()).path
    memory = memoryview(bytearray(ps))
    views = PageViews(memory, [0], ps)
    fresh = codec.methods(ps, None, path)
    _expect_codec_error(lambda: fresh.send_prepare(views), "a context used before send_setup")
    twice = codec.methods(ps, None, path)
    twice.send_setup(0)
    _expect_codec_error(lambda: twice.send_setup(1), "a context set up for a second channel")
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            _expect_codec_error(lambda: twice.send_prepare(views), "a context used from another thread")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    twice.send_cleanup()
    if errors:
        raise errors[0]
    return {}


def check_hardware_path(codec: Codec, config: SuiteConfig) -> Notes:
    """Which paths this host offers; under --require-hw the hardware one must run."""
    probes = {str(p.path): {"available": p.available, "reason": p.reason} for p in codec.probe()}
    if CodecPath.HARDWARE not in codec.info.paths:
        raise NotApplicable(f"{codec.info.name} has no hardware path")
    choice = choose_path(codec.info, codec.probe(), require_hw=_require_hw(codec, config))
    hardware = next((p for p in codec.probe() if p.path is CodecPath.HARDWARE), None)
    if hardware is None or not hardware.available:
        reason = hardware.reason if hardware is not None else "the codec offers no hardware probe"
        raise NotRun(f"{codec.info.name}'s hardware path did not run: {reason} (sends through {choice.path})")
    return {"probes": probes, "sends_through": str(choice.path), "passed_over": list(choice.passed_over)}


def _expect_codec_error(action: Callable[[], object], what: str) -> None:
    try:
        action()
    except CodecError:
        return
    raise AssertionError(f"{what} was not refused with a CodecError")


CHECKS: dict[str, Callable[[Codec, SuiteConfig], Notes]] = {
    "engine_roundtrip": check_engine_roundtrip,
    "data_kinds": check_data_kinds,
    "cross_decode": check_cross_decode,
    "golden_vectors": check_golden_vectors,
    "negative": check_negative,
    "stream_state": check_stream_state,
    "context_misuse": check_context_misuse,
    "hardware_path": check_hardware_path,
    "throughput": check_throughput,
}

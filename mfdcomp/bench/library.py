"""The raw libraries' own speed on an image's pages, one thread, without the engine.

The engine's GB/s is set against these: for each codec, the same packets of
pages the engine would hand the codec (the normal pages of every 512 KiB of
guest RAM, zero pages left out as zero-page detection leaves them out, adjacent
pages as one buffer) compressed and then decoded by the library the codec binds
to, with no threads, sockets, headers or statistics. Rates count guest bytes
(zero pages included), like the engine's, so the two divide.

What each reference measures is said in its class docstring and in
``Reference.measures`` (shown in the reports).

:func:`measure_implementations` (``mfdcomp bench --library-only``) sets the
implementations of each deflate wire format side by side on the same pages:
libqpl's software path, ISA-L and zlib for qpl's per-page raw deflate, ISA-L
and zlib for the zlib codec's stream and for uadk's per-page zlib.
"""

from __future__ import annotations

import abc
import argparse
import importlib
import json
import mmap
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from mfdcomp.bench.procs import MFDCOMP, Child, ChildFailed
from mfdcomp.errors import PluginError
from mfdcomp.methods import Codec, CodecPath, MultiFDMethods, PageViews
from mfdcomp.methods import deflate as libs
from mfdcomp.registry import default_registry
from mfdcomp.wire import MULTIFD_PACKET_SIZE, RamPacket
from mfdcomp.zeropage import zero_page_mask

__all__ = ["LibraryResult", "Packet", "Reference", "image_packets", "measure", "measure_apart", "reference_for"]


@dataclass(frozen=True)
class Packet:
    """The normal pages of one packet: runs of adjacent pages, in order."""

    spans: list[memoryview]

    @property
    def size(self) -> int:
        return sum(len(span) for span in self.spans)

    def pages(self, page_size: int) -> list[memoryview]:
        return [span[at : at + page_size] for span in self.spans for at in range(0, len(span), page_size)]


def image_packets(memory: memoryview, page_size: int = 4096) -> list[Packet]:
    """``memory`` cut into 512 KiB packets of guest RAM, each keeping only its normal (non-zero) pages."""
    zero = zero_page_mask(memory, page_size)
    per_packet = MULTIFD_PACKET_SIZE // page_size
    packets: list[Packet] = []
    for first in range(0, len(zero), per_packet):
        normal = np.flatnonzero(~zero[first : first + per_packet]).tolist()
        if normal:
            offsets = [(first + index) * page_size for index in normal]
            packets.append(Packet(PageViews(memory, offsets, page_size).runs()))
    return packets


class Reference(abc.ABC):
    """One codec's library: ``compress`` every packet, then ``decompress`` every payload.

    Both run on fresh library state (a channel's stream starts anew); a
    decoded size that differs from the pages' is an error.
    """

    measures = ""

    def __init__(self, level: int | None, page_size: int) -> None:
        self.level = level
        self.page_size = page_size

    @abc.abstractmethod
    def compress(self, packets: Sequence[Packet]) -> list[bytes]:
        """Encode every packet's pages; one payload per packet."""

    @abc.abstractmethod
    def decompress(self, payloads: Sequence[bytes], packets: Sequence[Packet]) -> int:
        """Decode every payload; the bytes decoded."""


class MemcpyReference(Reference):
    """nocomp: a memcpy of each packet's pages into a 512 KiB buffer, both ways (there is no library)."""

    measures = "memcpy of the normal pages into a 512 KiB buffer, per packet"

    def _copy(self, packets: Sequence[Packet]) -> int:
        buffer = memoryview(bytearray(MULTIFD_PACKET_SIZE))
        copied = 0
        for packet in packets:
            at = 0
            for span in packet.spans:
                buffer[at : at + len(span)] = span
                at += len(span)
            copied += at
        return copied

    def compress(self, packets: Sequence[Packet]) -> list[bytes]:
        self._copy(packets)
        return []  # nothing new: the payloads are the pages themselves

    def decompress(self, payloads: Sequence[bytes], packets: Sequence[Packet]) -> int:
        return self._copy(packets)


class UadkReference(MemcpyReference):
    """uadk without a HiSilicon device sends every page raw, as QEMU does: the reference is nocomp's memcpy."""

    measures = "memcpy of the normal pages (uadk sends raw pages without a device, as QEMU does)"


def _zlib_codec_library() -> libs.Deflate:
    """The library the registered zlib codec runs (MFDCOMP_ZLIB_IMPL is honoured), else the fastest installed."""
    try:
        name = getattr(default_registry().get("zlib"), "implementation", None)
    except PluginError:  # no zlib plugin: the reference still runs
        name = None
    found = libs.named(name) if isinstance(name, str) else libs.fastest()
    return found if isinstance(found, libs.Deflate) else libs.fastest()


class ZlibReference(Reference):
    """zlib: one compressobj(level) stream, every packet's pages then Z_SYNC_FLUSH; one decompressobj.

    The library is the zlib codec's default (ISA-L where python-isal imports, else stdlib zlib) or ``lib``.
    """

    def __init__(self, level: int | None, page_size: int, lib: libs.Deflate | None = None) -> None:
        super().__init__(level, page_size)
        self.lib = lib or _zlib_codec_library()
        self.measures = f"{self.lib.label}, one deflate stream, Z_SYNC_FLUSH per 512 KiB packet"

    def compress(self, packets: Sequence[Packet]) -> list[bytes]:
        deflate = self.lib.compressobj(self.level if self.level is not None else 1)
        payloads = []
        for packet in packets:
            chunks = [deflate.compress(span) for span in packet.spans]
            chunks.append(deflate.flush(zlib.Z_SYNC_FLUSH))
            payloads.append(b"".join(chunks))
        return payloads

    def decompress(self, payloads: Sequence[bytes], packets: Sequence[Packet]) -> int:
        inflate = self.lib.decompressobj()
        return sum(len(inflate.decompress(payload)) for payload in payloads)


class ZstdReference(Reference):
    """zstd: zstandard, one compressobj(level) frame, every packet's pages then FLUSH_BLOCK; one decompressobj."""

    measures = "zstandard, one zstd frame, FLUSH_BLOCK per 512 KiB packet"

    def compress(self, packets: Sequence[Packet]) -> list[bytes]:
        stream = zstandard.ZstdCompressor(level=self.level if self.level is not None else 1).compressobj()
        payloads = []
        for packet in packets:
            chunks = [stream.compress(span) for span in packet.spans]
            chunks.append(stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
            payloads.append(b"".join(chunks))
        return payloads

    def decompress(self, payloads: Sequence[bytes], packets: Sequence[Packet]) -> int:
        stream = zstandard.ZstdDecompressor().decompressobj()
        return sum(len(stream.decompress(payload)) for payload in payloads)


class Lz4Reference(Reference):
    """lz4: python-lz4's lz4.block, one block per packet (the spans joined when not already one buffer)."""

    measures = "lz4.block.compress of each 512 KiB packet (fast mode at level 1, HC above)"

    def __init__(self, level: int | None, page_size: int) -> None:
        super().__init__(level, page_size)
        # Loaded here, not at import: python-lz4 comes with the lz4 plugin only.
        self._block: Any = importlib.import_module("lz4.block")

    def compress(self, packets: Sequence[Packet]) -> list[bytes]:
        block = self._block
        level = self.level or 1
        options: dict[str, Any] = {} if level == 1 else {"mode": "high_compression", "compression": level}
        return [
            block.compress(p.spans[0] if len(p.spans) == 1 else b"".join(p.spans), store_size=False, **options)
            for p in packets
        ]

    def decompress(self, payloads: Sequence[bytes], packets: Sequence[Packet]) -> int:
        block = self._block
        return sum(
            len(block.decompress(payload, uncompressed_size=packet.size))
            for payload, packet in zip(payloads, packets, strict=True)
        )


class QplReference(Reference):
    """qpl: every normal page alone as raw deflate, level 1, wbits=-12 (IAA's 4 KiB window), as zlib makes it.

    (libqpl's and ISA-L's rates are in :func:`measure_implementations`.)
    """

    measures = "zlib raw deflate (wbits=-12, level 1) of every page on its own"

    def compress(self, packets: Sequence[Packet]) -> list[bytes]:
        size = self.page_size
        return [zlib.compress(page, 1, -12) for packet in packets for page in packet.pages(size)]

    def decompress(self, payloads: Sequence[bytes], packets: Sequence[Packet]) -> int:
        return sum(len(zlib.decompress(blob, -12, self.page_size)) for blob in payloads)


class QatzipReference(Reference):
    """qatzip: the plugin's libqatzip session, one qzCompress per packet of gathered pages, one qzDecompress back.

    The codec's send_prepare is this same gather and one library call, so
    here the library and the codec's own work per packet are nearly the same.
    """

    measures = "the plugin's libqatzip session: gather the pages, one qzCompress per packet (= its send_prepare)"

    def __init__(self, level: int | None, page_size: int) -> None:
        super().__init__(level, page_size)
        codec = default_registry().get("qatzip")
        probes = {probe.path.value: probe for probe in codec.probe()}
        # Taken from the registered codec (nothing in mfdcomp imports a codec by name).
        library: Any = getattr(codec, "library", None)
        if library is None:
            software = probes.get("software")
            raise RuntimeError(f"libqatzip is not loaded: {software.reason if software else 'no probe'}")
        hardware = probes.get("hardware")
        self._software_only = not (hardware is not None and hardware.available)
        self._library = library

    def _session(self) -> Any:
        return self._library.session(self.level or 1, software_only=self._software_only)

    def compress(self, packets: Sequence[Packet]) -> list[bytes]:
        session = self._session()
        try:
            gathered = memoryview(bytearray(MULTIFD_PACKET_SIZE))
            output = bytearray(session.max_compressed_length(MULTIFD_PACKET_SIZE))
            payloads = []
            for packet in packets:
                at = 0
                for span in packet.spans:
                    gathered[at : at + len(span)] = span
                    at += len(span)
                produced = session.compress(gathered[:at], output)
                payloads.append(bytes(output[:produced]))
            return payloads
        finally:
            session.close()

    def decompress(self, payloads: Sequence[bytes], packets: Sequence[Packet]) -> int:
        session = self._session()
        try:
            target = bytearray(MULTIFD_PACKET_SIZE)
            return sum(
                session.decompress(payload, memoryview(target)[: packet.size])[1]
                for payload, packet in zip(payloads, packets, strict=True)
            )
        finally:
            session.close()


class PageDeflateReference(Reference):
    """qpl (raw deflate, wbits -12) or uadk (zlib, wbits 12) pages: every normal page alone, level 1, by ``lib``."""

    def __init__(self, level: int | None, page_size: int, lib: libs.Deflate, wbits: int) -> None:
        super().__init__(1, page_size)  # QEMU's qpl and uadk have no level: 1, as they ask their libraries
        self.lib, self.wbits = lib, wbits
        kind = "raw deflate" if wbits < 0 else "zlib"
        self.measures = f"{lib.label}: {kind} (wbits={wbits}, level 1) of every page on its own"

    def compress(self, packets: Sequence[Packet]) -> list[bytes]:
        lib, wbits, size = self.lib, self.wbits, self.page_size
        return [lib.compress(page, 1, wbits) for packet in packets for page in packet.pages(size)]

    def decompress(self, payloads: Sequence[bytes], packets: Sequence[Packet]) -> int:
        lib, wbits, size = self.lib, self.wbits, self.page_size
        return sum(len(lib.decompress(blob, wbits, size)) for blob in payloads)


class _Payload:
    """A recorded payload as a codec's ``recv`` reads it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def read(self) -> memoryview:
        return memoryview(self.data)

    def read_into(self, views: Sequence[memoryview]) -> None:
        at = 0
        for view in views:
            view[:] = self.data[at : at + len(view)]
            at += len(view)


class CodecContextReference(Reference):
    """A codec implementation driven through its own contexts: send_prepare per packet, recv per payload.

    For libqpl, whose jobs only the plugin drives: the payloads carry the
    length table (4 bytes a page) besides the library's blobs.
    """

    def __init__(self, level: int | None, page_size: int, codec: Codec, label: str) -> None:
        super().__init__(level, page_size)
        self.codec = codec
        self.measures = f"{label} through the codec's send_prepare/recv (per-page jobs, length table)"

    def _context(self) -> MultiFDMethods:
        return self.codec.methods(self.page_size, self.level, CodecPath.SOFTWARE)

    def compress(self, packets: Sequence[Packet]) -> list[bytes]:
        sender = self._context()
        sender.send_setup(0)
        try:
            return [
                b"".join(bytes(memoryview(b)) for b in sender.send_prepare(packet.pages(self.page_size)).buffers)
                for packet in packets
            ]
        finally:
            sender.send_cleanup()

    def decompress(self, payloads: Sequence[bytes], packets: Sequence[Packet]) -> int:
        receiver = self._context()
        receiver.recv_setup(0)
        flag = self.codec.info.qemu_flag or 0
        target = memoryview(bytearray(MULTIFD_PACKET_SIZE))
        decoded = 0
        try:
            for number, (payload, packet) in enumerate(zip(payloads, packets, strict=True)):
                count = packet.size // self.page_size
                offsets = [i * self.page_size for i in range(count)]
                header = RamPacket.data(
                    flags=flag, ramblock="ram0", normal=offsets, next_packet_size=len(payload), packet_num=number
                )
                receiver.recv(header, _Payload(payload), PageViews(target, offsets, self.page_size))
                decoded += packet.size
        finally:
            receiver.recv_cleanup()
        return decoded


@dataclass(frozen=True)
class ImplementationRow:
    """One implementation of one wire format: its result, or why it did not run."""

    wire_format: str
    implementation: str
    result: LibraryResult | None = None
    not_run: str | None = None

    @property
    def compress_mb_per_s(self) -> float | None:
        """MB/s of the normal pages' bytes (what the library was given), best of the repeats."""
        r = self.result
        return r.normal_bytes / min(r.compress_seconds) / 1e6 if r else None

    @property
    def decompress_mb_per_s(self) -> float | None:
        r = self.result
        return r.normal_bytes / min(r.decompress_seconds) / 1e6 if r else None

    @property
    def ratio(self) -> float | None:
        """Output bytes over the normal pages' bytes."""
        r = self.result
        return r.output_bytes / r.normal_bytes if r else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "wire_format": self.wire_format,
            "implementation": self.implementation,
            "compress_mb_per_s": self.compress_mb_per_s,
            "decompress_mb_per_s": self.decompress_mb_per_s,
            "ratio": self.ratio,
            "not_run": self.not_run,
            "result": self.result.as_dict() if self.result else None,
        }


def _deflate_libraries() -> list[tuple[str, libs.Deflate | str]]:
    return [(libs.ISAL, libs.isal()), (libs.ZLIB, libs.STDLIB)]


def _libqpl() -> tuple[str, Codec | str]:
    """The qpl codec on libqpl (its software path), found through the registry, or why it cannot run."""
    try:
        codec = default_registry().get("qpl")
    except PluginError as exc:  # no qpl plugin: a row that says so
        return "libqpl (software)", f"no qpl codec: {exc}"
    candidates: list[Codec] = [codec]
    others = getattr(codec, "implementations", None)
    if callable(others):
        candidates += list(others().values())
    for candidate in candidates:
        if getattr(candidate, "implementation", None) == "libqpl":
            software = next(p for p in candidate.probe() if p.path is CodecPath.SOFTWARE)
            return f"libqpl {software.version or ''} (software)".replace("  ", " "), candidate
    probe = next((p for p in codec.probe() if p.path is CodecPath.SOFTWARE), None)
    return "libqpl (software)", f"libqpl is not loaded: {probe.reason if probe else 'no probe'}"


def implementation_references(level: int | None, page_size: int = 4096) -> list[tuple[str, str, Reference | str]]:
    """(wire format, implementation, reference or why it cannot run) for each deflate format's implementations."""
    rows: list[tuple[str, str, Reference | str]] = []
    for name, lib in _deflate_libraries():
        label = lib.label if isinstance(lib, libs.Deflate) else name
        rows.append(
            ("zlib-stream", label, ZlibReference(level, page_size, lib) if isinstance(lib, libs.Deflate) else lib)
        )
    label, libqpl = _libqpl()
    rows.append(
        (
            "qpl-page-deflate",
            label,
            CodecContextReference(None, page_size, libqpl, label) if not isinstance(libqpl, str) else libqpl,
        )
    )
    for wire_format, wbits in (("qpl-page-deflate", -12), ("uadk-page-zlib", 12)):
        for name, lib in _deflate_libraries():
            if isinstance(lib, libs.Deflate):
                rows.append((wire_format, lib.label, PageDeflateReference(None, page_size, lib, wbits)))
            else:
                rows.append((wire_format, name, lib))
    return rows


def measure_implementations(image: Path, repeats: int, level: int | None = None) -> list[ImplementationRow]:
    """Every implementation of every deflate wire format on the pages of ``image``, in this process."""
    rows = []
    for wire_format, label, reference in implementation_references(level):
        if isinstance(reference, str):
            rows.append(ImplementationRow(wire_format, label, not_run=reference))
            continue
        try:
            result = measure(reference, wire_format, image, repeats)
        except RuntimeError as exc:
            rows.append(ImplementationRow(wire_format, label, not_run=str(exc)))
        else:
            rows.append(ImplementationRow(wire_format, label, result))
    return rows


def implementations_text(rows: Sequence[ImplementationRow]) -> str:
    """The side-by-side table: MB/s of the normal pages' bytes, best of the repeats; ratio = output / normal bytes."""
    lines = [
        "deflate wire formats, implementation by implementation (one thread, the same normal pages;",
        "MB/s of normal-page bytes in, best of the repeats; ratio = output bytes / normal-page bytes)",
        f"{'wire format':<18} {'implementation':<26} {'compress':>10} {'decompress':>11} {'ratio':>7}",
    ]
    for row in rows:
        if row.result is None:
            lines.append(f"{row.wire_format:<18} {row.implementation:<26} NOT RUN: {row.not_run}")
            continue
        lines.append(
            f"{row.wire_format:<18} {row.implementation:<26} {row.compress_mb_per_s:>10.1f} "
            f"{row.decompress_mb_per_s:>11.1f} {row.ratio:>7.3f}"
        )
    measured = [row for row in rows if row.result is not None]
    if measured:
        lines += ["", "what each row measures:"]
        lines += [
            f"  {row.wire_format} / {row.implementation}: {row.result.measures}" for row in measured if row.result
        ]
    return "\n".join(lines)


_REFERENCES: dict[str, Callable[[int | None, int], Reference]] = {
    "none": MemcpyReference,
    "zlib": ZlibReference,
    "zstd": ZstdReference,
    "lz4": Lz4Reference,
    "qpl": QplReference,
    "qatzip": QatzipReference,
    "uadk": UadkReference,
}


def reference_for(codec: str, level: int | None, page_size: int = 4096) -> Reference:
    """The reference of ``codec``; raises RuntimeError (with the reason) where it cannot run here."""
    make = _REFERENCES.get(codec)
    if make is None:
        raise RuntimeError(f"no raw-library reference for codec {codec!r}")
    try:
        return make(level, page_size)
    except ImportError as exc:
        raise RuntimeError(f"its library is not installed: {exc}") from exc


@dataclass(frozen=True)
class LibraryResult:
    """One codec's library on one image: seconds of each repeat, rates in GB/s of guest RAM."""

    codec: str
    level: int | None
    measures: str
    guest_bytes: int
    normal_bytes: int
    output_bytes: int
    compress_seconds: list[float]
    decompress_seconds: list[float]

    def _rate(self, seconds: float) -> float:
        return self.guest_bytes / seconds / 1e9 if seconds > 0 else float("inf")

    @property
    def compress_gb_per_s(self) -> float:
        """Best of the repeats."""
        return self._rate(min(self.compress_seconds))

    @property
    def compress_gb_per_s_median(self) -> float:
        return self._rate(statistics.median(self.compress_seconds))

    @property
    def decompress_gb_per_s(self) -> float:
        return self._rate(min(self.decompress_seconds))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LibraryResult:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        return {
            "codec": self.codec,
            "level": self.level,
            "measures": self.measures,
            "guest_bytes": self.guest_bytes,
            "normal_bytes": self.normal_bytes,
            "output_bytes": self.output_bytes,
            "compress_seconds": self.compress_seconds,
            "decompress_seconds": self.decompress_seconds,
            "compress_gb_per_s": self.compress_gb_per_s,
            "compress_gb_per_s_median": self.compress_gb_per_s_median,
            "decompress_gb_per_s": self.decompress_gb_per_s,
        }


def measure(reference: Reference, codec: str, image: Path, repeats: int, page_size: int = 4096) -> LibraryResult:
    """Time ``reference`` on the pages of ``image`` (mapped read-only), ``repeats`` times each way.

    RuntimeError when the image has no normal page.
    """
    with open(image, "rb") as file:
        # Not closed explicitly: the packets' views pin it, and it goes with them.
        memory = memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
    packets = image_packets(memory, page_size)
    normal = sum(packet.size for packet in packets)
    if not normal:
        raise RuntimeError("the image has only zero pages, which never reach a codec: nothing for a library to do")
    compress: list[float] = []
    decompress: list[float] = []
    payloads: list[bytes] = []
    for _ in range(repeats):
        payloads = []  # the last repeat's output is freed before the next is made
        start = time.perf_counter()
        payloads = reference.compress(packets)
        compress.append(time.perf_counter() - start)
        start = time.perf_counter()
        decoded = reference.decompress(payloads, packets)
        decompress.append(time.perf_counter() - start)
        if decoded != normal:
            raise RuntimeError(f"{codec} reference decoded {decoded} bytes of {normal}")
    return LibraryResult(
        codec=codec,
        level=reference.level,
        measures=reference.measures,
        guest_bytes=len(memory),
        normal_bytes=normal,
        output_bytes=sum(map(len, payloads)) if payloads else normal,
        compress_seconds=compress,
        decompress_seconds=decompress,
    )


def measure_apart(codec: str, level: int | None, image: Path, repeats: int) -> LibraryResult:
    """:func:`measure` in a process of its own; RuntimeError with the reason where the reference cannot run.

    The bench process then keeps none of a library's state: libqatzip 1.3.1,
    for one, takes a pthread key for every session and every qzCompress call
    and never gives it back, and about a thousand calls use up the process's
    keys (after which matplotlib, say, cannot be imported).
    """
    argv = [*MFDCOMP[:2], "mfdcomp.bench.library", str(image), codec, "--repeats", str(repeats)]
    argv += [] if level is None else ["--level", str(level)]
    timeout = 300 + repeats * image.stat().st_size / 5e6  # zlib on random pages runs at 50 MB/s or more
    try:
        with Child(argv, f"the {codec} reference") as child:
            answer = json.loads(child.finish(timeout).stdout)
    except (ChildFailed, ValueError) as exc:
        raise RuntimeError(str(exc)) from exc
    if answer.get("not_run"):
        raise RuntimeError(answer["not_run"])
    return LibraryResult.from_dict(answer["result"])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mfdcomp.bench.library IMAGE CODEC``: one JSON object, ``result`` or ``not_run``."""
    parser = argparse.ArgumentParser(prog="python -m mfdcomp.bench.library", description=main.__doc__)
    parser.add_argument("image", type=Path)
    parser.add_argument("codec")
    parser.add_argument("--level", type=int)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        result = measure(reference_for(args.codec, args.level), args.codec, args.image, args.repeats)
    except RuntimeError as exc:
        print(json.dumps({"not_run": str(exc)}))
    else:
        print(json.dumps({"result": result.as_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

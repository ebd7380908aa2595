"""The codec contract: QEMU's MultiFDMethods, one object per channel.

A codec is described by a :class:`CodecInfo` and makes one
:class:`MultiFDMethods` per channel and direction, so stream state (a zlib or
zstd context) belongs to exactly one channel thread.
"""

from __future__ import annotations

import abc
import enum
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, overload, runtime_checkable

from typing_extensions import Buffer

from mfdcomp.errors import CodecError
from mfdcomp.wire import EXTENSION, RamPacket


class CodecPath(enum.StrEnum):
    """Which implementation produced or consumed a packet."""

    HARDWARE = "hardware"
    SOFTWARE = "software"
    RAW = "raw"


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """What a codec is, as the registry and ``mfdcomp codecs`` show it.

    ``qemu_flag`` is QEMU's MULTIFD_FLAG value; a codec QEMU lacks has None
    there and an ``extension_id`` instead. Codecs that share ``wire_format``
    must decode each other's payloads.
    """

    name: str
    qemu_flag: int | None
    wire_format: str
    stateful: bool
    paths: tuple[CodecPath, ...]
    levels: tuple[int, int] | None = None
    default_level: int | None = None
    extension_id: int | None = None
    page_sizes: tuple[int, ...] | None = None
    description: str = ""

    def check_level(self, level: int | None) -> int | None:
        if level is None:
            return self.default_level
        if self.levels is None:
            raise CodecError(f"codec {self.name} takes no level, got {level}")
        low, high = self.levels
        if not low <= level <= high:
            raise CodecError(f"{self.name} level must be {low}-{high}, got {level}")
        return level


class PageViews(Sequence[memoryview]):
    """The normal pages of one packet in memory: one view per page, or runs of adjacent pages.

    A codec that reads or writes pages as plain bytes (nocomp) takes
    :meth:`runs`, so a packet of consecutive pages is one buffer for
    ``sendmsg``/``recvmsg_into`` instead of 128.
    """

    __slots__ = ("_memory", "_offsets", "_page_size")

    def __init__(self, memory: memoryview, offsets: Sequence[int], page_size: int) -> None:
        self._memory = memory
        self._offsets = offsets
        self._page_size = page_size

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, index: int) -> memoryview: ...

    @overload
    def __getitem__(self, index: slice) -> list[memoryview]: ...

    def __getitem__(self, index: int | slice) -> memoryview | list[memoryview]:
        ps = self._page_size
        if isinstance(index, slice):
            return [self._memory[o : o + ps] for o in self._offsets[index]]
        offset = self._offsets[index]
        return self._memory[offset : offset + ps]

    def runs(self) -> list[memoryview]:
        """The pages in order, adjacent ones merged into one view."""
        ps = self._page_size
        offsets = self._offsets
        views: list[memoryview] = []
        if not offsets:
            return views
        start = end = offsets[0]
        for offset in offsets[1:]:
            end += ps
            if offset != end:
                views.append(self._memory[start:end])
                start = end = offset
        views.append(self._memory[start : end + ps])
        return views


@dataclass(slots=True)
class SendPayload:
    """What ``send_prepare`` made of one packet's normal pages."""

    buffers: list[Buffer]
    size: int
    path: CodecPath
    flags: int = 0


@dataclass(frozen=True, slots=True)
class PacketCompressor:
    """A channel context's compiled compressor, for the engine's compiled send path.

    ``capsule`` is a PyCapsule named ``mfdcomp.compressor.v1`` holding the
    ``mfdcomp_compressor`` of mfdcomp/_speedups.h: its compress() turns one
    packet's normal pages into the payload through this context's stream,
    without the GIL, byte for byte as ``send_prepare`` would (a channel may
    alternate between the two). Its packets carry no flags beyond the
    codec's ``flag`` and are counted under ``path``.
    """

    capsule: object
    path: CodecPath


@dataclass(frozen=True, slots=True)
class PacketDecompressor:
    """A channel context's compiled decompressor, for the engine's compiled receive loop.

    ``capsule`` is a PyCapsule named ``mfdcomp.decompressor.v1`` holding the
    ``mfdcomp_decompressor`` of mfdcomp/_speedups.h: its decompress() decodes
    one packet's payload into its pages through this context's stream,
    without the GIL, judging and wording a bad payload as ``recv`` would (a
    channel may alternate between the two). Its packets are counted under
    ``path``.
    """

    capsule: object
    path: CodecPath


class PayloadSource(Protocol):
    """The payload of the packet being received, still on the wire.

    ``size`` bytes follow (checked against the bounds already). A codec calls
    exactly one of the two methods, once per packet.
    """

    size: int

    def read(self) -> memoryview:
        """All ``size`` bytes, in a buffer the channel reuses for the next packet."""

    def read_into(self, views: Sequence[memoryview]) -> None:
        """Read the payload straight into ``views`` (their lengths add up to ``size``)."""


@dataclass(slots=True)
class ChannelOwner:
    """Detects a method object used by two channels or two threads."""

    channel: int | None = None
    thread: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bind(self, channel: int) -> None:
        with self.lock:
            if self.channel is not None:
                raise CodecError(f"codec context already set up for channel {self.channel}; one context per channel")
            self.channel = channel
            self.thread = threading.get_ident()

    def check(self) -> None:
        if self.channel is None:
            raise CodecError("codec context used before setup")
        if self.thread != threading.get_ident():
            raise CodecError(f"codec context of channel {self.channel} used from another thread")


class MultiFDMethods(abc.ABC):
    """One channel's codec, one direction: QEMU's six hooks.

    The engine calls ``send_setup``/``recv_setup`` once in the channel thread,
    then ``send_prepare`` or ``recv`` for every packet with normal pages, and
    the matching cleanup at the end, also on errors.
    """

    info: CodecInfo

    def __init__(self, page_size: int, level: int | None) -> None:
        self.page_size = page_size
        self.level = self.info.check_level(level)
        self.owner = ChannelOwner()

    def send_setup(self, channel: int) -> None:
        self.owner.bind(channel)

    @abc.abstractmethod
    def send_prepare(self, pages: Sequence[memoryview]) -> SendPayload:
        """Encode the normal pages of one packet."""

    def send_cleanup(self) -> None:
        """Release what send_setup made (default: nothing)."""

    def packet_compressor(self) -> PacketCompressor | None:
        """Optional, after ``send_setup``: a compiled twin of ``send_prepare`` (default: none)."""
        return None

    def recv_setup(self, channel: int) -> None:
        self.owner.bind(channel)

    @abc.abstractmethod
    def recv(self, packet: RamPacket, source: PayloadSource, pages: Sequence[memoryview]) -> CodecPath:
        """Fill ``pages`` (the packet's normal pages in target memory) from the payload."""

    def recv_cleanup(self) -> None:
        """Release what recv_setup made (default: nothing)."""

    def packet_decompressor(self) -> PacketDecompressor | None:
        """Optional, after ``recv_setup``: a compiled twin of ``recv`` (default: none)."""
        return None

    @property
    def implementation(self) -> str:
        """The library this context encodes and decodes with (``isal``, ``zlib``, ``libqpl``), "" if unsaid.

        The engine counts packets by it, so a run's statistics say which
        implementation produced (or consumed) each packet.
        """
        return ""

    @property
    def flag(self) -> int:
        """Codec bits this codec puts in hdr.flags: QEMU's flag, or EXTENSION for an mfdcomp extension."""
        return EXTENSION if self.info.qemu_flag is None else self.info.qemu_flag

    @property
    def extension_id(self) -> int:
        """What a RAM packet carries in its extension-id word (0 for QEMU's codecs)."""
        return self.info.extension_id or 0


@dataclass(frozen=True, slots=True)
class PathProbe:
    """Whether one path of a codec can run on this host, and why.

    ``library`` and ``version`` name what the path would load (``libqatzip.so.3``,
    ``zlib 1.2.13``); ``reason`` is written for a person deciding what to fix.
    """

    path: CodecPath
    available: bool
    reason: str
    library: str | None = None
    version: str | None = None


class Codec(Protocol):
    """What a plugin registers: a description, a probe and a per-channel factory.

    ``probe()`` is the only place a vendor library may be loaded or a device
    opened; a codec caches its answer. ``methods(page_size, level, path)``
    makes one channel's context that sends through ``path`` (one of the
    available ones); every context decodes whatever its wire format allows.
    """

    info: CodecInfo

    def probe(self) -> Sequence[PathProbe]: ...

    def methods(self, page_size: int, level: int | None, path: CodecPath) -> MultiFDMethods: ...


@runtime_checkable
class HasImplementations(Protocol):
    """Optional: a codec with more than one implementation of its wire format on one path.

    ``implementations()`` maps a label to a codec object built on another
    implementation (a vendor library and a pure-Python writer, say); the
    conformance suite cross-decodes every one of them against every other.
    """

    def implementations(self) -> Mapping[str, Codec]: ...

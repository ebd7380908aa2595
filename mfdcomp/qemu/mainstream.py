"""Pure parser of the RAM part of a QEMU precopy main migration stream.

``parse_main_stream(data)`` takes the bytes of a recorded main channel (the
connection that starts with ``QEVM``) and returns the RAMBlock list and the
ordered RAM records of the ``ram`` section. It does no I/O.

What it walks, in order:

1. the file header: be32 magic ``QEVM``, be32 version 3;
2. the optional configuration section (``0x07``): be32 length, the machine
   type, then any ``0x05`` subsections among the three QEMU defines
   (``configuration/target-page-bits``: be32; ``configuration/capabilities``:
   be32 count, then per capability u8 length + name; ``configuration/uuid``:
   16 bytes). An unknown subsection is a :class:`WireError`: its contents
   carry no length, so it cannot be skipped;
3. sections until the RAM "complete" section has ended:

   * ``QEMU_VM_COMMAND`` (``0x08``): be16 command, be16 length, data. The
     data is skipped; commands are reported in :attr:`MainStream.commands`.
   * ``SECTION_START`` (``0x01``) / ``SECTION_FULL`` (``0x04``): be32 section
     id, u8 length + idstr, be32 instance id, be32 version id. Only a START
     of ``ram`` (version 4) is parsed; its section id is remembered.
   * ``SECTION_PART`` (``0x02``) / ``SECTION_END`` (``0x03``): be32 section
     id, which must be the RAM section's id.
   * every section ends with a footer: ``0x7e`` + be32 section id. Footers
     are required (QEMU writes them for every machine type since 2.4).

Parsing stops right after the footer of the RAM END section:
:attr:`MainStream.end_offset` is that position. What follows (device FULL
sections, ``QEMU_VM_EOF``, the JSON description) is opaque and not read.

Anything else before that point cannot be parsed and raises a
:class:`WireError` naming it: a non-RAM section (other iterable sections and
device sections carry opaque data without a length), a command that changes
the framing (``PACKAGED``), an unknown command, ``QEMU_VM_EOF``, an unknown
section type.

RAM records (inside a RAM section): a be64 word whose low bits (below
``page_size``) are flags and whose high bits are an address:

* ``MEM_SIZE`` (0x04): only as the first record of the START section; the
  address is the total RAM size, followed by (u8 length, name, be64
  used_length) per RAMBlock until the lengths add up to the total. With the
  ``x-ignore-shared`` capability in the configuration section each block
  also carries a be64 address (skipped). The ``mapped-ram`` capability
  (file migration) is refused.
* ``ZERO`` (0x02): [u8 length + block name unless ``CONTINUE`` (0x20)], then
  one fill byte. ``PAGE`` (0x08): same block reference, then ``page_size``
  bytes. The address is the offset in the block, and must be below its
  used_length. ``CONTINUE`` reuses the block of the previous ZERO/PAGE record
  (also across sections, as QEMU's loader does).
* ``MULTIFD_FLUSH`` (0x200) and ``EOS`` (0x10) stand alone with address 0.
  EOS ends the section's RAM data.
* ``XBZRLE``, ``COMPRESS_PAGE`` and ``HOOK`` (RDMA) are refused as
  unsupported; any other combination of flags is a :class:`WireError`.

Sync epochs: a record's ``epoch`` is the number of sync points before it in
the stream. A stream with at least one MULTIFD_FLUSH record is "per-round"
(QEMU 8.1+ machine types): the sync points are the MULTIFD_FLUSH records.
Otherwise it is "per-section" (7.2 and machine types <= 8.0): the sync points
are the EOS records. A sync record's own epoch does not count itself.

Truncation: a stream that ends before the footer of the RAM END section has
been read raises :class:`TruncatedError`, wherever it ends (inside a record or
between two). There are no partial results: every prefix of a capture that
ends before :attr:`MainStream.end_offset` raises, every longer prefix gives the
same result as the whole capture.

Not supported (assumptions): postcopy streams whose RAMBlocks use host huge
pages (QEMU then adds a be64 page size per block in MEM_SIZE that the stream
does not announce; such a stream is rejected as malformed, not misread, as
long as the extra word does not happen to look like a block entry), section
footers missing (machine types before 2.4), streams without the RAM section.

Pages are returned as :class:`memoryview` slices of the input, without a
copy: if the input is a mutable buffer, copy the pages before reusing it.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from mfdcomp.errors import TruncatedError, WireError

__all__ = [
    "EosRecord",
    "MainStream",
    "MultifdFlushRecord",
    "PageRecord",
    "RamRecord",
    "SectionKind",
    "SyncMode",
    "VmCommand",
    "ZeroPageRecord",
    "parse_main_stream",
]

# --- savevm stream framing -------------------------------------------------

QEMU_VM_FILE_MAGIC: Final = 0x5145564D  # "QEVM"
QEMU_VM_FILE_VERSION: Final = 3

QEMU_VM_EOF: Final = 0x00
QEMU_VM_SECTION_START: Final = 0x01
QEMU_VM_SECTION_PART: Final = 0x02
QEMU_VM_SECTION_END: Final = 0x03
QEMU_VM_SECTION_FULL: Final = 0x04
QEMU_VM_SUBSECTION: Final = 0x05
QEMU_VM_VMDESCRIPTION: Final = 0x06
QEMU_VM_CONFIGURATION: Final = 0x07
QEMU_VM_COMMAND: Final = 0x08
QEMU_VM_SECTION_FOOTER: Final = 0x7E

RAM_SECTION_IDSTR: Final = "ram"
RAM_SECTION_VERSION: Final = 4

# Migration commands (enum qemu_vm_cmd) and the data length QEMU requires for
# each; None means variable. PACKAGED (7) is followed by a nested stream
# outside its data, so it cannot be skipped.
MIG_CMD_PACKAGED: Final = 7
_COMMAND_LENGTHS: Final[Mapping[int, int | None]] = MappingProxyType(
    {
        1: 0,  # OPEN_RETURN_PATH
        2: 4,  # PING
        3: None,  # POSTCOPY_ADVISE
        4: 0,  # POSTCOPY_LISTEN
        5: 0,  # POSTCOPY_RUN
        6: None,  # POSTCOPY_RAM_DISCARD
        MIG_CMD_PACKAGED: 4,
        8: 0,  # ENABLE_COLO
        9: 0,  # POSTCOPY_RESUME
        10: None,  # RECV_BITMAP
        11: 0,  # SWITCHOVER_START
    }
)

# --- RAM record flags (low bits of the be64 record word) -------------------

RAM_SAVE_FLAG_ZERO: Final = 0x002
RAM_SAVE_FLAG_MEM_SIZE: Final = 0x004
RAM_SAVE_FLAG_PAGE: Final = 0x008
RAM_SAVE_FLAG_EOS: Final = 0x010
RAM_SAVE_FLAG_CONTINUE: Final = 0x020
RAM_SAVE_FLAG_XBZRLE: Final = 0x040
RAM_SAVE_FLAG_HOOK: Final = 0x080
RAM_SAVE_FLAG_COMPRESS_PAGE: Final = 0x100
RAM_SAVE_FLAG_MULTIFD_FLUSH: Final = 0x200
_KNOWN_FLAGS: Final = 0x3FE
_UNSUPPORTED_FLAGS: Final[Mapping[int, str]] = MappingProxyType(
    {
        RAM_SAVE_FLAG_XBZRLE: "XBZRLE",
        RAM_SAVE_FLAG_HOOK: "HOOK (RDMA)",
        RAM_SAVE_FLAG_COMPRESS_PAGE: "COMPRESS_PAGE",
    }
)

# Capabilities the configuration section may list that change the RAM layout.
CAP_IGNORE_SHARED: Final = "x-ignore-shared"
CAP_MAPPED_RAM: Final = "mapped-ram"

UUID_SIZE: Final = 16
MIN_PAGE_SIZE: Final = 1 << 10
MAX_PAGE_SIZE: Final = 1 << 16

# --- fixed layouts, all big-endian -----------------------------------------

_FILE_HEADER: Final = struct.Struct(">II")  # magic, version
_U8: Final = struct.Struct(">B")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_SECTION_ID: Final = struct.Struct(">I")  # after the section type byte
_INSTANCE_VERSION: Final = struct.Struct(">II")  # after the idstr of START/FULL
_FOOTER: Final = struct.Struct(">BI")  # 0x7e, section id
_COMMAND: Final = struct.Struct(">HH")  # after the 0x08 byte: command, length

# --- results ----------------------------------------------------------------

SyncMode = Literal["per-round", "per-section"]
SectionKind = Literal["start", "part", "end"]


@dataclass(frozen=True, slots=True)
class ZeroPageRecord:
    """``RAM_SAVE_FLAG_ZERO``: the page at ``offset`` of ``block`` is filled with ``fill``."""

    block: str
    offset: int
    fill: int
    epoch: int
    pos: int  # stream offset of the record's be64 word


@dataclass(frozen=True, slots=True)
class PageRecord:
    """``RAM_SAVE_FLAG_PAGE``: ``data`` (one page, a view into the input) goes to ``offset`` of ``block``."""

    block: str
    offset: int
    data: memoryview
    epoch: int
    pos: int


@dataclass(frozen=True, slots=True)
class MultifdFlushRecord:
    """``RAM_SAVE_FLAG_MULTIFD_FLUSH``: the sync point of per-round streams."""

    epoch: int
    pos: int


@dataclass(frozen=True, slots=True)
class EosRecord:
    """``RAM_SAVE_FLAG_EOS``: end of the RAM data of one section (sync point of per-section streams)."""

    section: SectionKind
    epoch: int
    pos: int


RamRecord = ZeroPageRecord | PageRecord | MultifdFlushRecord | EosRecord


@dataclass(frozen=True, slots=True)
class VmCommand:
    """A ``QEMU_VM_COMMAND`` met before the end of RAM; ``pos`` is the offset of its 0x08 byte."""

    cmd: int
    length: int
    pos: int


@dataclass(frozen=True, slots=True)
class MainStream:
    """What :func:`parse_main_stream` found.

    ``ramblocks`` maps each RAMBlock name to its used_length, in stream order
    (read-only). ``end_offset`` is where parsing stopped: just after the
    footer of the RAM END section.
    """

    machine_type: str | None
    capabilities: tuple[str, ...]
    ramblocks: Mapping[str, int]
    ram_section_id: int
    ram_sections: tuple[SectionKind, ...]
    records: tuple[RamRecord, ...]
    commands: tuple[VmCommand, ...]
    sync_mode: SyncMode
    sync_points: int
    end_offset: int


# --- reading ------------------------------------------------------------------


class _Reader:
    """Bounds-checked cursor over the input; every shortfall is a TruncatedError."""

    __slots__ = ("pos", "view")

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.pos = 0

    def _need(self, size: int, field: str) -> None:
        left = len(self.view) - self.pos
        if left < size:
            raise TruncatedError(
                f"stream ends inside {field} at offset {self.pos}: {size} bytes needed, {left} left",
                field=field,
                value=left,
                limit=size,
            )

    def unpack(self, layout: struct.Struct, field: str) -> tuple[int, ...]:
        self._need(layout.size, field)
        values: tuple[int, ...] = layout.unpack_from(self.view, self.pos)
        self.pos += layout.size
        return values

    def u8(self, field: str) -> int:
        return self.unpack(_U8, field)[0]

    def u32(self, field: str) -> int:
        return self.unpack(_U32, field)[0]

    def u64(self, field: str) -> int:
        return self.unpack(_U64, field)[0]

    def peek(self, field: str) -> int:
        self._need(1, field)
        return self.view[self.pos]

    def take(self, size: int, field: str) -> memoryview:
        self._need(size, field)
        start = self.pos
        self.pos += size
        return self.view[start : self.pos]

    def text(self, size: int, field: str) -> str:
        raw = bytes(self.take(size, field))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WireError(f"{field} is not UTF-8: {raw!r}", field=field, value=raw) from None

    def name(self, field: str) -> str:
        """A u8 length and that many bytes: an idstr, a RAMBlock or capability name."""
        text = self.text(self.u8(field), field)
        if not text:
            raise WireError(f"empty {field} at offset {self.pos - 1}", field=field, value=text)
        return text


@dataclass
class _State:
    page_size: int
    ignore_shared: bool
    ramblocks: dict[str, int] | None = None
    last_block: str | None = None
    records: list[RamRecord] = dataclasses.field(default_factory=list)
    flushes_before: list[int] = dataclasses.field(default_factory=list)
    flushes: int = 0
    eoses: int = 0

    def add(self, record: RamRecord) -> None:
        # The provisional epoch counts EOS records (per-section); the count of
        # flushes is kept aside in case the stream turns out to be per-round.
        self.records.append(record)
        self.flushes_before.append(self.flushes)


def _parse_configuration(reader: _Reader, page_size: int) -> tuple[str, tuple[str, ...]]:
    machine_type = reader.text(reader.u32("configuration.len"), "configuration.name")
    capabilities: list[str] = []
    while reader.peek("section_type") == QEMU_VM_SUBSECTION:
        reader.pos += 1
        name = reader.name("subsection.name")
        version = reader.u32("subsection.version_id")
        if version != 1:
            raise WireError(
                f"configuration subsection {name!r} has version {version}",
                field="subsection.version_id",
                value=version,
                limit=1,
            )
        if name == "configuration/target-page-bits":
            bits = reader.u32("target_page_bits")
            if bits >= 32 or 1 << bits != page_size:
                raise WireError(
                    f"stream's target page bits {bits} do not match page_size {page_size}",
                    field="target_page_bits",
                    value=bits,
                    limit=page_size.bit_length() - 1,
                )
        elif name == "configuration/capabilities":
            count = reader.u32("capabilities.count")
            capabilities.extend(reader.name("capability") for _ in range(count))
        elif name == "configuration/uuid":
            reader.take(UUID_SIZE, "uuid")
        else:
            raise WireError(
                f"unknown configuration subsection {name!r}: its contents cannot be skipped",
                field="subsection.name",
                value=name,
            )
    return machine_type, tuple(capabilities)


def _parse_command(reader: _Reader, pos: int) -> VmCommand:
    cmd, length = reader.unpack(_COMMAND, "command")
    if cmd not in _COMMAND_LENGTHS:
        raise WireError(f"unknown migration command {cmd} at offset {pos}", field="command", value=cmd)
    if cmd == MIG_CMD_PACKAGED:
        raise WireError(
            f"PACKAGED command (postcopy) at offset {pos} is not supported",
            field="command",
            value=cmd,
        )
    expected = _COMMAND_LENGTHS[cmd]
    if expected is not None and length != expected:
        raise WireError(
            f"migration command {cmd} at offset {pos} has length {length}",
            field="command.len",
            value=length,
            limit=expected,
        )
    reader.take(length, "command.data")
    return VmCommand(cmd=cmd, length=length, pos=pos)


def _parse_mem_size(reader: _Reader, state: _State, total: int) -> None:
    blocks: dict[str, int] = {}
    while total:
        name = reader.name("ramblock.name")
        length = reader.u64("ramblock.used_length")
        if name in blocks:
            raise WireError(f"RAMBlock {name!r} listed twice", field="ramblock.name", value=name)
        if length > total:
            raise WireError(
                f"RAMBlock {name!r} is longer ({length}) than the RAM left in MEM_SIZE ({total})",
                field="ramblock.used_length",
                value=length,
                limit=total,
            )
        if state.ignore_shared:
            reader.u64("ramblock.addr")
        blocks[name] = length
        total -= length
    state.ramblocks = blocks


def _block_of(reader: _Reader, state: _State, flags: int) -> tuple[str, int]:
    if flags & RAM_SAVE_FLAG_CONTINUE:
        if state.last_block is None:
            raise WireError("CONTINUE flag with no previous RAMBlock", field="ram.flags", value=flags)
        name = state.last_block
    else:
        name = reader.name("ramblock.name")
    blocks = state.ramblocks or {}
    if name not in blocks:
        raise WireError(f"unknown RAMBlock {name!r}", field="ramblock.name", value=name)
    state.last_block = name
    return name, blocks[name]


def _check_no_address(address: int, flags: int, pos: int) -> None:
    if address:
        raise WireError(
            f"RAM record 0x{flags:x} at offset {pos} carries address 0x{address:x}",
            field="ram.addr",
            value=address,
            limit=0,
        )


def _parse_ram_section(reader: _Reader, state: _State, kind: SectionKind) -> None:
    """Read RAM records up to and including the section's EOS."""
    page_mask = state.page_size - 1
    first = True
    while True:
        pos = reader.pos
        word = reader.u64("ram.flags")
        flags = word & page_mask
        address = word & ~page_mask
        kind_flags = flags & ~RAM_SAVE_FLAG_CONTINUE
        if flags & ~_KNOWN_FLAGS:
            raise WireError(
                f"unknown RAM flags 0x{flags:x} at offset {pos}", field="ram.flags", value=flags, limit=_KNOWN_FLAGS
            )
        is_mem_size = kind_flags == RAM_SAVE_FLAG_MEM_SIZE
        if (kind == "start" and first) != is_mem_size:
            raise WireError(
                f"MEM_SIZE must be the first record of the RAM setup section and only there (offset {pos})",
                field="ram.flags",
                value=flags,
            )
        first = False
        if kind_flags in (RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE):
            block, used_length = _block_of(reader, state, flags)
            if address >= used_length:
                raise WireError(
                    f"offset 0x{address:x} beyond RAMBlock {block!r} (used_length {used_length}) at {pos}",
                    field="ram.addr",
                    value=address,
                    limit=used_length,
                )
            if kind_flags == RAM_SAVE_FLAG_ZERO:
                fill = reader.u8("ram.fill")
                state.add(ZeroPageRecord(block, address, fill, state.eoses, pos))
            else:
                page = reader.take(state.page_size, "ram.page")
                state.add(PageRecord(block, address, page, state.eoses, pos))
            continue
        if flags & RAM_SAVE_FLAG_CONTINUE:
            raise WireError(
                f"CONTINUE flag on a non-page RAM record 0x{flags:x} at offset {pos}",
                field="ram.flags",
                value=flags,
            )
        if is_mem_size:
            _parse_mem_size(reader, state, address)
        elif kind_flags == RAM_SAVE_FLAG_MULTIFD_FLUSH:
            _check_no_address(address, flags, pos)
            state.add(MultifdFlushRecord(state.eoses, pos))
            state.flushes += 1
        elif kind_flags == RAM_SAVE_FLAG_EOS:
            _check_no_address(address, flags, pos)
            state.add(EosRecord(kind, state.eoses, pos))
            state.eoses += 1
            return
        elif kind_flags in _UNSUPPORTED_FLAGS:
            raise WireError(
                f"unsupported RAM record {_UNSUPPORTED_FLAGS[kind_flags]} at offset {pos}",
                field="ram.flags",
                value=flags,
            )
        else:
            raise WireError(
                f"invalid combination of RAM flags 0x{flags:x} at offset {pos}", field="ram.flags", value=flags
            )


def _check_footer(reader: _Reader, section_id: int) -> None:
    marker, footer_id = reader.unpack(_FOOTER, "section_footer")
    if marker != QEMU_VM_SECTION_FOOTER or footer_id != section_id:
        raise WireError(
            f"bad section footer before offset {reader.pos}: 0x{marker:02x} id {footer_id}, "
            f"expected 0x7e id {section_id}",
            field="section_footer",
            value=(marker, footer_id),
            limit=(QEMU_VM_SECTION_FOOTER, section_id),
        )


def _check_page_size(page_size: int) -> None:
    if not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two in [{MIN_PAGE_SIZE}, {MAX_PAGE_SIZE}], not {page_size}")


_SECTION_TYPE_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {
        QEMU_VM_EOF: "QEMU_VM_EOF",
        QEMU_VM_SUBSECTION: "QEMU_VM_SUBSECTION",
        QEMU_VM_VMDESCRIPTION: "QEMU_VM_VMDESCRIPTION",
        QEMU_VM_CONFIGURATION: "QEMU_VM_CONFIGURATION",
        QEMU_VM_SECTION_FOOTER: "QEMU_VM_SECTION_FOOTER",
    }
)
_KIND_OF: Final[Mapping[int, SectionKind]] = MappingProxyType(
    {QEMU_VM_SECTION_START: "start", QEMU_VM_SECTION_PART: "part", QEMU_VM_SECTION_END: "end"}
)


def parse_main_stream(data: bytes | bytearray | memoryview, page_size: int = 4096) -> MainStream:
    """Parse a QEMU main migration stream up to the end of its RAM END section.

    Raises :class:`TruncatedError` if ``data`` ends before that point and
    :class:`WireError` for anything malformed or not parseable (see the module
    docstring). ``page_size`` is the target page size (4096 on x86); a
    ``ValueError`` is raised if it is not a power of two between 1 KiB and
    64 KiB.
    """
    _check_page_size(page_size)
    reader = _Reader(memoryview(data).cast("B"))
    magic, version = reader.unpack(_FILE_HEADER, "file_header")
    if magic != QEMU_VM_FILE_MAGIC:
        raise WireError(
            f"not a QEMU main stream: magic 0x{magic:08x}", field="magic", value=magic, limit=QEMU_VM_FILE_MAGIC
        )
    if version != QEMU_VM_FILE_VERSION:
        raise WireError(
            f"unsupported savevm version {version}", field="version", value=version, limit=QEMU_VM_FILE_VERSION
        )

    machine_type: str | None = None
    capabilities: tuple[str, ...] = ()
    if reader.peek("section_type") == QEMU_VM_CONFIGURATION:
        reader.pos += 1
        machine_type, capabilities = _parse_configuration(reader, page_size)
    if CAP_MAPPED_RAM in capabilities:
        raise WireError(
            "mapped-ram streams (file migration) are not supported", field="capability", value=CAP_MAPPED_RAM
        )

    state = _State(page_size=page_size, ignore_shared=CAP_IGNORE_SHARED in capabilities)
    commands: list[VmCommand] = []
    sections: list[SectionKind] = []
    ram_id: int | None = None
    while not sections or sections[-1] != "end":
        pos = reader.pos
        section_type = reader.u8("section_type")
        if section_type == QEMU_VM_COMMAND:
            commands.append(_parse_command(reader, pos))
            continue
        if section_type in (QEMU_VM_SECTION_START, QEMU_VM_SECTION_FULL):
            (section_id,) = reader.unpack(_SECTION_ID, "section_id")
            idstr = reader.name("section.idstr")
            _instance, section_version = reader.unpack(_INSTANCE_VERSION, "section.instance_version")
            if section_type == QEMU_VM_SECTION_FULL or idstr != RAM_SECTION_IDSTR or ram_id is not None:
                raise WireError(
                    f"section {idstr!r} (id {section_id}, type {section_type}) at offset {pos} comes before "
                    "the end of RAM and its contents cannot be parsed",
                    field="section.idstr",
                    value=idstr,
                )
            if section_version != RAM_SECTION_VERSION:
                raise WireError(
                    f"RAM section version {section_version}",
                    field="section.version_id",
                    value=section_version,
                    limit=RAM_SECTION_VERSION,
                )
            ram_id = section_id
        elif section_type in (QEMU_VM_SECTION_PART, QEMU_VM_SECTION_END):
            (section_id,) = reader.unpack(_SECTION_ID, "section_id")
            if section_id != ram_id:
                raise WireError(
                    f"section id {section_id} at offset {pos} is not the RAM section"
                    f" ({'not started yet' if ram_id is None else f'id {ram_id}'}): its contents cannot be parsed",
                    field="section_id",
                    value=section_id,
                    limit=ram_id,
                )
        else:
            what = _SECTION_TYPE_NAMES.get(section_type, "unknown section type")
            raise WireError(
                f"{what} (0x{section_type:02x}) at offset {pos} before the end of RAM",
                field="section_type",
                value=section_type,
            )
        kind = _KIND_OF[section_type]
        _parse_ram_section(reader, state, kind)
        _check_footer(reader, section_id)
        sections.append(kind)

    records = state.records
    if state.flushes:
        sync_mode: SyncMode = "per-round"
        records = [dataclasses.replace(r, epoch=f) for r, f in zip(records, state.flushes_before, strict=True)]
        sync_points = state.flushes
    else:
        sync_mode = "per-section"
        sync_points = state.eoses
    assert state.ramblocks is not None and ram_id is not None  # a START with MEM_SIZE was parsed
    return MainStream(
        machine_type=machine_type,
        capabilities=capabilities,
        ramblocks=MappingProxyType(state.ramblocks),
        ram_section_id=ram_id,
        ram_sections=tuple(sections),
        records=tuple(records),
        commands=tuple(commands),
        sync_mode=sync_mode,
        sync_points=sync_points,
        end_offset=reader.pos,
    )

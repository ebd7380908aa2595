"""Numbers fixed by QEMU's multifd wire format (spec §1-4)."""

from __future__ import annotations

import enum

MULTIFD_MAGIC = 0x11223344
MULTIFD_VERSION = 1
QEMU_VM_FILE_MAGIC = 0x5145564D  # "QEVM": the first word of QEMU's main stream

# Every RAM packet describes up to 512 KiB of pages (MULTIFD_PACKET_SIZE).
MULTIFD_PACKET_SIZE = 512 * 1024
DEFAULT_PAGE_SIZE = 4096

# QEMU's zlib/zstd receivers read a payload into a buffer of twice the packet
# size; nothing larger can be accepted by a real destination.
MAX_PAYLOAD = 2 * MULTIFD_PACKET_SIZE

RAMBLOCK_NAME_LEN = 256


class Flag(enum.IntFlag):
    """``hdr.flags`` bits. Codec values are distinct bits from QPL on."""

    SYNC = 0x01
    ZLIB = 0x02
    ZSTD = 0x04
    QPL = 0x08
    UADK = 0x10
    QATZIP = 0x20
    DEVICE_STATE = 0x40


NOCOMP = 0x00
# All codec bits as of QEMU 9.2 (0x1f << 1).
COMPRESSION_MASK = 0x3E
# Every codec bit at once: an mfdcomp extension codec (one QEMU does not have),
# named by the RAM packet's extension id. Each QEMU receiver compares the bits
# with its own single flag, so every one of them refuses such a packet.
EXTENSION = COMPRESSION_MASK

CODEC_NAMES: dict[int, str] = {
    NOCOMP: "none",
    Flag.ZLIB: "zlib",
    Flag.ZSTD: "zstd",
    Flag.QPL: "qpl",
    Flag.UADK: "uadk",
    Flag.QATZIP: "qatzip",
}


def codec_name(flags: int, extension_id: int = 0) -> str:
    """Name of the codec that the codec bits of ``flags`` (and an extension id) select."""
    bits = flags & COMPRESSION_MASK
    if bits == EXTENSION:
        return f"mfdcomp extension {extension_id}"
    return CODEC_NAMES.get(bits, f"unknown(0x{bits:02x})")


def page_count(page_size: int = DEFAULT_PAGE_SIZE) -> int:
    """Capacity of one RAM packet's offset array (128 for 4 KiB pages)."""
    if page_size <= 0 or page_size & (page_size - 1) or page_size > MULTIFD_PACKET_SIZE:
        raise ValueError(f"page size must be a power of two up to 512 KiB, got {page_size}")
    return MULTIFD_PACKET_SIZE // page_size

"""Guest RAM of the source and the destination: memory-mapped blocks with dirty pages.

A :class:`RamClient` holds RAM blocks in order, like QEMU's RAMBlock list. The
source maps image files privately (copy-on-write), so dirty rounds can change
pages without ever touching the files; the destination maps zeroed target
files shared, so what the channels write lands in the files. Staged targets
are temporary files beside their final names, renamed over them only by
:meth:`RamClient.commit` (after the transfer is verified) and removed by
:meth:`RamClient.close` otherwise: a failed transfer never leaves a file that
looks complete, nor touches one that was there.

Each block has a dirty bitmap (one bool per page), all set at first: round 0
sends everything. :meth:`RamClient.iter_batches` walks the dirty pages block
by block, as QEMU's migration thread fills one batch per RAMBlock.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from mfdcomp import pagedigest
from mfdcomp.clients.reserve import check_memory, check_room, reserve
from mfdcomp.errors import ImageError, MfdcompError, NoSpaceError, TargetError
from mfdcomp.wire.constants import MULTIFD_PACKET_SIZE, RAMBLOCK_NAME_LEN

__all__ = [
    "DIGESTS",
    "DIGEST_HEX",
    "MIN_PAGE_SIZE",
    "RamBlock",
    "RamClient",
    "block_digest",
    "check_digest_available",
    "check_page_size",
    "parse_image_spec",
]

# Zero-page detection reads pages as 8-byte words; half pages need two halves.
MIN_PAGE_SIZE = 64

# Hash in pieces so the GIL is released per piece and no piece is copied.
_HASH_CHUNK = 8 << 20
# BLAKE3 spreads one call over threads (max_threads): pieces this large keep every thread busy.
_BLAKE3_CHUNK = 256 << 20

# Digest algorithms of a transfer's verification, each with its hex length (checked on a peer's DIGESTS).
# sha256: the reference, and what an older mfdcomp speaks; blake3: several times faster, tree-parallel;
# xxh3-128: per page, computed while the pages move (mfdcomp/pagedigest.py), the default.
DIGEST_HEX = {"sha256": 64, "blake3": 64, pagedigest.ALGORITHM: 32}
DIGESTS = tuple(DIGEST_HEX)


def check_digest_available(algorithm: str) -> str:
    """``algorithm`` if this mfdcomp can compute it here; an MfdcompError saying why otherwise."""
    if algorithm not in DIGEST_HEX:
        raise MfdcompError(f"unknown digest {algorithm!r}; digests: {', '.join(DIGESTS)}")
    if algorithm == "blake3":
        try:
            import blake3  # noqa: F401
        except ImportError as exc:
            raise MfdcompError("digest blake3 needs the blake3 package (pip install blake3), or use sha256") from exc
    return algorithm


def block_digest(
    memory: memoryview, algorithm: str, page_size: int = 4096, *, data: list[tuple[int, int]] | None = None
) -> str:
    """The hex digest of ``memory`` by ``algorithm`` (see DIGEST_HEX), read in place.

    ``page_size`` matters to xxh3-128 only (a digest per page). With ``data`` (sorted byte ranges,
    page-aligned), only those ranges are read and the rest counts as zeros: a sparse file's holes,
    which a read through a tmpfs mapping would allocate.
    """
    if check_digest_available(algorithm) == pagedigest.ALGORITHM:
        return pagedigest.block_digest(memory, page_size, data)
    if algorithm == "blake3":
        from blake3 import blake3

        # AUTO: as many threads as cores; blake3 releases the GIL while it hashes.
        hasher: Any = blake3(max_threads=blake3.AUTO)
        chunk = _BLAKE3_CHUNK
    else:
        hasher, chunk = hashlib.sha256(), _HASH_CHUNK
    zeros = bytes(min(chunk, memory.nbytes))
    step = len(zeros) or 1
    at = 0
    for start, end in [(0, memory.nbytes)] if data is None else data:
        for gap in range(at, start, step):
            hasher.update(zeros[: min(step, start - gap)])
        for piece_start in range(start, end, chunk):
            with memory[piece_start : min(piece_start + chunk, end)] as piece:
                hasher.update(piece)
        at = end
    for gap in range(at, memory.nbytes, step):
        hasher.update(zeros[: min(step, memory.nbytes - gap)])
    return str(hasher.hexdigest())


def _data_ranges(fd: int, size: int, page_size: int) -> list[tuple[int, int]]:
    """The byte ranges of ``fd``'s file that hold data (SEEK_DATA/SEEK_HOLE), widened to whole pages."""
    ranges: list[tuple[int, int]] = []
    at = 0
    try:
        while at < size:
            try:
                start = os.lseek(fd, at, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break  # only a hole from here on
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            start = start // page_size * page_size
            end = min(-(-end // page_size) * page_size, size)
            if ranges and start <= ranges[-1][1]:
                start = ranges.pop()[0]
            ranges.append((start, end))
            at = end
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise TargetError(f"cannot find the data of a target file: {exc.strerror or exc}") from exc
        return [(0, size)]  # no SEEK_DATA here: read it all
    return ranges


Layout = Iterable[tuple[str, int]]
PathFor = Callable[[str], str | os.PathLike[str]]


def check_page_size(page_size: int) -> int:
    """``page_size`` if it is a power of two from 64 B to 512 KiB (what one packet can carry)."""
    if not MIN_PAGE_SIZE <= page_size <= MULTIFD_PACKET_SIZE or page_size & (page_size - 1):
        raise MfdcompError(f"page size must be a power of two from {MIN_PAGE_SIZE} B to 512 KiB, got {page_size}")
    return page_size


def parse_image_spec(spec: str, index: int) -> tuple[str, Path]:
    """``PATH`` or ``NAME=PATH``; an unnamed image is called ``ram<index>``.

    Text before the first ``=`` is a name only if it holds no path separator,
    so ``dir/a=b.img`` is a path; write ``./x=y`` for a file named ``x=y``.
    """
    name, sep, path = spec.partition("=")
    if sep and name and os.sep not in name and "/" not in name:
        return name, Path(path)
    return f"ram{index}", Path(spec)


def _check_name(name: str) -> None:
    encoded = name.encode()
    # The packet's name field is NUL-terminated: at most 255 bytes of name.
    if not encoded or len(encoded) >= RAMBLOCK_NAME_LEN or b"\0" in encoded:
        raise MfdcompError(f"ramblock name must be 1-{RAMBLOCK_NAME_LEN - 1} bytes without NUL, got {name!r}")


def _check_size(what: str, size: int, page_size: int) -> None:
    if size <= 0:
        raise MfdcompError(f"{what} is empty; a RAM block needs at least one page")
    if size % page_size:
        raise MfdcompError(f"size of {what} ({size} bytes) is not a multiple of the page size {page_size}")


def _checked_layout(layout: Layout, page_size: int) -> list[tuple[str, int]]:
    """The layout as a list, every name and size checked before anything is created."""
    check_page_size(page_size)
    checked = list(layout)
    names: set[str] = set()
    for name, size in checked:
        _check_name(name)
        if name in names:
            raise MfdcompError(f"ramblock name {name!r} given twice")
        names.add(name)
        _check_size(f"ramblock {name!r}", size, page_size)
    return checked


@dataclass(eq=False)
class RamBlock:
    """One RAM block: ``size`` bytes of ``memory`` in pages of ``page_size``.

    ``memory`` is a flat unsigned-byte view of the mapping; it is released by
    :meth:`RamClient.close`, after which using it raises ``ValueError``.
    """

    name: str
    size: int
    page_size: int
    memory: memoryview
    path: Path | None = None
    final: Path | None = None
    """Where a staged target's file (``path``) goes on commit; None once there, or when not staged."""
    fd: int | None = field(default=None, repr=False)
    """A target's file, kept open while mapped: the receiver writes pages to it (mfdcomp.pagestore)."""
    dirty: npt.NDArray[np.bool_] = field(init=False, repr=False)
    _map: mmap.mmap | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.dirty = np.ones(self.size // self.page_size, dtype=np.bool_)

    @property
    def pages(self) -> int:
        return self.size // self.page_size

    def _release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            self.memory.release()
            if self._map is not None:
                self._map.close()
        except BufferError:
            # A caller still holds a slice or array of this block: the mapping
            # stays valid for it and is unmapped when the last one goes.
            pass
        self._map = None


class RamClient:
    """Ordered RAM blocks with dirty tracking; close it (or use ``with``) to unmap them."""

    def __init__(self, blocks: Iterable[RamBlock]) -> None:
        self.blocks: dict[str, RamBlock] = {}
        self._closed = False
        for block in blocks:
            if block.name in self.blocks:
                raise MfdcompError(f"ramblock name {block.name!r} given twice")
            self.blocks[block.name] = block

    # --- constructors -------------------------------------------------------

    @classmethod
    def from_images(cls, specs: list[str], page_size: int = 4096, writable_source: bool = True) -> RamClient:
        """Map image files as source blocks (``PATH`` or ``NAME=PATH`` each).

        Writable sources are private copy-on-write maps: perturbed pages change
        in memory only, never in the files. Otherwise the maps are read-only.
        """
        check_page_size(page_size)
        if not specs:
            raise MfdcompError("no image given")
        access = mmap.ACCESS_COPY if writable_source else mmap.ACCESS_READ
        blocks: list[RamBlock] = []
        try:
            for index, spec in enumerate(specs):
                name, path = parse_image_spec(spec, index)
                _check_name(name)
                blocks.append(_map_image(name, path, page_size, access))
            return cls(blocks)
        except BaseException:
            _release_all(blocks)
            raise

    @classmethod
    def create_targets(
        cls, layout: Layout, path_for: PathFor, page_size: int = 4096, *, staged: bool = False, reserve: bool = True
    ) -> RamClient:
        """One zeroed file per block, its space checked in total and then allocated (see reserve.py), mapped shared.

        With ``reserve`` false the space is checked but not allocated: for a writer that stores every page
        with pwrite (mfdcomp.pagestore), where a full filesystem is an error and not a SIGBUS. Pages
        never written then stay holes, and the digests read around them (:meth:`digest`).

        Without ``staged`` the files are ``path_for(name)``, created or
        truncated. With ``staged`` each is a new temporary file beside
        ``path_for(name)`` (same directory, unique name, O_EXCL), which
        :meth:`commit` renames over it and :meth:`close` removes if it was
        not committed. Nothing is created unless every block fits; on any
        failure every file made so far is removed.
        """
        checked = _checked_layout(layout, page_size)
        finals = [(name, size, Path(path_for(name))) for name, size in checked]
        _check_distinct(finals)
        if staged:
            for _, _, final in finals:
                _check_replaceable(final)
        check_room((str(final), final.parent, size) for _, size, final in finals)
        blocks: list[RamBlock] = []
        made: list[Path] = []
        try:
            for name, size, final in finals:
                fd, path = _create_beside(final) if staged else (_open_target(final), final)
                made.append(path)
                try:
                    blocks.append(_map_target(name, fd, path, final, size, page_size, reserve))
                except BaseException:
                    os.close(fd)
                    raise
                if staged:
                    blocks[-1].final = final
            return cls(blocks)
        except BaseException:
            _release_all(blocks)
            for path in made:
                path.unlink(missing_ok=True)  # a target that cannot be used must not hold the space it got
            raise

    @classmethod
    def anonymous(cls, layout: Layout, page_size: int = 4096) -> RamClient:
        """Zeroed blocks in anonymous shared memory (no files); refused beyond MemAvailable, before any mapping."""
        checked = list(_checked_layout(layout, page_size))
        check_memory(sum(size for _, size in checked))
        blocks: list[RamBlock] = []
        try:
            for name, size in checked:
                try:
                    region = mmap.mmap(-1, size, flags=TARGET_FLAGS)
                except OSError as exc:
                    raise MfdcompError(f"cannot allocate {size} bytes for ramblock {name!r}: {exc.strerror}") from exc
                blocks.append(RamBlock(name, size, page_size, memoryview(region), _map=region))
            return cls(blocks)
        except BaseException:
            _release_all(blocks)
            raise

    # --- dirty pages --------------------------------------------------------

    def mark_dirty(self, block_name: str, page_indices: npt.ArrayLike) -> None:
        """Mark pages (indices, not offsets) of a block dirty."""
        block = self._block(block_name)
        indices = np.asarray(page_indices, dtype=np.int64).ravel()
        # Negative indices would wrap around silently in numpy.
        if indices.size and (indices.min() < 0 or indices.max() >= block.pages):
            raise MfdcompError(f"page index out of range for {block_name!r} (0-{block.pages - 1})")
        block.dirty[indices] = True

    def mark_all_dirty(self) -> None:
        """Every page of every block dirty: where each migration starts, as QEMU's first bitmap sync."""
        self._check_open()
        for block in self.blocks.values():
            block.dirty[:] = True

    def dirty_pages(self, block_name: str) -> npt.NDArray[np.intp]:
        """Indices of the dirty pages of a block, ascending."""
        return np.flatnonzero(self._block(block_name).dirty)

    def dirty_count(self) -> int:
        self._check_open()
        return sum(int(np.count_nonzero(block.dirty)) for block in self.blocks.values())

    def iter_batches(self, max_pages: int = 128) -> Iterator[tuple[RamBlock, list[int]]]:
        """Dirty pages as batches of at most ``max_pages`` byte offsets, ascending, one block per batch.

        Each batch's pages are clean once it is yielded. A block's dirty pages
        are collected when the walk reaches it; pages dirtied later in a block
        already passed wait for the next round.
        """
        if max_pages < 1:
            raise MfdcompError(f"max_pages must be at least 1, got {max_pages}")
        self._check_open()
        for block in list(self.blocks.values()):
            indices = np.flatnonzero(block.dirty)
            offsets = indices * block.page_size
            for start in range(0, len(indices), max_pages):
                self._check_open()
                block.dirty[indices[start : start + max_pages]] = False
                yield block, offsets[start : start + max_pages].tolist()

    # --- changing pages -----------------------------------------------------

    def perturb(self, fraction: float, rng: np.random.Generator) -> int:
        """Change ``fraction`` of all pages, chosen at random, mark them dirty, and return how many.

        A quarter each (at random) get new random bytes, zeros, a random first
        half and a zero second half, or one byte flipped, so every page kind
        occurs. A page that zeroing would leave unchanged gets a flipped byte
        instead: every chosen page really changes.
        """
        if not 0.0 <= fraction <= 1.0:
            raise MfdcompError(f"dirty fraction must be between 0 and 1, got {fraction}")
        self._check_open()
        blocks = list(self.blocks.values())
        for block in blocks:
            if block.memory.readonly:
                raise MfdcompError(f"ramblock {block.name!r} is read-only; open the source writable to perturb it")
        starts = np.cumsum([0] + [block.pages for block in blocks])
        total = int(starts[-1])
        count = round(fraction * total)
        chosen = np.sort(rng.choice(total, size=count, replace=False, shuffle=False))
        kinds = rng.integers(0, 4, size=count)
        for number, block in enumerate(blocks):
            low, high = np.searchsorted(chosen, starts[number : number + 2])
            _perturb_block(block, chosen[low:high] - starts[number], kinds[low:high], rng)
        return count

    # --- digests ------------------------------------------------------------

    def sha256(self, block_name: str) -> str:
        return self.digest(block_name, "sha256")

    def digest(self, block_name: str, algorithm: str = "sha256") -> str:
        block = self._block(block_name)
        if block._map is not None:
            block._map.madvise(mmap.MADV_SEQUENTIAL)  # one pass in order: read ahead as far as it likes
        data = None if block.fd is None else _data_ranges(block.fd, block.size, block.page_size)
        return block_digest(block.memory, algorithm, block.page_size, data=data)

    def digests(self, algorithm: str = "sha256") -> dict[str, str]:
        """Every block's hex digest by ``algorithm`` (sha256 or blake3)."""
        return {name: self.digest(name, algorithm) for name in self.blocks}

    # --- lifetime -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def commit(self) -> None:
        """Rename every staged target over its final name (call once the transfer is verified).

        No fsync first: the aim is that a failed transfer leaves no image, not
        durability across a power cut, and flushing 1 GiB would double the time.
        """
        self._check_open()
        for block in self.blocks.values():
            if block.final is None or block.path is None:
                continue
            try:
                os.rename(block.path, block.final)
            except OSError as exc:
                raise TargetError(f"cannot rename {block.path} to {block.final}: {exc.strerror or exc}") from exc
            block.path, block.final = block.final, None

    def close(self) -> None:
        """Release every view and map, and remove staged targets not committed; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        _release_all(self.blocks.values())
        for block in self.blocks.values():
            if block.final is not None and block.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    block.path.unlink()

    def __enter__(self) -> RamClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise MfdcompError("RAM client is closed")

    def _block(self, name: str) -> RamBlock:
        self._check_open()
        try:
            return self.blocks[name]
        except KeyError:
            raise MfdcompError(f"no ramblock {name!r} (blocks: {', '.join(self.blocks)})") from None


TARGET_FLAGS = mmap.MAP_SHARED
"""Target memory is not populated when mapped: a file target's pages are
written with pwrite (mfdcomp.pagestore) and never faulted in during the
transfer; an anonymous target's pages fault in as the channels write them."""


_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def _map_image(name: str, path: Path, page_size: int, access: int) -> RamBlock:
    """Map the source image ``path``: a regular file or a block device."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (no effect on files and disks).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise MfdcompError(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            size = os.fstat(fd).st_size
        elif stat.S_ISBLK(mode):
            size = os.lseek(fd, 0, os.SEEK_END)  # st_size of a disk is 0
        else:
            kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise ImageError(f"{path} is {kind}, not a memory image")
        _check_size(f"image {path}", size, page_size)
        region = mmap.mmap(fd, size, access=access)
    except OSError as exc:
        raise ImageError(f"cannot map {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)  # the mapping keeps its own reference to the file
    return RamBlock(name, size, page_size, memoryview(region), path=path, _map=region)


def _check_distinct(finals: list[tuple[str, int, Path]]) -> None:
    """Two blocks must never share a file: each would overwrite the other's pages."""
    seen: dict[str, str] = {}
    for name, _, final in finals:
        key = os.path.normpath(os.path.abspath(final))
        if key in seen:
            raise TargetError(f"ramblocks {seen[key]!r} and {name!r} would both be written to {final}")
        seen[key] = name


def _check_replaceable(final: Path) -> None:
    """Only a regular file (or nothing) may be replaced by a target: never a directory or a device node."""
    try:
        mode = os.stat(final).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TargetError(f"cannot use {final}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise TargetError(f"{final} is {kind}; a target replaces only a regular file")


def _create_beside(final: Path) -> tuple[int, Path]:
    """A new file ``.NAME.mfdcomp-XXXXXXXX.part`` in ``final``'s directory, opened O_EXCL: never shared."""
    # Cut NAME so the whole stays under NAME_MAX (255 bytes).
    stem = os.fsdecode(os.fsencode(final.name)[:200])
    while True:
        path = final.with_name(f".{stem}.mfdcomp-{secrets.token_hex(4)}.part")
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), path
        except FileExistsError:
            continue  # 32 random bits taken already: draw again
        except OSError as exc:
            raise TargetError(f"cannot create a target beside {final}: {exc.strerror or exc}") from exc


def _open_target(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise TargetError(f"cannot open {path}: {exc.strerror or exc}") from exc


def _map_target(name: str, fd: int, path: Path, final: Path, size: int, page_size: int, allocate: bool) -> RamBlock:
    """Size ``fd``'s file, allocate all of it when ``allocate`` (so no page write can SIGBUS), map it shared."""
    try:
        os.ftruncate(fd, size)
        if allocate:
            reserve(fd, size)
    except OSError as exc:
        message = f"no room for target {final} ({size} bytes): {exc.strerror or exc}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise NoSpaceError(message, needed=size, available=None) from exc
        raise TargetError(message) from exc
    try:
        region = mmap.mmap(fd, size, flags=TARGET_FLAGS, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        raise TargetError(f"cannot map {path}: {exc.strerror or exc}") from exc
    # Without this, a channel's first write into a hole of the file makes the
    # kernel read ahead: it allocates and zero-fills the neighbouring pages,
    # including the zero pages that would otherwise never be touched. Measured,
    # alternating, median of 5 on 1 GiB over 2 channels: 90%-zero image 1.22 ->
    # 0.47 s, mixed image 2.13 -> 1.45 s (a cold-memory moment of this VM).
    region.madvise(mmap.MADV_RANDOM)
    return RamBlock(name, size, page_size, memoryview(region), path=path, fd=fd, _map=region)


def _release_all(blocks: Iterable[RamBlock]) -> None:
    for block in blocks:
        block._release()


def _perturb_block(
    block: RamBlock, pages: npt.NDArray[np.int64], kinds: npt.NDArray[np.int64], rng: np.random.Generator
) -> None:
    if not len(pages):
        return
    ps = block.page_size
    memory = np.frombuffer(block.memory, dtype=np.uint8).reshape(-1, ps)
    try:
        random, zero, half, flip = (pages[kinds == kind] for kind in range(4))
        if len(zero):
            # Zeroing a zero page changes nothing: flip a byte of it instead.
            already = ~memory[zero].any(axis=1)
            flip = np.sort(np.concatenate([flip, zero[already]]))
            zero = zero[~already]
        memory[random] = rng.integers(0, 256, size=(len(random), ps), dtype=np.uint8)
        memory[zero] = 0
        memory[half, : ps // 2] = rng.integers(0, 256, size=(len(half), ps // 2), dtype=np.uint8)
        memory[half, ps // 2 :] = 0
        # XOR with 1-255 always changes the byte.
        positions = rng.integers(0, ps, size=len(flip))
        memory[flip, positions] ^= rng.integers(1, 256, size=len(flip), dtype=np.uint8)
    finally:
        del memory  # drop the export so close() can unmap
    block.dirty[pages] = True

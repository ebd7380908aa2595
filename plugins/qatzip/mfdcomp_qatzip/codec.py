"""The qatzip codec (QEMU's MULTIFD_FLAG_QATZIP, 0x20; spec §5.6).

Stateless per packet: the normal pages of a packet are gathered into one
512 KiB buffer and compressed by one call; the payload is that call's GZIP_EXT
output. The receiver decodes it to exactly ``normal × page size`` bytes.

Paths, best first:

* hardware: libqatzip on a QAT device. Available when a libqatzip session
  reports ``hw_session_stat`` QZ_OK; the probe also says what the kernel shows
  (QAT PCI drivers, /dev/qat_*, /dev/vfio).
* software: libqatzip's own software code when the library loads
  (``PathProbe.library`` is its path, ``version`` its Debian package version),
  else the pure-Python GZIP_EXT writer of :mod:`mfdcomp_qatzip.gzipext`
  (``library`` is ``"zlib"``, ``version`` zlib's). Both write the same format.

Receivers decode with libqatzip when it is loaded and the payload's members
carry 'QZ' fields (whose lengths are checked first, because libqatzip 1.3.1
accepts a payload missing its last bytes, and whose CRC-32 and ISIZE are
checked after, because it does not check them); anything else goes through
zlib, which checks every member's trailer.
"""

from __future__ import annotations

import ctypes
import threading
import zlib
from collections.abc import Callable, Sequence

from mfdcomp.errors import CodecError
from mfdcomp.methods import CodecInfo, CodecPath, MultiFDMethods, PathProbe, PayloadSource, SendPayload
from mfdcomp.wire import COMPRESSION_MASK, MULTIFD_PACKET_SIZE, Flag, RamPacket
from mfdcomp_qatzip import gzipext
from mfdcomp_qatzip.binding import QZ_OK, Library, Session, status_name
from mfdcomp_qatzip.locate import Candidate, describe_devices, not_found_reason, package_version, search_order

QATZIP_INFO = CodecInfo(
    name="qatzip",
    qemu_flag=int(Flag.QATZIP),
    wire_format="qatzip-gzip-ext",
    stateful=False,
    paths=(CodecPath.HARDWARE, CodecPath.SOFTWARE),
    levels=(1, 9),
    default_level=1,
    description="Intel QATzip (QAT offload, libqatzip software backup, or a pure-Python writer of its format)",
)


class QatzipMethods(MultiFDMethods):
    """One channel's qatzip context: a libqatzip session when the library is loaded, else zlib."""

    info = QATZIP_INFO

    def __init__(self, page_size: int, level: int | None, path: CodecPath, library: Library | None) -> None:
        super().__init__(page_size, level)
        self.path = path
        self._library = library
        self._session: Session | None = None
        self._pages = bytearray(MULTIFD_PACKET_SIZE)
        self._output = bytearray()

    def _open_session(self) -> None:
        if self._library is not None:
            assert self.level is not None
            self._session = self._library.session(self.level, software_only=self.path is CodecPath.SOFTWARE)

    def _close_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def send_setup(self, channel: int) -> None:
        super().send_setup(channel)
        self._open_session()
        if self._session is not None:
            self._output = bytearray(self._session.max_compressed_length(MULTIFD_PACKET_SIZE))

    def send_prepare(self, pages: Sequence[memoryview]) -> SendPayload:
        self.owner.check()
        size = len(pages) * self.page_size
        gathered = memoryview(self._pages)
        for index, page in enumerate(pages):
            gathered[index * self.page_size : (index + 1) * self.page_size] = page
        if self._session is None:
            assert self.level is not None
            data = gzipext.compress(gathered[:size], self.level)
            return SendPayload(buffers=[data], size=len(data), path=CodecPath.SOFTWARE)
        produced = self._session.compress(gathered[:size], self._output)
        path = CodecPath.HARDWARE if self._session.hardware else CodecPath.SOFTWARE
        return SendPayload(buffers=[memoryview(self._output)[:produced]], size=produced, path=path)

    def send_cleanup(self) -> None:
        self._close_session()

    def recv_setup(self, channel: int) -> None:
        super().recv_setup(channel)
        self._open_session()

    def recv(self, packet: RamPacket, source: PayloadSource, pages: Sequence[memoryview]) -> CodecPath:
        self.owner.check()
        if packet.flags & COMPRESSION_MASK != Flag.QATZIP:
            raise CodecError(f"qatzip received a packet with flags 0x{packet.flags:x}, expected codec bits 0x20")
        expected = len(pages) * self.page_size
        if source.size == 0:
            raise CodecError(f"empty qatzip payload for {len(pages)} normal pages")
        payload = source.read()
        members = gzipext.qz_members(payload)
        if self._session is None or members is None:
            gzipext.decompress_into(payload, pages, self.page_size)
            return CodecPath.SOFTWARE
        claimed = sum(m.size for m in members)
        if claimed != expected:
            raise CodecError(f"qatzip payload's members hold {claimed} bytes, expected {expected} ({len(pages)} pages)")
        target = _contiguous(pages, self.page_size)
        scratch = memoryview(self._pages)[:expected]
        consumed, produced = self._session.decompress(payload, scratch if target is None else target)
        if consumed != len(payload) or produced != expected:
            self._session.reset()
            raise CodecError(
                f"qzDecompress used {consumed} of {len(payload)} payload bytes and wrote {produced} of {expected}"
            )
        # The library does not check the trailers: a cut body can inflate to the right length but wrong bytes.
        gzipext.check_trailers(payload, members, scratch if target is None else target)
        if target is None:
            for index, page in enumerate(pages):
                page[:] = scratch[index * self.page_size : (index + 1) * self.page_size]
        return CodecPath.HARDWARE if self._session.hardware else CodecPath.SOFTWARE

    def recv_cleanup(self) -> None:
        self._close_session()


def _contiguous(pages: Sequence[memoryview], page_size: int) -> ctypes.Array[ctypes.c_char] | None:
    """The pages as one writable ctypes buffer when they follow each other in memory, else None."""
    addresses = [ctypes.addressof(ctypes.c_char.from_buffer(page)) for page in pages]
    if any(address != addresses[0] + index * page_size for index, address in enumerate(addresses)):
        return None
    return (ctypes.c_char * (len(pages) * page_size)).from_address(addresses[0])


class QatzipCodec:
    """The registered codec: probes once, then makes one context per channel.

    ``search`` gives the places to load libqatzip from (tests pass an empty
    list to get the pure-Python path on a host that has the library).
    """

    info = QATZIP_INFO

    def __init__(self, search: Callable[[], Sequence[Candidate]] = search_order) -> None:
        self._search = search
        self._lock = threading.Lock()
        self._probes: list[PathProbe] | None = None
        self.library: Library | None = None

    def probe(self) -> list[PathProbe]:
        with self._lock:
            if self._probes is None:
                self._probes = self._probe()
            return list(self._probes)

    def _probe(self) -> list[PathProbe]:
        failures: list[str] = []
        for candidate in self._search():
            try:
                library = Library(candidate)
                session = library.session(QATZIP_INFO.default_level or 1)
            except (OSError, AttributeError, CodecError) as exc:
                failures.append(f"{candidate.path} ({candidate.origin}): {exc}")
                continue
            state = session.state
            session.close()
            self.library = library
            return self._library_probes(library, state)
        why = "; ".join(failures) if failures else not_found_reason()
        return [
            PathProbe(CodecPath.HARDWARE, False, f"needs libqatzip, which is not loaded: {why}"),
            PathProbe(
                CodecPath.SOFTWARE,
                True,
                f"pure-Python GZIP_EXT writer over zlib (libqatzip not loaded: {why})",
                library="zlib",
                version=zlib.ZLIB_RUNTIME_VERSION,
            ),
        ]

    @staticmethod
    def _library_probes(library: Library, state: int) -> list[PathProbe]:
        version = package_version(library.path)
        devices = describe_devices()
        if state == QZ_OK:
            hardware = PathProbe(
                CodecPath.HARDWARE, True, f"libqatzip opened a QAT hardware session ({devices})", library.path, version
            )
        else:
            hardware = PathProbe(
                CodecPath.HARDWARE,
                False,
                f"libqatzip has no QAT device: its session reports {status_name(state)}; {devices}",
                library.path,
                version,
            )
        software = PathProbe(
            CodecPath.SOFTWARE,
            True,
            f"libqatzip's software backup ({library.candidate.origin})",
            library.path,
            version,
        )
        return [hardware, software]

    def implementations(self) -> dict[str, QatzipCodec]:
        """The pure-Python writer and reader as a second implementation, when libqatzip is the first."""
        self.probe()
        return {"pure-Python GZIP_EXT": QatzipCodec(search=lambda: [])} if self.library is not None else {}

    def methods(self, page_size: int, level: int | None, path: CodecPath) -> QatzipMethods:
        found = {p.path: p for p in self.probe()}
        probe = found.get(path)
        if probe is None:
            raise CodecError(f"qatzip has no {path} path (it has hardware and software)")
        if not probe.available:
            raise CodecError(f"the qatzip {path} path is not available here: {probe.reason}")
        return QatzipMethods(page_size, level, path, self.library)

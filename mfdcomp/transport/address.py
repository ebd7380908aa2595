"""Transport addresses: parsing ``tcp:HOST:PORT``-style text, and what this host supports."""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from typing import Literal

Kind = Literal["tcp", "unix", "vsock", "fd", "file"]

FORMS = "tcp:HOST:PORT, tcp:[IPV6]:PORT, unix:PATH, vsock:CID:PORT, fd:N, file:PATH"

VMADDR_CID_LOCAL = 1
"""The vsock loopback CID (served by the vsock_loopback module); not in every Python's socket module."""

_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_DECIMAL = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Address:
    """One parsed address; only the fields of its ``kind`` are set."""

    kind: Kind
    host: str | None = None
    port: int | None = None
    path: str | None = None
    cid: int | None = None
    fd: int | None = None

    def __str__(self) -> str:
        if self.kind == "tcp":
            host = f"[{self.host}]" if self.host is not None and ":" in self.host else self.host
            return f"tcp:{host}:{self.port}"
        if self.kind == "vsock":
            return f"vsock:{self.cid}:{self.port}"
        if self.kind == "fd":
            return f"fd:{self.fd}"
        return f"{self.kind}:{self.path}"


def parse_address(text: str) -> Address:
    """The :class:`Address` written as ``text``; ``ValueError`` naming the accepted forms otherwise."""
    kind, sep, rest = text.partition(":")
    if not sep:
        raise _malformed(text, "no 'KIND:' prefix")
    if kind == "tcp":
        return _parse_tcp(text, rest)
    if kind in ("unix", "file"):
        if not rest or "\0" in rest:
            raise _malformed(text, "the path must be non-empty and contain no NUL")
        return Address(kind="unix" if kind == "unix" else "file", path=rest)
    if kind == "vsock":
        cid, sep, port = rest.partition(":")
        if not sep:
            raise _malformed(text, "vsock needs CID:PORT")
        u32 = 2**32 - 1
        return Address(kind="vsock", cid=_number(text, "CID", cid, u32), port=_number(text, "port", port, u32))
    if kind == "fd":
        return Address(kind="fd", fd=_number(text, "fd", rest, 2**31 - 1))
    raise _malformed(text, f"unknown kind {kind!r}")


def _parse_tcp(text: str, rest: str) -> Address:
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
        if not sep:
            raise _malformed(text, "an IPv6 host must be followed by ']:PORT'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _malformed(text, f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port = rest.rpartition(":")
        if not sep:
            raise _malformed(text, "tcp needs HOST:PORT")
        if ":" in host:
            raise _malformed(text, "write an IPv6 host in brackets, e.g. tcp:[::1]:4444")
        if not _HOSTNAME.fullmatch(host):
            raise _malformed(text, f"{host!r} is not a host name or IPv4 address")
    return Address(kind="tcp", host=host, port=_number(text, "port", port, 65535))


def _number(text: str, what: str, digits: str, limit: int) -> int:
    # Only plain decimal: int() would also take '+1', ' 1', '1_0' or non-ASCII digits.
    if not _DECIMAL.fullmatch(digits) or int(digits) > limit:
        raise _malformed(text, f"the {what} must be a decimal number from 0 to {limit}")
    return int(digits)


def _malformed(text: str, why: str) -> ValueError:
    return ValueError(f"bad address {text!r}: {why}; accepted forms: {FORMS}")


@functools.cache
def vsock_available() -> tuple[bool, str]:
    """Whether AF_VSOCK stream sockets can be created and bound to the loopback CID here, and if not, why."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return False, "this Python's socket module has no AF_VSOCK"
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return False, f"socket(AF_VSOCK) failed: {_errno_text(exc)} (is the vsock kernel module loaded?)"
    with sock:
        try:
            sock.bind((VMADDR_CID_LOCAL, socket.VMADDR_PORT_ANY))
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EADDRNOTAVAIL and not os.path.exists("/sys/module/vsock_loopback"):
                hint = " (the vsock_loopback kernel module is not loaded)"
            return False, f"bind(AF_VSOCK, VMADDR_CID_LOCAL={VMADDR_CID_LOCAL}) failed: {_errno_text(exc)}{hint}"
    return True, "AF_VSOCK sockets bind to VMADDR_CID_LOCAL"


def _errno_text(exc: OSError) -> str:
    if exc.errno is None:
        return str(exc)
    return f"{exc.strerror} ({errno.errorcode.get(exc.errno, exc.errno)})"

"""A small blocking QMP client: one unix socket, one command at a time, events kept as they come.

QMP is line-delimited JSON. After connecting, QEMU sends a greeting; the
client answers with ``qmp_capabilities`` and may then ``execute`` commands.
Replies carry the ``id`` the command was sent with; asynchronous events may
arrive at any time in between and are queued for :meth:`QMPClient.events`
and :meth:`QMPClient.wait_event`.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from mfdcomp.errors import MfdcompError

# The greeting and most replies are small; a query-qmp-schema reply is a few hundred KiB.
_READ_SIZE = 1 << 16


class QMPError(MfdcompError):
    """Talking to QEMU's monitor failed."""


class QMPConnectError(QMPError):
    """The monitor socket could not be reached, or its greeting was not QMP's."""


class QMPTimeout(QMPError):
    """QEMU did not answer (or send the awaited event) in time."""


class QMPClosed(QMPError):
    """QEMU closed the monitor connection (it quit or crashed)."""


class QMPCommandError(QMPError):
    """QEMU refused a command: ``error_class`` is QMP's class (GenericError, CommandNotFound, ...)."""

    def __init__(self, command: str, error_class: str, description: str) -> None:
        super().__init__(f"QMP {command}: {error_class}: {description}")
        self.command = command
        self.error_class = error_class
        self.description = description


class QMPClient:
    """A QMP session on a unix socket; use :meth:`connect`, and close it (or use ``with``)."""

    def __init__(self, sock: socket.socket, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        self._sock = sock
        self._buffer = bytearray()
        self._events: deque[dict[str, Any]] = deque()
        self._ids = itertools.count(1)
        self.greeting: dict[str, Any] = {}

    @classmethod
    def connect(cls, path: str, *, timeout: float = 30.0, alive: Callable[[], bool] | None = None) -> QMPClient:
        """Connect to ``path`` and negotiate capabilities.

        QEMU creates its socket while it starts, so a missing or refusing
        socket is retried until ``timeout``; ``alive()`` returning False (the
        process died) stops the wait at once.
        """
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if alive is not None and not alive():
                    raise QMPConnectError(f"QEMU exited before its monitor {path} accepted a connection") from exc
                if time.monotonic() >= deadline:
                    raise QMPConnectError(f"no QMP monitor at {path} after {timeout:.0f} s: {exc}") from exc
                time.sleep(0.02)
            except OSError as exc:
                sock.close()
                raise QMPConnectError(f"cannot connect to the QMP monitor {path}: {exc}") from exc
        client = cls(sock, path, timeout)
        try:
            client._negotiate()
        except BaseException:
            client.close()
            raise
        return client

    def _negotiate(self) -> None:
        greeting = self._receive(time.monotonic() + self.timeout)
        if "QMP" not in greeting:
            raise QMPConnectError(f"{self.name} did not greet with QMP: {str(greeting)[:200]}")
        self.greeting = greeting["QMP"]
        self.execute("qmp_capabilities")

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Run ``command`` and return its ``return`` value; QMPCommandError when QEMU refuses it."""
        request: dict[str, Any] = {"execute": command, "id": next(self._ids)}
        if arguments:
            request["arguments"] = dict(arguments)
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise QMPClosed(f"{self.name}: cannot send {command}: {exc}") from exc
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            message = self._receive(deadline, waiting_for=command)
            if "event" in message:
                self._events.append(message)
                continue
            if message.get("id") != request["id"]:
                continue  # a late reply to a command that timed out earlier
            if "error" in message:
                error = message["error"]
                raise QMPCommandError(command, str(error.get("class", "?")), str(error.get("desc", error)))
            return message.get("return")

    def events(self) -> list[dict[str, Any]]:
        """The events received so far (and not yet taken); they are taken."""
        taken = list(self._events)
        self._events.clear()
        return taken

    def wait_event(self, name: str, *, timeout: float | None = None) -> dict[str, Any]:
        """The first queued or arriving event called ``name``; others stay queued."""
        for event in self._events:
            if event["event"] == name:
                self._events.remove(event)
                return event
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            message = self._receive(deadline, waiting_for=f"event {name}")
            if message.get("event") == name:
                return message
            if "event" in message:
                self._events.append(message)

    def _receive(self, deadline: float, waiting_for: str = "the greeting") -> dict[str, Any]:
        while True:
            line, newline, rest = self._buffer.partition(b"\n")
            if newline:
                self._buffer = bytearray(rest)
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    raise QMPError(f"{self.name} sent something that is not JSON: {bytes(line[:200])!r}") from exc
                if not isinstance(message, dict):
                    raise QMPError(f"{self.name} sent a JSON {type(message).__name__}, not an object")
                return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPTimeout(f"{self.name}: no answer to {waiting_for} in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(_READ_SIZE)
            except TimeoutError:
                continue
            except OSError as exc:
                raise QMPClosed(f"{self.name}: connection lost while waiting for {waiting_for}: {exc}") from exc
            if not chunk:
                raise QMPClosed(f"{self.name}: QEMU closed the monitor while {waiting_for} was awaited")
            self._buffer += chunk

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

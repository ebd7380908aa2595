"""The one error tree of mfdcomp.

Every failure that crosses a public edge is an :class:`MfdcompError`. Lower
layers raise the typed children below; edges (CLI, engine threads) translate
foreign exceptions once, with ``raise ... from``.
"""

from __future__ import annotations


class MfdcompError(Exception):
    """Base of every error mfdcomp raises on purpose."""


class WireError(MfdcompError):
    """Bytes on a channel broke the multifd wire format.

    ``field`` names the offending field, ``value`` is what was received and
    ``limit`` the bound or expected value it was checked against.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        value: object = None,
        limit: object = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.limit = limit


class TruncatedError(WireError):
    """The stream ended in the middle of a packet or payload (not a clean end)."""


class ChannelIdError(WireError):
    """An init packet named a channel id that is out of range or already taken."""


class CodecError(MfdcompError):
    """A codec could not encode or decode a payload."""


class ChannelError(MfdcompError):
    """A channel, its transport or its peer failed."""


class PluginError(MfdcompError):
    """A codec plugin failed to load, register or behave."""


class ImageError(MfdcompError):
    """A source image cannot be used: not a regular file, or the wrong size."""


class TargetError(MfdcompError):
    """A destination's target file (or --out) cannot be created, sized, kept or named."""


class NoSpaceError(TargetError):
    """The targets do not fit: ``needed`` bytes against ``available`` on their filesystem."""

    def __init__(self, message: str, *, needed: int, available: int | None) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


class SessionError(MfdcompError):
    """The peer's session is not the one this end was set up for (``field``: what differs)."""

    def __init__(self, message: str, *, field: str, value: object, expected: object) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.expected = expected

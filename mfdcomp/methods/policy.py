"""The fallback policy: which path a codec sends through, as a pure function.

A codec lists its paths in ``CodecInfo.paths`` in order of preference
(hardware, then its software twin, then raw pages where the wire format
allows them). The first available one wins, unless the user asked for the
hardware (``--require-hw``) or for the software twin (``--force-sw``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mfdcomp.errors import CodecError
from mfdcomp.methods.contract import CodecInfo, CodecPath, PathProbe


@dataclass(frozen=True, slots=True)
class PathChoice:
    """The path chosen, and why each better one was passed over."""

    path: CodecPath
    passed_over: tuple[str, ...] = ()

    @property
    def fell_back(self) -> bool:
        return bool(self.passed_over)


def choose_path(
    info: CodecInfo, probes: Sequence[PathProbe], *, require_hw: bool = False, force_sw: bool = False
) -> PathChoice:
    """The path to send through; a CodecError when the request cannot be met."""
    if require_hw and force_sw:
        raise CodecError("--require-hw and --force-sw contradict each other")
    found = {p.path: p for p in probes}
    if require_hw:
        if CodecPath.HARDWARE not in info.paths:
            raise CodecError(f"codec {info.name} has no hardware path, and --require-hw asks for one")
        hw = found.get(CodecPath.HARDWARE)
        if hw is None or not hw.available:
            why = hw.reason if hw is not None else "the codec did not probe it"
            raise CodecError(f"--require-hw: the {info.name} hardware path is not available: {why}")
        return PathChoice(CodecPath.HARDWARE)
    if force_sw:
        if CodecPath.SOFTWARE not in info.paths:
            raise CodecError(f"codec {info.name} has no software path, and --force-sw asks for one")
        sw = found.get(CodecPath.SOFTWARE)
        if sw is None or not sw.available:
            why = sw.reason if sw is not None else "the codec did not probe it"
            raise CodecError(f"--force-sw: the {info.name} software path is not available: {why}")
        return PathChoice(CodecPath.SOFTWARE)
    passed: list[str] = []
    for path in info.paths:
        probe = found.get(path)
        if probe is not None and probe.available:
            return PathChoice(path, tuple(passed))
        passed.append(f"{path}: {probe.reason if probe is not None else 'not probed'}")
    raise CodecError(f"no path of codec {info.name} can run here ({'; '.join(passed)})")


def check_packet_path(info: CodecInfo, path: CodecPath, *, require_hw: bool) -> None:
    """Under --require-hw, a packet that a non-hardware path produced is an error."""
    if require_hw and path is not CodecPath.HARDWARE:
        raise CodecError(f"--require-hw: a {info.name} packet was produced by the {path} path, not the hardware")

"""The fallback policy is a pure function: a table of hosts and requests."""

from __future__ import annotations

import pytest

from mfdcomp.errors import CodecError
from mfdcomp.methods import CodecInfo, CodecPath, PathProbe, check_packet_path, choose_path

HW, SW, RAW = CodecPath.HARDWARE, CodecPath.SOFTWARE, CodecPath.RAW


def info(*paths: CodecPath) -> CodecInfo:
    return CodecInfo(name="x", qemu_flag=0x20, wire_format="x", stateful=False, paths=paths)


def host(**available: bool) -> list[PathProbe]:
    return [
        PathProbe(CodecPath(name.lower()), ok, f"{name} {'here' if ok else 'missing'}")
        for name, ok in available.items()
    ]


# (paths the codec has, what the host has, require_hw, force_sw, expected path or error text)
CASES = [
    ((HW, SW, RAW), host(hardware=True, software=True, raw=True), False, False, HW),
    ((HW, SW, RAW), host(hardware=False, software=True, raw=True), False, False, SW),
    ((HW, SW, RAW), host(hardware=False, software=False, raw=True), False, False, RAW),
    ((HW, RAW), host(hardware=False, raw=True), False, False, RAW),
    ((HW, SW), host(hardware=False, software=False), False, False, "no path of codec x can run here"),
    ((HW, SW), host(hardware=True, software=True), True, False, HW),
    ((HW, SW), host(hardware=False, software=True), True, False, "hardware path is not available: hardware missing"),
    ((SW,), host(software=True), True, False, "has no hardware path"),
    ((HW, SW), host(hardware=True, software=True), False, True, SW),
    ((HW, SW), host(hardware=True, software=False), False, True, "software path is not available"),
    ((HW, RAW), host(hardware=True, raw=True), False, True, "has no software path"),
    ((HW, SW), host(software=True), False, False, SW),
    ((HW, SW), host(software=True), True, False, "the codec did not probe it"),
    ((HW, SW), host(hardware=True, software=True), True, True, "contradict"),
]


@pytest.mark.parametrize(("paths", "probes", "require_hw", "force_sw", "expected"), CASES)
def test_choose_path(
    paths: tuple[CodecPath, ...], probes: list[PathProbe], require_hw: bool, force_sw: bool, expected: object
) -> None:
    if isinstance(expected, CodecPath):
        assert choose_path(info(*paths), probes, require_hw=require_hw, force_sw=force_sw).path is expected
    else:
        with pytest.raises(CodecError, match=str(expected)):
            choose_path(info(*paths), probes, require_hw=require_hw, force_sw=force_sw)


def test_fallback_says_what_was_passed_over() -> None:
    choice = choose_path(info(HW, SW, RAW), host(hardware=False, software=False, raw=True))
    assert choice.path is RAW and choice.fell_back
    assert choice.passed_over == ("hardware: hardware missing", "software: software missing")
    assert not choose_path(info(HW, SW), host(hardware=True)).fell_back


@pytest.mark.parametrize("path", [SW, RAW])
def test_require_hw_refuses_a_non_hardware_packet(path: CodecPath) -> None:
    with pytest.raises(CodecError, match=f"produced by the {path} path"):
        check_packet_path(info(HW, SW, RAW), path, require_hw=True)
    check_packet_path(info(HW, SW, RAW), path, require_hw=False)
    check_packet_path(info(HW, SW, RAW), HW, require_hw=True)

"""The registry: plugins found through entry points; a broken one is listed, never fatal."""

from __future__ import annotations

import types
from dataclasses import replace

import pytest

from mfdcomp.errors import PluginError
from mfdcomp.methods import NOCOMP_INFO, CodecInfo, CodecPath, Nocomp
from mfdcomp.registry import ENTRY_POINT_GROUP, Candidate, Registry, default_registry, entry_point_candidates, hookimpl


class Renamed(Nocomp):
    def __init__(self, **fields: object) -> None:
        self.info = replace(NOCOMP_INFO, **fields)  # type: ignore[arg-type]


def module(*codecs: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(mfdcomp_methods=lambda: list(codecs))


def candidate(name: str, load: object) -> Candidate:
    return Candidate(name, f"dist-{name}", load if callable(load) else (lambda: load))


def raising() -> object:
    raise ImportError("No module named 'vendorlib'")


def ext(name: str, extension_id: int | None) -> Renamed:
    return Renamed(name=name, qemu_flag=None, extension_id=extension_id)


# (what the plugins give, the codecs registered, a fragment of each plugin's error or None)
CASES = {
    "one good plugin": ([candidate("a", module(Renamed(name="a")))], ["a"], [None]),
    "import error is listed, others load": (
        [candidate("bad", raising), candidate("good", module(Renamed(name="g")))],
        ["g"],
        ["ImportError: No module named 'vendorlib'", None],
    ),
    "hook raising": (
        [candidate("h", types.SimpleNamespace(mfdcomp_methods=lambda: 1 / 0))],
        [],
        ["ZeroDivisionError"],
    ),
    "no hook at all": ([candidate("n", types.SimpleNamespace())], [], ["implements no mfdcomp_methods hook"]),
    "hook returns no list": (
        [candidate("s", types.SimpleNamespace(mfdcomp_methods=lambda: "zlib"))],
        [],
        ["returned str, not a list of codecs"],
    ),
    "object without CodecInfo": ([candidate("o", module(object()))], [], ["has no CodecInfo record"]),
    "duplicate name refused": (
        [candidate("one", module(Renamed(name="x"))), candidate("two", module(Renamed(name="x")))],
        ["x"],
        [None, "codec name 'x' is already taken"],
    ),
    "neither flag nor extension id": ([candidate("f", module(ext("f", None)))], [], ["neither a QEMU flag"]),
    "both flag and extension id": (
        [candidate("b", module(Renamed(name="b", extension_id=3)))],
        [],
        ["both a QEMU flag and an extension id"],
    ),
    "extension id out of range": ([candidate("r", module(ext("r", 0)))], [], ["extension id must be 1"]),
    "duplicate extension id refused": (
        [candidate("p", module(ext("p", 7))), candidate("q", module(ext("q", 7)))],
        ["p"],
        [None, "extension id 7 is p's"],
    ),
}


@pytest.mark.parametrize(("candidates", "codecs", "errors"), CASES.values(), ids=CASES.keys())
def test_registration(candidates: list[Candidate], codecs: list[str], errors: list[str | None]) -> None:
    registry = Registry.from_candidates(candidates)
    assert sorted(registry.codecs) == sorted(codecs)
    assert len(registry.plugins) == len(candidates)
    for record, expected in zip(registry.plugins, errors, strict=True):
        if expected is None:
            assert record.ok, record.errors
        else:
            assert not record.ok and expected in "; ".join(record.errors)


def test_a_pluggy_hookimpl_object_registers_too() -> None:
    class Plugin:
        @hookimpl
        def mfdcomp_methods(self) -> list[Nocomp]:
            return [Renamed(name="marked")]

    assert list(Registry.from_candidates([candidate("m", Plugin())]).codecs) == ["marked"]


def test_unknown_codec_names_what_is_there_and_what_broke() -> None:
    registry = Registry.from_candidates([candidate("bad", raising), candidate("a", module(Renamed(name="a")))])
    with pytest.raises(PluginError, match=r"no codec named 'zz' \(registered: a\); 1 plugin\(s\) failed"):
        registry.get("zz")


def test_builtin_codecs_come_through_the_entry_point_group() -> None:
    names = {c.name for c in entry_point_candidates()}
    assert {"none", "zlib", "zstd", "qpl", "uadk", "qatzip"} <= names, f"{ENTRY_POINT_GROUP} has {names}"
    registry = default_registry()
    assert all(p.ok for p in registry.plugins), [p for p in registry.plugins if not p.ok]
    assert registry.for_flag(0x04) is registry.codecs["zstd"]
    assert registry.for_flag(0x3E) is None


def test_probing_is_explicit_and_each_path_has_a_reason() -> None:
    for codec in default_registry().codecs.values():
        probes = codec.probe()
        assert {p.path for p in probes} == set(codec.info.paths), codec.info.name
        assert all(p.reason for p in probes)
        assert any(p.available for p in probes), f"{codec.info.name}: no path can run here"
        assert codec.probe() == probes  # cached, same answer


def test_codec_info_levels() -> None:
    info = CodecInfo(name="l", qemu_flag=2, wire_format="w", stateful=True, paths=(CodecPath.SOFTWARE,), levels=(0, 9))
    assert info.check_level(9) == 9
    with pytest.raises(Exception, match="level must be 0-9"):
        info.check_level(10)

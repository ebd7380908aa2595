"""``mfdcomp codecs``: what the registry found on this host."""

from __future__ import annotations

import argparse
from typing import Any

from mfdcomp.cli.common import print_json
from mfdcomp.errors import MfdcompError
from mfdcomp.methods import Codec, PathProbe, choose_path
from mfdcomp.methods.impls import ChoosesImplementation
from mfdcomp.registry import default_registry


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "codecs",
        help="list registered codecs and plugins",
        description="List every codec registered through the mfdcomp.methods entry points, with each path "
        "(hardware, software, raw) probed on this host and the reason it can or cannot run, the library "
        "versions in use, and every plugin that failed to load, with its error.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    registry = default_registry()
    codecs: list[dict[str, Any]] = []
    for name, codec in sorted(registry.codecs.items()):
        info = codec.info
        probes, sends = _probe(codec)
        codecs.append(
            {
                "name": name,
                "qemu_flag": info.qemu_flag,
                "extension_id": info.extension_id,
                "wire_format": info.wire_format,
                "stateful": info.stateful,
                "levels": list(info.levels) if info.levels else None,
                "default_level": info.default_level,
                "paths": [_probe_dict(p) for p in probes],
                "sends_through": sends,
                "description": info.description,
            }
            | _implementations(codec)
        )
    plugins = [
        {"name": p.name, "source": p.source, "codecs": list(p.codecs), "errors": list(p.errors)}
        for p in registry.plugins
    ]
    if args.json:
        print_json({"codecs": codecs, "plugins": plugins})
        return 0
    print(f"{'codec':<10} {'flag':<16} {'wire format':<22} {'levels':<8} sends through")
    for c in codecs:
        flag = f"0x{c['qemu_flag']:02x}" if c["qemu_flag"] is not None else f"ext 0x{c['extension_id']:08x}"
        levels = "-".join(map(str, c["levels"])) if c["levels"] else "-"
        print(f"{c['name']:<10} {flag:<16} {c['wire_format']:<22} {levels:<8} {c['sends_through']}")
        for p in c["paths"]:
            mark = "yes" if p["available"] else "NO "
            lib = f" [{' '.join(filter(None, (p['library'], p['version'])))}]" if p["library"] else ""
            print(f"    {p['path']:<9} {mark} {p['reason']}{lib}")
        if c.get("implementation_env"):
            others = ", ".join(c["other_implementations"]) or "none"
            print(
                f"    implementation: {c['implementation'] or 'NONE'} (also runs here: {others}; "
                f"{c['implementation_env']}={'|'.join(c['implementation_choices'])} forces one)"
            )
    broken = [p for p in plugins if p["errors"]]
    for p in broken:
        print(f"plugin {p['name']} ({p['source']}) FAILED: {'; '.join(p['errors'])}")
    return 0


def _probe(codec: Codec) -> tuple[list[PathProbe], str]:
    """The codec's probes and the path a default send would take, or why none can."""
    try:
        probes = list(codec.probe())
    except Exception as exc:
        return [], f"PROBE FAILED: {type(exc).__name__}: {exc}"
    try:
        choice = choose_path(codec.info, probes)
    except MfdcompError as exc:
        return probes, f"NOTHING: {exc}"
    return probes, str(choice.path)


def _implementations(codec: Codec) -> dict[str, Any]:
    """Which implementation of its wire format the codec runs (isal, zlib, libqpl), for codecs with several."""
    if not isinstance(codec, ChoosesImplementation):
        return {}
    try:
        current, others = codec.implementation, list(codec.implementations())
    except Exception as exc:  # a broken plugin is reported, not fatal to the listing
        current, others = None, [f"FAILED: {type(exc).__name__}: {exc}"]
    return {
        "implementation": current,
        "other_implementations": others,
        "implementation_env": codec.impls.env,
        "implementation_choices": list(codec.impls.names),
    }


def _probe_dict(probe: PathProbe) -> dict[str, Any]:
    return {
        "path": str(probe.path),
        "available": probe.available,
        "reason": probe.reason,
        "library": probe.library,
        "version": probe.version,
    }

"""``mfdcomp codecs``: what the registry found on this host."""

from __future__ import annotations

import argparse
from typing import Any

from mfdcomp.cli.common import print_json
from mfdcomp.registry import default_registry


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "codecs",
        help="list registered codecs and plugins",
        description="List every codec registered through the mfdcomp.methods entry points, "
        "and every plugin that failed to load, with its error.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    registry = default_registry()
    codecs: list[dict[str, Any]] = []
    for name, codec in sorted(registry.codecs.items()):
        info = codec.info
        codecs.append(
            {
                "name": name,
                "qemu_flag": info.qemu_flag,
                "extension_id": info.extension_id,
                "wire_format": info.wire_format,
                "stateful": info.stateful,
                "levels": list(info.levels) if info.levels else None,
                "default_level": info.default_level,
                "paths": [str(p) for p in info.paths],
                "description": info.description,
            }
        )
    plugins = [
        {"name": p.name, "source": p.source, "codecs": list(p.codecs), "errors": list(p.errors)}
        for p in registry.plugins
    ]
    if args.json:
        print_json({"codecs": codecs, "plugins": plugins})
        return 0
    print(f"{'codec':<10} {'flag':<14} {'wire format':<22} {'levels':<8} paths")
    for c in codecs:
        flag = f"0x{c['qemu_flag']:02x}" if c["qemu_flag"] is not None else f"ext {c['extension_id']}"
        levels = "-".join(map(str, c["levels"])) if c["levels"] else "-"
        print(f"{c['name']:<10} {flag:<14} {c['wire_format']:<22} {levels:<8} {', '.join(c['paths'])}")
    broken = [p for p in plugins if p["errors"]]
    for p in broken:
        print(f"plugin {p['name']} ({p['source']}) FAILED: {'; '.join(p['errors'])}")
    return 0

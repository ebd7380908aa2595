"""``mfdcomp doctor``: is this host ready for hardware-offload compression, and if not, what to do."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from mfdcomp.cli.common import print_json
from mfdcomp.doctor import Diagnosis, Finding, Status, diagnose

LABELS = {Status.OK: "ok", Status.MISSING: "MISSING", Status.PROBLEM: "PROBLEM", Status.INFO: "info"}
WIDTH = 100


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "doctor",
        help="diagnose this host for hardware-offload compression",
        description="Ask every installed plugin what it sees of its hardware (with the bundled plugins: Intel "
        "QAT, Intel IAA and HiSilicon UADK): PCI devices and their drivers, device nodes and whether this user "
        "can open them, work queues, the vendor libraries; check the IOMMU; then probe every registered codec "
        "and say which path a default send takes. Each finding "
        "is ok, missing, problem or info, with what to do when it is not ok. Exits 0 once the diagnosis ran, "
        "whatever it found.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--require-hw",
        action="store_true",
        help="exit 1 when no codec's hardware path is available, saying why for each",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    diagnosis = diagnose()
    if args.json:
        print_json(diagnosis.as_dict())
    else:
        print(render(diagnosis))
    if args.require_hw and not diagnosis.hardware_codecs:
        print(f"mfdcomp doctor: --require-hw: {diagnosis.no_hardware_reason()}", file=sys.stderr)
        return 1
    return 0


def render(diagnosis: Diagnosis) -> str:
    """The report as text: one block per plugin section, then the IOMMU, codecs, plugins, counts and summary."""
    lines = [f"mfdcomp doctor: hardware-offload compression on this host, as {diagnosis.identity.describe()}"]
    for area in diagnosis.areas:
        findings = [f for f in diagnosis.findings if f.area == area]
        if findings:
            lines += ["", area]
            for finding in findings:
                lines += _finding_lines(finding)
    counts = diagnosis.counts()
    lines += ["", "Summary (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"]
    lines += [textwrap.fill(s, WIDTH, initial_indent="  ", subsequent_indent="    ") for s in diagnosis.summary()]
    return "\n".join(lines)


def _finding_lines(finding: Finding) -> list[str]:
    head = f"  {LABELS[finding.status]:<8} {finding.item}: {finding.detail}"
    lines = textwrap.wrap(head, WIDTH, subsequent_indent=" " * 11)
    if finding.advice:
        lines += textwrap.wrap(
            f"what to do: {finding.advice}", WIDTH, initial_indent=" " * 11, subsequent_indent=" " * 13
        )
    return lines

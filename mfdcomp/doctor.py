"""A diagnosis of this host for hardware-offload compression: what ``mfdcomp doctor`` reports.

The doctor knows no accelerator itself. Every plugin may implement the ``mfdcomp_doctor`` hook
(:mod:`mfdcomp.registry`) and answer :class:`~mfdcomp.diagnosis.DoctorSection` records about its own
devices, drivers, nodes and libraries; the doctor gathers them, one plugin at a time so that one whose
hook raises is reported as such and the others still print. To those it adds what no vendor owns: the
IOMMU (from the devices the sections found and how their plugins say they use it), every registered
codec's probe and the path a default send takes, the plugins that failed to load, and the summary.

Every check reads files only, under ``root`` (tests pass a fake tree built in a temporary folder), plus
what each codec's ``probe()`` says (a probe may load its own library, as the codec contract allows).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdcomp.diagnosis import (
    IOMMU,
    Accelerator,
    DoctorSection,
    Finding,
    Identity,
    IommuUse,
    Status,
    iommu_findings,
    locate_library,
)
from mfdcomp.errors import MfdcompError
from mfdcomp.methods import Codec, CodecPath, PathProbe, choose_path
from mfdcomp.registry import Registry, default_registry

__all__ = [
    "CODECS",
    "IOMMU",
    "PLUGINS",
    "Accelerator",
    "CodecReport",
    "Diagnosis",
    "DoctorSection",
    "Finding",
    "Identity",
    "Status",
    "codec_findings",
    "codec_report",
    "diagnose",
    "iommu_findings",
    "locate_library",
    "plugin_sections",
]

# Areas the core reports, after the plugins' own sections.
CODECS = "codecs"
PLUGINS = "plugins"
CORE_AREAS = (IOMMU, CODECS, PLUGINS)
HOOK = "mfdcomp_doctor"

# ---------------------------------------------------------------------------------------------------
# Codecs


@dataclass(frozen=True, slots=True)
class CodecReport:
    """One registered codec: its probes, the path a default send takes, or why it cannot send."""

    name: str
    probes: tuple[PathProbe, ...]
    sends: CodecPath | None
    error: str | None = None

    @property
    def hardware(self) -> PathProbe | None:
        return next((p for p in self.probes if p.path is CodecPath.HARDWARE), None)

    @property
    def hardware_available(self) -> bool:
        return self.hardware is not None and self.hardware.available

    def sends_text(self) -> str:
        """``software: libzstd.so.1 1.5.5`` or ``raw pages``: the path and what runs it."""
        if self.sends is None:
            return f"cannot send: {self.error}"
        if self.sends is CodecPath.RAW:
            return "raw pages, uncompressed"
        probe = next(p for p in self.probes if p.path is self.sends)
        what = " ".join(x for x in (os.path.basename(probe.library or ""), probe.version or "") if x)
        return f"{self.sends}: {what}" if what else str(self.sends)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paths": [
                {
                    "path": str(p.path),
                    "available": p.available,
                    "reason": p.reason,
                    "library": p.library,
                    "version": p.version,
                }
                for p in self.probes
            ],
            "sends_through": str(self.sends) if self.sends else None,
            "error": self.error,
        }


def codec_report(name: str, codec: Codec) -> CodecReport:
    try:
        probes = tuple(codec.probe())
    except Exception as exc:
        # A probe that raises is the plugin's bug; the report names it instead of stopping.
        return CodecReport(name, (), None, f"probe() failed: {type(exc).__name__}: {exc}")
    try:
        return CodecReport(name, probes, choose_path(codec.info, probes).path)
    except MfdcompError as exc:
        return CodecReport(name, probes, None, str(exc))


def codec_findings(
    reports: Sequence[CodecReport], registry: Registry, sections: Sequence[DoctorSection] = ()
) -> list[Finding]:
    # Which plugin section explains each codec's hardware path.
    explains = {name: s.title for s in sections for name in s.codecs}
    findings: list[Finding] = []
    for report in reports:
        if report.error is not None and not report.probes:
            findings.append(
                Finding(CODECS, report.name, Status.PROBLEM, report.error, "report this to the plugin's authors")
            )
            continue
        for probe in report.probes:
            lib = f" [{probe.library}{' ' + probe.version if probe.version else ''}]" if probe.library else ""
            item = f"{report.name} {probe.path}"
            if probe.available:
                findings.append(Finding(CODECS, item, Status.OK, f"{probe.reason}{lib}"))
            else:
                area = explains.get(report.name)
                advice = f"see the {area} findings above" if area and probe.path is CodecPath.HARDWARE else ""
                status = Status.MISSING if probe.path is CodecPath.HARDWARE else Status.PROBLEM
                findings.append(Finding(CODECS, item, status, f"{probe.reason}{lib}", advice))
        status = Status.INFO if report.sends is not None else Status.PROBLEM
        findings.append(Finding(CODECS, f"{report.name} sends", status, report.sends_text()))
    for plugin in registry.plugins:
        if not plugin.ok:
            findings.append(
                Finding(
                    PLUGINS,
                    f"{plugin.name} ({plugin.source})",
                    Status.PROBLEM,
                    "; ".join(plugin.errors),
                    "reinstall the plugin (`bash ci/setup.sh`) or report the error to its authors",
                )
            )
    return findings


# ---------------------------------------------------------------------------------------------------
# The plugins' sections


def plugin_sections(
    registry: Registry,
    root: Path,
    identity: Identity,
    memlock: int | None,
    probes: Mapping[str, Sequence[PathProbe]],
) -> tuple[list[DoctorSection], list[Finding]]:
    """Every plugin's doctor sections, and a problem finding for each plugin whose hook failed."""
    sections: list[DoctorSection] = []
    failures: list[Finding] = []
    for call in registry.implementations(HOOK):
        try:
            answer = call(root=root, identity=identity, memlock=memlock, probes=probes)
            problem = _check_sections(answer)
        except Exception as exc:
            # One plugin's bug must not hide the other plugins' findings.
            problem = f"its {HOOK} hook raised {type(exc).__name__}: {exc}"
        if problem is not None:
            failures.append(
                Finding(
                    PLUGINS,
                    f"{call.plugin} doctor",
                    Status.PROBLEM,
                    problem,
                    "its hardware findings are missing from this report; report this to the plugin's authors",
                )
            )
            continue
        assert isinstance(answer, list | tuple)  # _check_sections said so
        taken = {s.title for s in sections} | set(CORE_AREAS)
        for section in answer:
            if section.title in taken:
                failures.append(
                    Finding(
                        PLUGINS,
                        f"{call.plugin} doctor",
                        Status.PROBLEM,
                        f"its section {section.title!r} has the title of another section; left out",
                        "report this to the plugin's authors",
                    )
                )
                continue
            sections.append(_owned(section, call.plugin))
    return sections, failures


def _check_sections(answer: object) -> str | None:
    if not isinstance(answer, list | tuple):
        return f"its {HOOK} hook returned {type(answer).__name__}, not a list of DoctorSection"
    for section in answer:
        if not isinstance(section, DoctorSection):
            return f"its {HOOK} hook returned {type(section).__name__} among its sections, not a DoctorSection"
        if any(not isinstance(f, Finding) for f in section.findings):
            return f"section {section.title!r} holds something other than Finding records"
    return None


def _owned(section: DoctorSection, plugin: str) -> DoctorSection:
    """The section with its plugin named, and its findings filed under its title whatever they said."""
    findings = tuple(f if f.area == section.title else _refiled(f, section.title) for f in section.findings)
    return DoctorSection(section.title, findings, section.codecs, section.accelerators, section.iommu, plugin=plugin)


def _refiled(finding: Finding, area: str) -> Finding:
    return Finding(area, finding.item, finding.status, finding.detail, finding.advice)


# ---------------------------------------------------------------------------------------------------
# The whole diagnosis


@dataclass
class Diagnosis:
    findings: list[Finding]
    codecs: list[CodecReport]
    accelerators: list[Accelerator]
    identity: Identity
    root: Path
    plugins: list[dict[str, Any]] = field(default_factory=list)
    sections: list[DoctorSection] = field(default_factory=list)

    @property
    def areas(self) -> list[str]:
        """The report's blocks in order: the plugins' sections, then the IOMMU, codecs and plugins."""
        return [s.title for s in self.sections] + list(CORE_AREAS)

    @property
    def hardware_codecs(self) -> list[str]:
        return [c.name for c in self.codecs if c.hardware_available]

    def no_hardware_reason(self) -> str:
        """Why no codec can use hardware, codec by codec (for --require-hw)."""
        parts = [f"{c.name}: {c.hardware.reason}" for c in self.codecs if c.hardware is not None]
        return "no hardware path of any codec is available" + (f" ({'; '.join(parts)})" if parts else "")

    def summary(self) -> list[str]:
        """The closing sentences: devices seen, hardware paths that will run, and what runs otherwise."""
        others = [f"{c.name} ({c.sends_text()})" for c in self.codecs if not c.hardware_available]
        lines: list[str] = []
        if not self.accelerators:
            looked = ", ".join(f"no {s.title}" for s in self.sections)
            lines.append(
                "No accelerator device is present on this host "
                + (f"({looked} device)." if looked else "(no installed plugin looks for one).")
            )
            lines.append(f"These paths will run, without hardware: {', '.join(others)}.")
            return lines
        lines.append(f"Accelerator devices here: {', '.join(a.text for a in self.accelerators)}.")
        if self.hardware_codecs:
            lines.append(f"Hardware paths available: {', '.join(self.hardware_codecs)}.")
        else:
            lines.append("No codec's hardware path is available yet: see the problems above.")
        if others:
            lines.append(f"These codecs will run without hardware: {', '.join(others)}.")
        return lines

    def counts(self) -> dict[str, int]:
        return {str(s): sum(1 for f in self.findings if f.status is s) for s in Status}

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "user": {"uid": self.identity.uid, "gids": sorted(self.identity.gids)},
            "accelerators": [a.text for a in self.accelerators],
            "hardware_codecs": self.hardware_codecs,
            "counts": self.counts(),
            "findings": [f.as_dict() for f in self.findings],
            "codecs": [c.as_dict() for c in self.codecs],
            "plugins": self.plugins,
            "sections": [s.as_dict() for s in self.sections],
            "summary": self.summary(),
        }


def speedups_finding() -> Finding:
    """Which per-packet hot paths run: mfdcomp._speedups, or the pure-Python reference (and why)."""
    from mfdcomp import speedups

    if speedups.compiled() is not None:
        return Finding(CODECS, "per-packet hot paths", Status.OK, speedups.status())
    advice = (
        f"unset {speedups.ENV} for the compiled path"
        if os.environ.get(speedups.ENV, "") not in ("", "0")
        else "install gcc and python3-dev, then reinstall mfdcomp (pip install -e .) to build it"
    )
    return Finding(CODECS, "per-packet hot paths", Status.INFO, speedups.status(), advice)


def tls_reads_finding() -> Finding | None:
    """Whether the compiled receive loop reads TLS sessions itself (mfdcomp/_tlsdirect.c); None without it."""
    import ssl

    from mfdcomp import speedups

    if speedups.compiled() is None:
        return None
    why = speedups.bind_tls()
    if why is None:
        detail = f"read by the compiled loop itself, through the {ssl.OPENSSL_VERSION} of Python's ssl"
        return Finding(CODECS, "TLS channel reads", Status.OK, detail)
    detail = f"through Python's ssl, a call per 16 KiB record: {why}"
    return Finding(CODECS, "TLS channel reads", Status.INFO, detail, "a Python whose ssl module is a shared _ssl")


def diagnose(
    root: Path = Path("/"),
    registry: Registry | None = None,
    identity: Identity | None = None,
    memlock: int | None = None,
) -> Diagnosis:
    """Every finding about this host (or the tree at ``root``) and every registered codec.

    ``memlock`` is the locked-memory limit in bytes the plugins should assume (None: this process's own).
    """
    registry = registry if registry is not None else default_registry()
    who = identity or Identity.current()
    reports = [codec_report(name, codec) for name, codec in sorted(registry.codecs.items())]
    probes = {r.name: r.probes for r in reports}
    sections, failures = plugin_sections(registry, root, who, memlock, probes)
    devices = [a for s in sections for a in s.accelerators]
    needed_by = list(dict.fromkeys(a.area for a in devices if a.needs_iommu))
    uses: list[IommuUse] = [s.iommu for s in sections if s.iommu is not None]
    areas = {s.title: i for i, s in enumerate(sections)}
    if not sections:
        # Device knowledge comes from the plugins: without any, say so instead of a report that looks clean.
        failures.append(
            Finding(
                PLUGINS,
                "hardware diagnosis",
                Status.INFO,
                "no installed plugin reports on accelerator hardware (none implements mfdcomp_doctor)",
                "install the accelerator plugins into this Python (`bash ci/setup.sh`) to have their devices checked",
            )
        )
    findings = (
        [f for s in sections for f in s.findings]
        + iommu_findings(root, sorted(needed_by), uses)
        + codec_findings(reports, registry, sections)
        + [speedups_finding()]
        + [f for f in [tls_reads_finding()] if f is not None]
        + failures
    )
    order = [*areas, *CORE_AREAS]
    findings.sort(key=lambda f: order.index(f.area))
    plugins = [
        {"name": p.name, "source": p.source, "codecs": list(p.codecs), "errors": list(p.errors)}
        for p in registry.plugins
    ]
    return Diagnosis(findings, reports, devices, who, root, plugins, sections)

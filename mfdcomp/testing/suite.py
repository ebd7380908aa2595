"""Running the checks over codecs and turning the outcomes into verdicts."""

from __future__ import annotations

import enum
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mfdcomp.methods import Codec
from mfdcomp.registry import Registry
from mfdcomp.testing.checks import CHECKS, NotApplicable, Notes, NotRun, SuiteConfig


class Status(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_APPLICABLE = "not applicable"
    NOT_RUN = "not run"  # concerns the codec but could not run here (no device): never a pass


@dataclass
class CheckResult:
    check: str
    status: Status
    detail: str = ""
    notes: Notes = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": str(self.status),
            "detail": self.detail,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class CodecVerdict:
    """Every check of one codec, and the numbers of its throughput run."""

    codec: str
    results: list[CheckResult] = field(default_factory=list)
    load_error: str | None = None

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status is status)

    @property
    def failed(self) -> bool:
        """A check failed or the plugin did not load: the exit code's business."""
        return self.load_error is not None or self.count(Status.FAILED) > 0

    @property
    def verdict(self) -> str:
        """PASS needs a passed check: a codec whose checks were all n/a or not run proved nothing."""
        if self.failed:
            return "FAIL"
        return "PASS" if self.count(Status.PASSED) else "NOT RUN"

    @property
    def ok(self) -> bool:
        return self.verdict == "PASS"

    def notes(self, check: str) -> Notes:
        for result in self.results:
            if result.check == check and result.status is Status.PASSED:
                return result.notes
        return {}

    def as_dict(self) -> dict[str, Any]:
        throughput = self.notes("throughput")
        return {
            "codec": self.codec,
            "ok": self.ok,
            "verdict": self.verdict,
            "load_error": self.load_error,
            "passed": self.count(Status.PASSED),
            "failed": self.count(Status.FAILED),
            "not_applicable": self.count(Status.NOT_APPLICABLE),
            "not_run": self.count(Status.NOT_RUN),
            "paths": throughput.get("paths", {}),
            "ratio": throughput.get("ratio"),
            "gb_per_s": throughput.get("gb_per_s"),
            "checks": [r.as_dict() for r in self.results],
        }


def run_check(codec: Codec, check: str, config: SuiteConfig) -> CheckResult:
    """One check of one codec; whatever it raises becomes the verdict, never an escape."""
    started = time.monotonic()
    try:
        notes = CHECKS[check](codec, config)
    except NotApplicable as exc:
        return CheckResult(check, Status.NOT_APPLICABLE, str(exc), seconds=time.monotonic() - started)
    except NotRun as exc:
        return CheckResult(check, Status.NOT_RUN, str(exc), seconds=time.monotonic() - started)
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = f"{type(exc).__name__}: {exc} (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
        return CheckResult(check, Status.FAILED, detail, seconds=time.monotonic() - started)
    return CheckResult(check, Status.PASSED, notes=notes, seconds=time.monotonic() - started)


def select_codecs(registry: Registry, names: Sequence[str]) -> tuple[list[Codec], list[CodecVerdict]]:
    """The codecs asked for (all when none), and a failed verdict for each plugin that did not load."""
    broken = [
        CodecVerdict(f"plugin {p.name}", load_error="; ".join(p.errors))
        for p in registry.plugins
        if not p.ok and (not names or p.name in names)
    ]
    if not names:
        return [registry.codecs[n] for n in sorted(registry.codecs)], broken
    missing = [n for n in names if n not in registry.codecs and all(v.codec != f"plugin {n}" for v in broken)]
    broken += [CodecVerdict(n, load_error=f"no codec named {n!r} is registered") for n in missing]
    return [registry.codecs[n] for n in names if n in registry.codecs], broken


def run_suite(
    codecs: Iterable[Codec],
    config: SuiteConfig,
    *,
    checks: Sequence[str] = tuple(CHECKS),
    on_result: Callable[[str, CheckResult], None] | None = None,
) -> list[CodecVerdict]:
    verdicts = []
    for codec in codecs:
        verdict = CodecVerdict(codec.info.name)
        for check in checks:
            result = run_check(codec, check, config)
            verdict.results.append(result)
            if on_result is not None:
                on_result(codec.info.name, result)
        verdicts.append(verdict)
    return verdicts

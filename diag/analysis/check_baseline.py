"""``diag check``: what a service holds after a warm-up, compared with a committed baseline.  Pure.

A baseline (schema ``diag.check-baseline/1``) counts pending tasks by group (coroutine,
innermost stack function, wait kind), held Lock/Semaphore permits by primitive (kind and
label), and lists the findings of ``diag leaks`` by signature (kind and title with
addresses and numbers blanked out).  ``compare`` fails a check only on what is *new*: a
group or a primitive whose count grew by more than the tolerance, or a finding whose
signature the baseline does not have.

Usage::

    now = observe(snapshot, leak_report(snapshot))
    result = compare(CheckBaseline.from_json(text), now, tolerance=0)
    if not result.passed: ...
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from diag.analysis.leak_verdicts import Finding, LeakReport
from diag.documents import require
from diag.errors import TargetError
from diag.model.sync_snapshot import SyncSnapshot
from diag.model.task_snapshot import TaskInfo, check_schema

SCHEMA_NAME = "diag.check-baseline"
SCHEMA_MAJOR = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_MAJOR}"
#: Finding kinds that are compared (suspects depend on how long the service has run).
FINDING_KINDS = ("proven_leak", "leaked_permit", "deadlock", "loop_blocked", "exhausted")
#: The checks, in report order: one JUnit test case each.
CHECKS = ("task_groups", "permits") + FINDING_KINDS
CHECK_TITLES = {"task_groups": "task groups", "permits": "held permits",
                **{kind: f"findings: {kind}" for kind in FINDING_KINDS}}

_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?")


def group_signature(task: TaskInfo) -> str:
    top = task.stack[0].function if task.stack else "?"
    return f"{task.coro} @ {top} [{task.wait.kind}]"


def finding_signature(finding: Finding) -> str:
    """``kind: title`` with addresses as ``0x?`` and numbers as ``N`` (ids and counts vary)."""
    title = _NUMBER.sub("N", _ADDRESS.sub("\0", finding.title)).replace("\0", "0x?")
    return f"{finding.kind}: {title}"


@dataclass(frozen=True)
class CheckBaseline:
    """Counts per task group and per held primitive, and the finding signatures."""

    groups: Mapping[str, int]
    permits: Mapping[str, int]
    findings: tuple[str, ...] = ()
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "groups": dict(sorted(self.groups.items())),
                "permits": dict(sorted(self.permits.items())), "findings": sorted(self.findings)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: Any) -> CheckBaseline:
        if not isinstance(d, Mapping):
            raise TargetError("not a diag check baseline (expected a JSON object)")
        check_schema(d.get("schema"), SCHEMA_NAME, SCHEMA_MAJOR)
        require(d, ("groups",), "diag check baseline")
        try:
            return cls({str(k): int(v) for k, v in (d.get("groups") or {}).items()},
                       {str(k): int(v) for k, v in (d.get("permits") or {}).items()},
                       tuple(str(f) for f in d.get("findings") or ()))
        except (TypeError, ValueError, AttributeError) as err:
            raise TargetError(f"malformed diag check baseline: {err}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> CheckBaseline:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as err:
            raise TargetError(f"not a diag check baseline: invalid JSON ({err})") from None
        return cls.from_dict(data)


EMPTY = CheckBaseline({}, {}, ())


def observe(snap: SyncSnapshot, report: LeakReport) -> CheckBaseline:
    """What the service holds now, in baseline form."""
    groups: dict[str, int] = {}
    for task in snap.tasks.tasks:
        key = group_signature(task)
        groups[key] = groups.get(key, 0) + task.count
    permits: dict[str, int] = {}
    for state in snap.primitives:
        if state.holders:
            prim = state.primitive
            key = f"{prim.kind} {prim.label or '(unlabelled)'}"
            permits[key] = permits.get(key, 0) + len(state.holders)
    findings = tuple(sorted({finding_signature(f) for f in report.findings if f.kind in FINDING_KINDS}))
    return CheckBaseline(groups, permits, findings)


@dataclass(frozen=True)
class Regression:
    """One thing that is new: ``before`` and ``now`` are counts (0/1 for a finding)."""

    check: str
    signature: str
    before: int
    now: int
    detail: str = ""


@dataclass(frozen=True)
class CheckResult:
    regressions: tuple[Regression, ...]
    tolerance: int

    @property
    def passed(self) -> bool:
        return not self.regressions

    def failures(self, check: str) -> tuple[Regression, ...]:
        return tuple(r for r in self.regressions if r.check == check)


def _grown(check: str, before: Mapping[str, int], now: Mapping[str, int], tolerance: int) -> list[Regression]:
    return [Regression(check, key, before.get(key, 0), n) for key, n in sorted(now.items())
            if n - before.get(key, 0) > tolerance]


def compare(baseline: CheckBaseline, current: CheckBaseline, tolerance: int = 0,
            report: LeakReport | None = None) -> CheckResult:
    """Regressions of ``current`` against ``baseline``; ``report`` (the findings behind
    ``current``) adds each new finding's evidence."""
    out = _grown("task_groups", baseline.groups, current.groups, tolerance)
    out += _grown("permits", baseline.permits, current.permits, tolerance)
    evidence = {finding_signature(f): f"{f.title}: {f.evidence}" for f in (report.findings if report else ())}
    known = set(baseline.findings)
    for signature in current.findings:
        if signature not in known:
            kind = signature.partition(":")[0]
            out.append(Regression(kind, signature, 0, 1, evidence.get(signature, "")))
    return CheckResult(tuple(out), tolerance)

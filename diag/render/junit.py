"""``diag check`` as JUnit XML: one test case per check, a failure per check that regressed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TextIO

from diag.analysis.check_baseline import CHECK_TITLES, CHECKS, CheckResult, Regression
from diag.render.formatting import safe_text


def regression_line(reg: Regression) -> str:
    """One regression, one line (two with a finding's detail); names from the target escaped."""
    if reg.check in ("task_groups", "permits"):
        return safe_text(f"{reg.signature}: {reg.before} -> {reg.now} (+{reg.now - reg.before})")
    return safe_text(f"new finding {reg.signature}") + (f"\n    {safe_text(reg.detail)}" if reg.detail else "")


def render(result: CheckResult, out: TextIO, *, suite: str = "diag check", target: str = "") -> None:
    failed = [c for c in CHECKS if result.failures(c)]
    root = ET.Element("testsuites")
    node = ET.SubElement(root, "testsuite", name=suite, tests=str(len(CHECKS)), failures=str(len(failed)),
                         errors="0", skipped="0")
    if target:
        props = ET.SubElement(node, "properties")
        ET.SubElement(props, "property", name="target", value=target)
    for check in CHECKS:
        case = ET.SubElement(node, "testcase", classname="diag.check", name=CHECK_TITLES[check])
        regs = result.failures(check)
        if regs:
            failure = ET.SubElement(case, "failure", message=f"{len(regs)} new in {CHECK_TITLES[check]}",
                                    type="regression")
            failure.text = "\n".join(regression_line(r) for r in regs)
    ET.indent(root)
    out.write(ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")


__all__ = ["render", "regression_line"]

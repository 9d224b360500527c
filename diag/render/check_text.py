"""``diag check`` as text: one line per check (ok or FAIL), then what is new under it."""

from __future__ import annotations

from typing import TextIO

from diag.analysis.check_baseline import CHECK_TITLES, CHECKS, CheckResult
from diag.render.formatting import text_lines
from diag.render.junit import regression_line


def render(result: CheckResult, out: TextIO, *, target: str = "", baseline: str = "") -> None:
    against = f" against {baseline}" if baseline else ""
    lines = [f"diag check {target}{against} (tolerance {result.tolerance})"]
    for check in CHECKS:
        regs = result.failures(check)
        lines.append(f"{'FAIL' if regs else 'ok  '} {CHECK_TITLES[check]}")
        for reg in regs:
            lines += ["    " + part for part in regression_line(reg).splitlines()]
    lines.append("FAILED: new leaks since the baseline" if not result.passed else "passed: nothing new since the baseline")
    out.write(text_lines(lines))

"""``diag leaks``: the verdicts (proven leaks, leaked permits, deadlocks, ...); exit 1 on failure."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from diag.agent_protocol import DEFAULT_PROOF_BUDGET, MAX_PROOF_BUDGET
from diag.analysis.leak_verdicts import DEFAULT_FAIL_ON, KINDS, LeakOptions, LeakReport, leak_report
from diag.cli import option_checks as checks
from diag.errors import EXIT_FINDINGS, EXIT_OK, TargetError, UsageError
from diag.sources.multi_source import require_targets
from diag.sources.sync_source import load_sync, proof_allowance

if TYPE_CHECKING:
    from diag.model.target_result import Target

# The renderers, rich and the merging of several targets are imported where they are
# used: a command that ends in a usage error or on an unreachable target needs none of them.

FORMATS = ("table", "text", "json")
DEFAULT_FAIL_ON_TEXT = ",".join(kind for kind in KINDS if kind in DEFAULT_FAIL_ON)


EXAMPLES = (
    ("proven leaks, leaked permits, deadlocks, suspects; exit 1 on a leak", "diag leaks http://127.0.0.1:8080"),
    ("waits of a second already count as suspects; no proof run in the target",
     "diag leaks http://127.0.0.1:8080 --min-wait 1 --no-proof"),
    ("fail only on deadlocks, with a report a program can read",
     "diag leaks unix:/tmp/diag-1000/4129.sock --fail-on deadlock --format json"),
    ("judge a sync snapshot saved earlier with diag sync -o", "diag leaks sync.json"),
)


def leaks(
    target: list[str] = typer.Argument(
        None, metavar="TARGET", show_default=False,
        help="http://HOST:PORT, HOST:PORT, unix:/PATH, pid:N, or a sync snapshot saved with -o FILE; "
             "several for one merged view"),
    format: Optional[str] = typer.Option(None, "--format", "-f", metavar="FORMAT",
                                         show_default="table on a terminal, else text", help="table, text or json"),
    min_wait: float = typer.Option(10.0, "--min-wait", metavar="SECONDS",
                                   help="seconds before a reachable wait is a suspect"),
    held: float = typer.Option(60.0, "--held-threshold", metavar="SECONDS",
                               help="seconds a permit may be held by a stuck holder"),
    stall: float = typer.Option(LeakOptions.stall_threshold, "--stall-threshold", metavar="SECONDS",
                                help="seconds the loop may go without turning (now, or once in the stall window)"),
    stall_window: float = typer.Option(LeakOptions.stall_window, "--stall-window", metavar="SECONDS",
                                       help="seconds of the agent's stall history judged"),
    stall_repeats: int = typer.Option(LeakOptions.stall_repeats, "--stall-repeats", metavar="N",
                                      help="stalls in the window that make a loop_blocked/loop_starved verdict"),
    cancel_grace: float = typer.Option(2.0, "--cancel-grace", metavar="SECONDS",
                                       help="seconds a cancelled task may go on waiting before its cancel counts as swallowed"),
    fail_on: str = typer.Option(DEFAULT_FAIL_ON_TEXT, "--fail-on", metavar="KINDS",
                                show_default=DEFAULT_FAIL_ON_TEXT.replace(",", ", "),
                                help=f"finding kinds that make the exit code 1, comma-separated (of {', '.join(KINDS)}; "
                                     "'none')"),
    proof: bool = typer.Option(True, "--proof/--no-proof", help="run the reachability proof in the target"),
    budget: float = typer.Option(DEFAULT_PROOF_BUDGET, "--proof-budget", metavar="SECONDS",
                                 help=f"CPU seconds the proof may take, the target paused meanwhile (more than 0, at "
                                      f"most {MAX_PROOF_BUDGET:g}); a bigger heap needs more: about 1s a million objects"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", show_default="not saved",
                                          help="also save the sync snapshot as JSON here"),
    timeout: float = typer.Option(10.0, "--timeout", metavar="SECONDS",
                                  help="seconds to wait for the target (plus the proof budget; each target)"),
    agent_dir: Optional[Path] = typer.Option(None, "--agent-dir", metavar="DIR", show_default="none",
                                             help="every process that wrote its agent file here (diag run --agent-dir)"),
) -> int:
    """Say which waits will never end and why: exit 1 when a --fail-on finding is present."""
    targets = list(target or [])
    require_targets(targets, agent_dir)
    fmt = format or ("table" if sys.stdout.isatty() else "text")
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    checks.seconds("--timeout", timeout)
    checks.seconds("--proof-budget", budget, at_most=MAX_PROOF_BUDGET)
    for option, value in (("--min-wait", min_wait), ("--held-threshold", held), ("--stall-threshold", stall),
                          ("--stall-window", stall_window), ("--cancel-grace", cancel_grace)):
        checks.threshold(option, value)
    checks.in_range("--stall-repeats", stall_repeats, at_least=1)
    checks.writable_file("-o/--output", output)
    kinds = frozenset() if fail_on.strip() == "none" else frozenset(k.strip() for k in fail_on.split(",") if k.strip())
    options = LeakOptions(min_wait=min_wait, held_threshold=held, stall_threshold=stall, stall_window=stall_window,
                          stall_repeats=stall_repeats, fail_on=kinds, cancel_grace=cancel_grace)
    options.validate()
    if agent_dir is not None or len(targets) > 1:
        return _many(targets, agent_dir, fmt, options, proof, budget, output, timeout)
    snap = load_sync(targets[0], timeout=timeout, proof=proof, budget=budget)
    if output is not None:
        try:
            output.write_text(snap.to_json())
        except OSError as err:
            raise TargetError(f"cannot write {output}: {err.strerror or err}") from None
    report = leak_report(snap, options)
    if fmt == "json":
        from diag.render import jsonout

        jsonout.render(report, sys.stdout)
    elif fmt == "text":
        from diag.render import leaks_render

        leaks_render.render_text(report, sys.stdout, cwd=os.getcwd())
    else:
        from rich.console import Console

        from diag.render import leaks_render

        leaks_render.render_table(report, Console(), cwd=os.getcwd())
    return EXIT_FINDINGS if report.fails(options.fail_on) else EXIT_OK


def _many(targets: list[str], agent_dir: Path | None, fmt: str, options: LeakOptions, proof: bool, budget: float,
          output: Path | None, timeout: float) -> int:
    """Several processes: each proves and judges its own tasks; findings carry their process.
    Exit 1 when any process has a --fail-on finding, 3 when no process answered."""
    from rich.console import Console

    from diag.analysis.merge import many_document, merge_findings
    from diag.cli.console import stderr
    from diag.render import jsonout, many_leaks
    from diag.sources.multi_source import fetch_all, report_failures, resolve_targets

    if output is not None:
        raise UsageError("-o saves one process's snapshot; with several targets use --format json > FILE")
    found = resolve_targets(targets, str(agent_dir) if agent_dir is not None else None)

    def fetch(t: Target) -> LeakReport:
        return leak_report(load_sync(t.target, timeout=timeout, proof=proof, budget=budget), options)

    results = fetch_all(found, fetch, timeout + (proof_allowance(budget)[0] if proof else 0.0))
    cwd = os.getcwd()
    if fmt == "json":
        jsonout.render(many_document("leaks", time.time(), results), sys.stdout)
    else:
        findings = merge_findings(results)
        if fmt == "text":
            many_leaks.render_text(results, findings, sys.stdout, cwd=cwd)
        else:
            many_leaks.render_table(results, findings, Console(), cwd=cwd)
    sys.stdout.flush()
    code = report_failures(results, lambda line: stderr.print(line, markup=False, highlight=False))
    if any(r.value is not None and r.value.fails(options.fail_on) for r in results):
        return EXIT_FINDINGS
    return code

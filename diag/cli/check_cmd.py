"""``diag check``: warm a service up, let it settle, and fail only on leaks that are new
since a committed baseline (exit 1), for CI against a service under test."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer

from diag.analysis.check_baseline import EMPTY, CheckBaseline, compare, observe
from diag.analysis.leak_verdicts import LeakOptions, leak_report
from diag.agent_protocol import DEFAULT_PROOF_BUDGET, MAX_PROOF_BUDGET
from diag.cli import option_checks as checks
from diag.cli.console import stderr
from diag.errors import EXIT_FINDINGS, EXIT_OK, TargetError, UsageError
from diag.documents import MAX_DOCUMENT_BYTES, read_file
from diag.sources.source import Deadline, http_exchange, open_source, parse_http_url, request_bytes
from diag.sources.sync_source import read_sync

#: Most requests one warm-up may send, so a typo cannot flood the target.
MAX_REQUESTS = 100_000
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: Longest --timeout and --settle accepted (a socket timeout must fit the platform's clock).
MAX_WAIT = 86400.0
_REQUEST = re.compile(r"^\s*([A-Za-z]+)\s+(/\S*)(?:\s+[xX](\d+))?\s*$")


@dataclass(frozen=True)
class WarmUp:
    method: str
    path: str
    times: int


def parse_request(text: str, where: str = "--request") -> WarmUp:
    """``METHOD PATH [xN]``, e.g. ``GET /fixed/lock x20``."""
    m = _REQUEST.match(text)
    if m is None or m.group(1).upper() not in _METHODS:
        raise UsageError(f"{where}: expected 'METHOD /PATH [xN]', got {text.strip()!r}")
    times = int(m.group(3) or 1)
    if not 1 <= times <= MAX_REQUESTS:
        raise UsageError(f"{where}: xN must be between 1 and {MAX_REQUESTS}")
    return WarmUp(m.group(1).upper(), m.group(2), times)


#: The largest scenario file read.
MAX_SCENARIO_BYTES = 1024 * 1024


def parse_scenario(path: Path) -> list[WarmUp]:
    """One ``METHOD PATH [xN]`` per line; blank lines and ``#`` comments are skipped."""
    try:
        text = read_file(str(path), MAX_SCENARIO_BYTES, "scenario").decode("utf-8", errors="replace")
    except TargetError as err:
        raise UsageError(f"scenario {err}") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        if line.strip():
            out.append(parse_request(line, f"{path}:{number}"))
    return out


def warm_up(app: str, steps: list[WarmUp], timeout: float) -> int:
    """Send every request, one after another, each on its own connection and within
    ``timeout``; any status is fine, and the answers are read to the end, not kept."""
    address, base = parse_http_url(app, "http://HOST:PORT for --app")
    sent = 0
    for step in steps:
        request = request_bytes(step.method, base + step.path, address)
        for _ in range(step.times):
            http_exchange(f"{app}: {step.method} {step.path}", address, request, Deadline(timeout), None)
            sent += 1
    return sent


EXAMPLES = (
    ("warm the service up, then write what it holds as the baseline",
     "diag check http://127.0.0.1:8080 -r 'GET /fixed/lock x20' --baseline diag-baseline.json --update-baseline"),
    ("the same warm-up in CI: exit 1 on anything new, with JUnit XML",
     "diag check http://127.0.0.1:8080 -r 'GET /fixed/lock x20' --baseline diag-baseline.json --junit diag.xml"),
    ("warm-up requests from a file, sent to the app's own port",
     "diag check unix:/tmp/diag-1000/4129.sock --app http://127.0.0.1:8000 --scenario warmup.txt"),
)


def check(
    target: str = typer.Argument(..., metavar="TARGET", show_default=False,
                                 help="where diag's endpoints answer: http://HOST:PORT, HOST:PORT, unix:/PATH or pid:N "
                                      "(or a sync snapshot saved with -o FILE)"),
    request: List[str] = typer.Option([], "--request", "-r", metavar="REQUEST", show_default="none",
                                      help="warm-up request 'METHOD /PATH [xN]', such as 'GET /fixed/lock x20' "
                                           "(repeatable)"),
    scenario: Optional[Path] = typer.Option(None, "--scenario", metavar="FILE", show_default="none",
                                            help="file of warm-up requests, one per line"),
    app: Optional[str] = typer.Option(None, "--app", metavar="URL", show_default="TARGET",
                                      help="the service's base URL for the warm-up"),
    settle: float = typer.Option(1.0, "--settle", metavar="SECONDS", help="seconds to wait after the warm-up"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", metavar="FILE", show_default="an empty baseline",
                                            help="the committed baseline JSON file"),
    update_baseline: bool = typer.Option(False, "--update-baseline", show_default="off",
                                         help="write the baseline and exit 0"),
    tolerance: int = typer.Option(0, "--tolerance", metavar="N", help="growth of a group or permit count that is still fine"),
    junit_file: Optional[Path] = typer.Option(None, "--junit", metavar="FILE", show_default="not written",
                                              help="also write JUnit XML here"),
    timeout: float = typer.Option(10.0, "--timeout", metavar="SECONDS",
                                  help="seconds to wait for each request and for the agent"),
    budget: float = typer.Option(DEFAULT_PROOF_BUDGET, "--proof-budget", metavar="SECONDS",
                                 help=f"CPU seconds the reachability proof may take, the target paused meanwhile "
                                      f"(more than 0, at most {MAX_PROOF_BUDGET:g})"),
) -> int:
    """Fail (exit 1) on task groups, held permits or findings that are new since the baseline."""
    checks.in_range("--tolerance", tolerance, at_least=0)
    checks.seconds("--settle", settle, zero=True, at_most=MAX_WAIT)
    checks.seconds("--timeout", timeout, at_most=MAX_WAIT)
    checks.seconds("--proof-budget", budget, at_most=MAX_PROOF_BUDGET)
    checks.writable_file("--junit", junit_file)
    if update_baseline:
        checks.writable_file("--baseline", baseline)
    if update_baseline and baseline is None:
        raise UsageError("--update-baseline needs --baseline FILE")
    steps = [parse_request(r) for r in request] + (parse_scenario(scenario) if scenario is not None else [])
    if sum(s.times for s in steps) > MAX_REQUESTS:
        raise UsageError(f"the warm-up may send at most {MAX_REQUESTS} requests")
    before = EMPTY
    if baseline is not None and not update_baseline:
        try:
            text = read_file(str(baseline), MAX_DOCUMENT_BYTES, "baseline")
        except TargetError as err:
            raise UsageError(f"baseline {err} (create it with --update-baseline)") from None
        try:
            before = CheckBaseline.from_json(text)
        except RecursionError:
            raise UsageError(f"{baseline}: not a diag check baseline: invalid JSON (nested too deep)") from None
        except OverflowError as err:  # an infinite count
            raise UsageError(f"{baseline}: malformed diag check baseline: {err}") from None
        except TargetError as err:
            raise UsageError(f"{baseline}: {err}") from None
    # the target is parsed (and a pid: target attached to) before the warm-up and the settle
    # time: a bad TARGET or token is a usage error now, not after the wait
    source = open_source(target, timeout)
    if steps:
        base = app or (target if target.startswith(("http://", "https://")) else None)
        if base is None:
            raise UsageError("the warm-up needs --app URL when TARGET is not an http:// URL")
        sent = warm_up(base, steps, timeout)
        stderr.print(f"diag check: warm-up sent {sent} requests to {base}; settling {settle:g}s",
                     markup=False, highlight=False)
    if settle:
        time.sleep(settle)
    snap = read_sync(source, proof=True, budget=budget)
    report = leak_report(snap, LeakOptions())
    now = observe(snap, report)
    if update_baseline:
        assert baseline is not None
        try:
            baseline.write_text(now.to_json())
        except OSError as err:
            raise UsageError(f"cannot write baseline {baseline}: {err.strerror or err}") from None
        stderr.print(f"diag check: baseline written to {baseline} ({len(now.groups)} task groups, "
                     f"{sum(now.permits.values())} held permits, {len(now.findings)} findings)",
                     markup=False, highlight=False)
        return EXIT_OK
    result = compare(before, now, tolerance, report)
    from diag.render import check_text, junit  # only for a report: not for a usage error or a baseline

    check_text.render(result, sys.stdout, target=target, baseline=str(baseline or "an empty baseline"))
    if junit_file is not None:
        try:
            with junit_file.open("w") as out:
                junit.render(result, out, target=target)
        except OSError as err:
            raise TargetError(f"cannot write {junit_file}: {err.strerror or err}") from None
    return EXIT_OK if result.passed else EXIT_FINDINGS

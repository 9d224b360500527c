"""``diag tasks``: what every task waits on, for how long, and who created it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import typer

from diag.analysis.task_groups import DEFAULT_LIMIT, TaskQuery, task_view
from diag.cli import option_checks as checks
from diag.errors import TargetError, UsageError
from diag.model import task_wire
from diag.render import jsonout
from diag.sources.multi_source import require_targets
from diag.sources.source import AgentSource, open_source

if TYPE_CHECKING:
    from diag.model.task_snapshot import TaskSnapshot

# The renderers, rich and the merging of several targets are imported where they are
# used: a command that ends in a usage error or on an unreachable target needs none of them.

FORMATS = ("table", "text", "json")
#: Seconds the ``--filter`` regex may take over one answer before the command gives up.
FILTER_BUDGET = 10.0


def agent_query(query: TaskQuery) -> TaskQuery:
    """What the agent is asked for.  A ``--filter`` regex is matched here, never on the
    target's side: a pattern such as ``(a+)+$`` can backtrack for hours, and on the agent's
    thread it would hold the target's GIL meanwhile.  So every task (``--debug 2``, no
    limit) comes back, filtered by state and wait there, and grouped here after the match."""
    if not query.pattern:
        return query
    return replace(query, pattern=None, debug=2, limit=None)


@contextlib.contextmanager
def filter_deadline(seconds: float = FILTER_BUDGET) -> Iterator[None]:
    """Matching the ``--filter`` regex stops after ``seconds`` with a usage error (``re``
    checks for signals while it backtracks); a no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise UsageError(f"the --filter regex took more than {seconds:g}s to match; "
                         "nested repetition such as (a+)+ backtracks without end, simplify it")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


EXAMPLES = (
    ("tasks grouped by what they wait on", "diag tasks http://127.0.0.1:8080"),
    ("every task in full, Go style, only those matching a regex",
     "diag tasks http://127.0.0.1:8080 --debug 2 --filter deadlock_worker --format text"),
    ("in process 4129, attached without a restart: waits of 5 s or more; the whole dump saved",
     "diag tasks pid:4129 --min-wait 5 -o tasks.json"),
    ("read the saved dump again, the waiting tasks only", "diag tasks tasks.json --state waiting"),
)


def tasks(
    target: list[str] = typer.Argument(
        None, metavar="TARGET", show_default=False,
        help="http://HOST:PORT, HOST:PORT, unix:/PATH, pid:N, or a snapshot saved with -o FILE; "
             "several for one merged view"),
    debug: int = typer.Option(1, "--debug", "-d", metavar="1|2", help="1: group identical tasks; 2: every task in full"),
    format: Optional[str] = typer.Option(None, "--format", "-f", metavar="FORMAT", show_default="table on a terminal, else text",
                                         help="table, text or json"),
    filter: Optional[str] = typer.Option(None, "--filter", metavar="REGEX", show_default="every task",
                                         help="regex on task name, coroutine, wait reason, primitive label, "
                                              "stack functions and files"),
    state: list[str] = typer.Option([], "--state", metavar="STATE", show_default="any",
                                    help="running, ready or waiting (repeat or comma-separate)"),
    min_wait: Optional[float] = typer.Option(None, "--min-wait", metavar="SECONDS", show_default="0",
                                             help="only tasks waiting at least this many seconds"),
    limit: int = typer.Option(DEFAULT_LIMIT, "--limit", metavar="N", help="show at most this many groups or tasks"),
    dead: bool = typer.Option(False, "--dead", show_default="off", help="list the tasks that ended with an exception or were destroyed "
                                                    "while pending, newest first, instead of the pending ones"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", show_default="not saved",
                                          help="also save the full snapshot as JSON here"),
    timeout: float = typer.Option(10.0, "--timeout", metavar="SECONDS",
                                  help="seconds to wait for the target (each target)"),
    agent_dir: Optional[Path] = typer.Option(None, "--agent-dir", metavar="DIR", show_default="none",
                                             help="every process that wrote its agent file here (diag run --agent-dir)"),
) -> int:
    """Dump the target's asyncio tasks: stacks, what each waits on, for how long, created where."""
    targets = list(target or [])
    require_targets(targets, agent_dir)
    fmt = format or ("table" if sys.stdout.isatty() else "text")
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    checks.seconds("--timeout", timeout)
    checks.threshold("--min-wait", min_wait)
    checks.in_range("--limit", limit, at_least=1)
    checks.writable_file("-o/--output", output)
    states = tuple(s.strip() for item in state for s in item.split(",") if s.strip())
    query = TaskQuery(debug=debug, pattern=filter, states=states, min_wait=min_wait, limit=limit)
    query.validate()
    if agent_dir is not None or len(targets) > 1:
        if dead:
            raise UsageError("--dead lists one process's log; give one target")
        return _many(targets, agent_dir, query, fmt, output, timeout)
    source = open_source(targets[0], timeout)
    if output is not None:
        full = source.tasks(TaskQuery(debug=2, limit=None))
        try:
            output.write_text(json.dumps(task_wire.encode(full)))
        except OSError as err:
            raise TargetError(f"cannot write {output}: {err.strerror or err}") from None
    elif fmt == "json" and not query.pattern and not dead:
        # written from the agent's tables: no dataclass, nor dict, per task on the way
        from diag.render import tasks_json

        # a long dump written a slice at a time as it comes, while the agent describes the next
        source.tasks_feed(query, tasks_json.Feed(sys.stdout))
        return 0
    elif fmt == "text" and query.debug == 2 and not query.pattern and not dead and isinstance(source, AgentSource):
        # the same for the text of every task (a saved file is read whole, as below: made a
        # document and read back, it would be read twice)
        from diag.render import tasks_text

        source.tasks_feed(query, tasks_text.Feed(sys.stdout, os.getcwd()))
        return 0
    else:
        full = source.tasks(agent_query(query))
    if output is not None or query.pattern:
        with filter_deadline():
            view = task_view(full, query)
    else:
        view = full
    cwd = os.getcwd()
    if dead:
        from diag.model.task_snapshot import SCHEMA
        from diag.render import formatting as fmt_text
        from diag.render import tasks_text

        if fmt == "json":
            jsonout.render({"schema": SCHEMA, "process": view.process.to_dict(),
                            "dead_tasks": [d.to_dict() for d in view.dead_tasks]}, sys.stdout)
        else:  # escaped line by line: names and messages come from the program
            sys.stdout.write(fmt_text.text_lines(tasks_text.dead_lines(view, cwd)))
        return 0
    if fmt == "json":
        jsonout.render(view, sys.stdout)
    elif fmt == "text":
        from diag.render import tasks_text

        tasks_text.render(view, sys.stdout, cwd=cwd)
    else:
        from rich.console import Console

        from diag.render import tasks_table

        tasks_table.render(view, Console(), cwd=cwd)
    return 0


def _many(targets: list[str], agent_dir: Path | None, query: TaskQuery, fmt: str, output: Path | None,
          timeout: float) -> int:
    """Several processes: queried concurrently, merged, a failed target never blocks the rest."""
    from rich.console import Console

    from diag.analysis.merge import many_document, merge_tasks
    from diag.cli.console import stderr
    from diag.model.target_result import Target
    from diag.render import many_tasks
    from diag.sources.multi_source import fetch_all, report_failures, resolve_targets

    if output is not None:
        raise UsageError("-o saves one process's snapshot; with several targets use --format json > FILE")
    found = resolve_targets(targets, str(agent_dir) if agent_dir is not None else None)

    def fetch(t: Target) -> TaskSnapshot:
        return open_source(t.target, timeout).tasks(agent_query(query))

    results = fetch_all(found, fetch, timeout)
    if query.pattern:
        with filter_deadline():
            results = [replace(r, value=task_view(r.value, query)) if r.value is not None else r for r in results]
    cwd = os.getcwd()
    if fmt == "json":
        jsonout.render(many_document("tasks", time.time(), results), sys.stdout)
    else:
        view = merge_tasks(results, query.limit)
        if fmt == "text":
            many_tasks.render_text(view, sys.stdout, cwd=cwd)
        else:
            many_tasks.render_table(view, Console(), cwd=cwd)
    sys.stdout.flush()
    return report_failures(results, lambda line: stderr.print(line, markup=False, highlight=False))

"""``diag tasks``: what every task waits on, for how long, and who created it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from diag.analysis.task_groups import DEFAULT_LIMIT, TaskQuery, task_view
from diag.errors import TargetError, UsageError
from diag.render import jsonout, tasks_table, tasks_text
from diag.source import open_source

FORMATS = ("table", "text", "json")


def tasks(
    target: str = typer.Argument(..., help="http://HOST:PORT, unix:/PATH, or a snapshot saved with -o"),
    debug: int = typer.Option(1, "--debug", "-d", help="1: group identical tasks; 2: every task in full"),
    format: Optional[str] = typer.Option(None, "--format", "-f",
                                         help="table, text or json (default: table on a terminal, else text)"),
    filter: Optional[str] = typer.Option(None, "--filter", help="regex on task name, coroutine, wait reason, primitive label, stack functions and files"),
    state: list[str] = typer.Option([], "--state", help="running, ready or waiting (repeat or comma-separate)"),
    min_wait: Optional[float] = typer.Option(None, "--min-wait", help="only tasks waiting at least this many seconds"),
    limit: int = typer.Option(DEFAULT_LIMIT, "--limit", help="show at most this many groups or tasks"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also save the full snapshot as JSON here"),
    timeout: float = typer.Option(10.0, "--timeout", help="seconds to wait for the target"),
) -> int:
    """Dump the target's asyncio tasks: stacks, what each waits on, for how long, created where."""
    fmt = format or ("table" if sys.stdout.isatty() else "text")
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if not timeout > 0:
        raise UsageError("--timeout must be > 0")
    states = tuple(s.strip() for item in state for s in item.split(",") if s.strip())
    query = TaskQuery(debug=debug, pattern=filter, states=states, min_wait=min_wait, limit=limit)
    query.validate()
    source = open_source(target, timeout)
    if output is not None:
        full = source.tasks(TaskQuery(debug=2, limit=None))
        try:
            output.write_text(full.to_json())
        except OSError as err:
            raise TargetError(f"cannot write {output}: {err.strerror or err}") from None
        view = task_view(full, query)
    else:
        view = source.tasks(query)
    cwd = os.getcwd()
    if fmt == "json":
        jsonout.render(view, sys.stdout)
    elif fmt == "text":
        tasks_text.render(view, sys.stdout, cwd=cwd)
    else:
        tasks_table.render(view, Console(), cwd=cwd)
    return 0

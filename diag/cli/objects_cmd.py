"""``diag objects``: which types the target holds most of, which grow, and why one is alive."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from diag.analysis.heap_growth import compile_pattern, most_common, steady_growth
from diag.cli.console import stderr
from diag.errors import TargetError, UsageError
from diag.heap_snapshot import HeapSeries, HeapSnapshot
from diag.render import jsonout, objects_dot, objects_table, objects_text
from diag.source import AgentSource, agent_url, read_saved

FORMATS = ("table", "text", "json")
MAX_COUNT = 100
#: Longest --timeout and --interval accepted (a socket timeout must fit the platform's clock).
MAX_TIMEOUT = 86400.0


def _agent_target(target: str) -> str:
    return agent_url(target, "a saved .json file")


def _load(path: str) -> HeapSeries:
    return read_saved(path, HeapSeries.from_json)


def objects(
    target: str = typer.Argument(..., help="http://HOST:PORT or unix:/PATH of a diag agent, or a file saved with -o"),
    top: int = typer.Option(20, "--top", help="show this many types"),
    interval: Optional[float] = typer.Option(None, "--interval", help="seconds between snapshots; shows the types that grow"),
    count: Optional[int] = typer.Option(None, "--count", help="number of snapshots with --interval (default 3)"),
    type: Optional[str] = typer.Option(None, "--type", help="a type name (CachedResponse or pkg.mod.CachedResponse)"),
    backrefs: bool = typer.Option(False, "--backrefs", help="with --type: the reference chain from a module or task to one such object"),
    dot: Optional[Path] = typer.Option(None, "--dot", help="with --backrefs: also write the chain as a graphviz .dot file"),
    max_depth: int = typer.Option(12, "--max-depth", help="longest chain searched with --backrefs"),
    budget: float = typer.Option(3.0, "--budget", help="seconds each heap walk may take in the target"),
    filter: Optional[str] = typer.Option(None, "--filter", help="regex on type names"),
    format: Optional[str] = typer.Option(None, "--format", "-f", help="table, text or json (default: table on a terminal, else text)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also save the snapshots as JSON here"),
    timeout: float = typer.Option(10.0, "--timeout", help="seconds to wait for each answer"),
) -> int:
    """Count the target's live objects by type, find the types that grow, and why one object is alive."""
    fmt = format or ("table" if sys.stdout.isatty() else "text")
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if top < 1:
        raise UsageError("--top must be at least 1")
    if interval is not None and not 0 < interval <= MAX_TIMEOUT:
        raise UsageError(f"--interval must be > 0 and at most {MAX_TIMEOUT:g} seconds")
    if count is not None and interval is None:
        raise UsageError("--count needs --interval")
    n = count if count is not None else (3 if interval is not None else 1)
    if not 1 <= n <= MAX_COUNT or (interval is not None and n < 2):
        raise UsageError(f"--count must be between 2 and {MAX_COUNT}")
    if backrefs and not type:
        raise UsageError("--backrefs needs --type NAME")
    if dot is not None and not backrefs:
        raise UsageError("--dot needs --backrefs")
    if not 0 < budget <= 30:
        raise UsageError("--budget must be > 0 and at most 30 seconds")
    if not 1 <= max_depth <= 30:
        raise UsageError("--max-depth must be between 1 and 30")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise UsageError(f"--timeout must be > 0 and at most {MAX_TIMEOUT:g} seconds")
    compile_pattern(filter)

    if not target.startswith(("http://", "https://", "unix:")) and (target.endswith(".json") or os.path.exists(target)):
        series = _load(target)
    else:
        # Each answer takes up to two heap walks of ``budget`` in the target.
        source = AgentSource(_agent_target(target), max(timeout, 2 * budget + 1))
        params = {"budget": repr(budget)}
        snaps: list[HeapSnapshot] = []
        for i in range(n):
            if i:
                time.sleep(interval or 0.0)
            last = i == n - 1
            p = dict(params)
            if last and backrefs and type:
                p.update({"type": type, "max_depth": str(max_depth)})
            data = source.get("objects", p)
            if not isinstance(data, dict) or "schema" not in data:
                raise TargetError(f"{source.name}: not a diag agent (no schema in the answer)")
            snaps.append(HeapSnapshot.from_dict(data))
            if n > 1 and stderr.is_terminal:
                stderr.print(f"diag objects: snapshot {i + 1}/{n}", markup=False, highlight=False)
        series = HeapSeries(tuple(snaps), interval or 0.0)
    if output is not None:
        try:
            output.write_text(series.to_json())
        except OSError as err:
            raise TargetError(f"cannot write {output}: {err.strerror or err}") from None
    latest = series.snapshots[-1]
    if dot is not None:
        if latest.backrefs is None:
            raise TargetError("no back-reference chain to write (the snapshot has none)")
        try:
            dot.write_text(objects_dot.dot_text(latest.backrefs))
        except OSError as err:
            raise TargetError(f"cannot write {dot}: {err.strerror or err}") from None
    types = most_common(latest, top, pattern=filter, type_name=type)
    growth = steady_growth(series.snapshots, top=top, pattern=filter) if len(series.snapshots) > 1 else None
    if fmt == "json":
        jsonout.render(series, sys.stdout)
    elif fmt == "text":
        objects_text.render(latest, types, growth, sys.stdout, count=len(series.snapshots), interval=series.interval)
    else:
        objects_table.render(latest, types, growth, Console(), count=len(series.snapshots), interval=series.interval)
    return 0

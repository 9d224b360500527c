"""``diag objects``: which types the target holds most of, which grow, and why one is alive."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import typer

from diag.analysis.heap_growth import TypeGrowth, compile_pattern, most_common, steady_growth
from diag.cli import option_checks as checks
from diag.cli.console import stderr
from diag.errors import TargetError, UsageError
from diag.model.heap_snapshot import HeapSeries, HeapSnapshot
from diag.sources.source import AgentSource, agent_url, is_url, read_saved

FORMATS = ("table", "text", "json")
MAX_COUNT = 100
#: Longest --timeout and --interval accepted (a socket timeout must fit the platform's clock).
MAX_TIMEOUT = 86400.0


def _agent_target(target: str) -> str:
    return agent_url(target, "a saved .json file")


def _load(path: str) -> HeapSeries:
    return read_saved(path, HeapSeries.from_json)


EXAMPLES = (
    ("the 20 most common types", "diag objects http://127.0.0.1:8080"),
    ("the types that grow over 3 snapshots 5 seconds apart", "diag objects http://127.0.0.1:8080 --interval 5 --count 3"),
    ("why one CachedResponse is alive, drawn for graphviz",
     "diag objects http://127.0.0.1:8080 --type CachedResponse --backrefs --dot chain.dot"),
    ("the 10 largest types whose name matches a regex, as JSON",
     "diag objects http://127.0.0.1:8080 --filter Response --top 10 --format json"),
)


def objects(
    target: str = typer.Argument(..., metavar="TARGET", show_default=False,
                                 help="http://HOST:PORT, HOST:PORT, unix:/PATH, pid:N, or a file saved with -o FILE"),
    top: int = typer.Option(20, "--top", metavar="N", help="show this many types"),
    interval: Optional[float] = typer.Option(None, "--interval", metavar="SECONDS", show_default="one snapshot",
                                             help="seconds between snapshots; shows the types that grow"),
    count: Optional[int] = typer.Option(None, "--count", metavar="N", show_default="3 with --interval",
                                        help=f"number of snapshots with --interval (2 to {MAX_COUNT})"),
    type: Optional[str] = typer.Option(None, "--type", metavar="NAME", show_default="none",
                                       help="a type name (CachedResponse or pkg.mod.CachedResponse)"),
    backrefs: bool = typer.Option(False, "--backrefs", show_default="off",
                                  help="with --type: the reference chain from a module or task to one such object"),
    dot: Optional[Path] = typer.Option(None, "--dot", metavar="FILE", show_default="not written",
                                       help="with --backrefs: also write the chain as a graphviz .dot file"),
    max_depth: int = typer.Option(12, "--max-depth", metavar="N", help="longest chain searched with --backrefs (1 to 30)"),
    budget: float = typer.Option(3.0, "--budget", metavar="SECONDS",
                                 help="seconds each heap walk may take in the target (more than 0, at most 30)"),
    filter: Optional[str] = typer.Option(None, "--filter", metavar="REGEX", show_default="every type",
                                         help="regex on type names"),
    include_diag: bool = typer.Option(False, "--include-diag", show_default="off",
                                      help="also count diag's own types (modules diag and diag.*)"),
    format: Optional[str] = typer.Option(None, "--format", "-f", metavar="FORMAT",
                                         show_default="table on a terminal, else text", help="table, text or json"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", show_default="not saved",
                                          help="also save the snapshots as JSON here"),
    timeout: float = typer.Option(10.0, "--timeout", metavar="SECONDS", help="seconds to wait for each answer"),
) -> int:
    """Count the target's live objects by type, find the types that grow, and why one object is alive."""
    fmt = format or ("table" if sys.stdout.isatty() else "text")
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    checks.in_range("--top", top, at_least=1)
    checks.seconds("--interval", interval, at_most=MAX_TIMEOUT)
    if count is not None and interval is None:
        raise UsageError("--count needs --interval")
    n = count if count is not None else (3 if interval is not None else 1)
    if interval is not None:
        checks.in_range("--count", n, at_least=2, at_most=MAX_COUNT)
    if backrefs and not type:
        raise UsageError("--backrefs needs --type NAME")
    if dot is not None and not backrefs:
        raise UsageError("--dot needs --backrefs")
    checks.seconds("--budget", budget, at_most=30)
    checks.in_range("--max-depth", max_depth, at_least=1, at_most=30)
    checks.seconds("--timeout", timeout, at_most=MAX_TIMEOUT)
    checks.writable_file("-o/--output", output)
    checks.writable_file("--dot", dot)
    compile_pattern(filter)

    if not is_url(target) and (target.endswith(".json") or os.path.exists(target)):
        series = _load(target)
    else:
        source = AgentSource(_agent_target(target), timeout)
        params = {"budget": repr(budget)}
        snaps: list[HeapSnapshot] = []
        for i in range(n):
            if i:
                time.sleep(interval or 0.0)
            last = i == n - 1
            p = dict(params)
            if last and backrefs and type:
                p.update({"type": type, "max_depth": str(max_depth)})
            # Each answer takes up to two heap walks of ``budget`` in the target.
            data = source.get("objects", p, extra=2 * budget, extra_why=f"two heap walks of --budget {budget:g}s")
            snaps.append(source.snapshot(data, HeapSnapshot.from_dict))
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
            from diag.render import objects_dot

            dot.write_text(objects_dot.dot_text(latest.backrefs))
        except OSError as err:
            raise TargetError(f"cannot write {dot}: {err.strerror or err}") from None
    shown = series if include_diag else without_own_types(series)
    latest = shown.snapshots[-1]
    types = most_common(latest, top, pattern=filter, type_name=type)
    growth = steady_growth(shown.snapshots, top=top, pattern=filter) if len(shown.snapshots) > 1 else None
    # each renderer (and rich's table) imported for the format asked only
    if fmt == "json":
        from diag.render import jsonout

        jsonout.render(json_view(shown, top, filter, type, growth), sys.stdout)
    elif fmt == "text":
        from diag.render import objects_text

        objects_text.render(latest, types, growth, sys.stdout, count=len(shown.snapshots), interval=shown.interval)
    else:
        from rich.console import Console

        from diag.render import objects_table

        objects_table.render(latest, types, growth, Console(), count=len(shown.snapshots), interval=shown.interval)
    return 0


def is_own_type(name: str) -> bool:
    """A type of diag itself (module ``diag`` or ``diag.*``), such as ``diag._origins.Acquiring``:
    what the agent adds to the target, not what the target holds."""
    return name.startswith("diag.")


def without_own_types(series: HeapSeries) -> HeapSeries:
    """The series without diag's own types (``--include-diag`` keeps them), each snapshot's
    object and type counts less theirs, so the header counts what the rows list."""
    kept = []
    for snap in series.snapshots:
        own = [t for t in snap.types if is_own_type(t.name)]
        kept.append(replace(snap, types=tuple(t for t in snap.types if not is_own_type(t.name)),
                            objects=snap.objects - sum(t.count for t in own), types_total=snap.types_total - len(own)))
    return HeapSeries(tuple(kept), series.interval)


def json_view(series: HeapSeries, top: int, pattern: str | None, type_name: str | None,
              growth: tuple[TypeGrowth, ...] | None) -> dict[str, Any]:
    """The series as the table shows it: each snapshot's types filtered by ``--filter`` and
    ``--type`` and cut at ``--top``, and the types that grew (with several snapshots).  The
    whole series is what ``-o`` saves."""
    picked = HeapSeries(tuple(replace(s, types=most_common(s, top, pattern=pattern, type_name=type_name))
                              for s in series.snapshots), series.interval)
    document = picked.to_dict()
    if growth is not None:
        document["growth"] = [{"name": g.name, "first": g.first, "last": g.last, "growth": g.growth,
                               "per_interval": list(g.per_interval)} for g in growth]
    return document

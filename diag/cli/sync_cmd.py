"""``diag sync``: every live Lock, Semaphore, Condition, Event and Queue, who holds it, who waits."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from diag.cli import option_checks as checks
from diag.errors import TargetError, UsageError
from diag.sources.multi_source import require_targets
from diag.sources.sync_source import load_sync

if TYPE_CHECKING:
    from diag.model.sync_snapshot import SyncSnapshot
    from diag.model.target_result import Target

# The renderers, rich and the merging of several targets are imported where they are
# used: a command that ends in a usage error or on an unreachable target needs none of them.

FORMATS = ("table", "text", "json")


EXAMPLES = (
    ("the primitives someone holds or waits on", "diag sync http://127.0.0.1:8080"),
    ("every live primitive, as JSON", "diag sync http://127.0.0.1:8080 --all --format json"),
    ("every worker of a service started with diag run --agent-dir", "diag sync --agent-dir /tmp/diag-agents"),
)


def sync(
    target: list[str] = typer.Argument(
        None, metavar="TARGET", show_default=False,
        help="http://HOST:PORT, HOST:PORT, unix:/PATH, pid:N, or a snapshot saved with -o FILE; "
             "several for one merged view"),
    format: Optional[str] = typer.Option(None, "--format", "-f", metavar="FORMAT",
                                         show_default="table on a terminal, else text", help="table, text or json"),
    show_all: bool = typer.Option(False, "--all", show_default="off", help="also primitives nobody holds or waits on"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", show_default="not saved",
                                          help="also save the snapshot as JSON here"),
    timeout: float = typer.Option(10.0, "--timeout", metavar="SECONDS",
                                  help="seconds to wait for the target (each target)"),
    agent_dir: Optional[Path] = typer.Option(None, "--agent-dir", metavar="DIR", show_default="none",
                                             help="every process that wrote its agent file here (diag run --agent-dir)"),
) -> int:
    """List live asyncio primitives: state, holders (task, site, for how long) and waiters."""
    targets = list(target or [])
    require_targets(targets, agent_dir)
    fmt = format or ("table" if sys.stdout.isatty() else "text")
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    checks.seconds("--timeout", timeout)
    checks.writable_file("-o/--output", output)
    if agent_dir is not None or len(targets) > 1:
        return _many(targets, agent_dir, fmt, show_all, output, timeout)
    snap = load_sync(targets[0], timeout=timeout, proof=False)
    if output is not None:
        try:
            output.write_text(snap.to_json())
        except OSError as err:
            raise TargetError(f"cannot write {output}: {err.strerror or err}") from None
    if fmt == "json":
        from diag.render import jsonout

        jsonout.render(snap, sys.stdout)
    elif fmt == "text":
        from diag.render import sync_render

        sync_render.render_text(snap, sys.stdout, cwd=os.getcwd(), show_all=show_all)
    else:
        from rich.console import Console

        from diag.render import sync_render

        sync_render.render_table(snap, Console(), cwd=os.getcwd(), show_all=show_all)
    return 0


def _many(targets: list[str], agent_dir: Path | None, fmt: str, show_all: bool, output: Path | None,
          timeout: float) -> int:
    """Several processes: queried concurrently; each primitive with its process."""
    from rich.console import Console

    from diag.analysis.merge import many_document, merge_primitives
    from diag.cli.console import stderr
    from diag.render import jsonout, many_sync
    from diag.sources.multi_source import fetch_all, report_failures, resolve_targets

    if output is not None:
        raise UsageError("-o saves one process's snapshot; with several targets use --format json > FILE")
    found = resolve_targets(targets, str(agent_dir) if agent_dir is not None else None)

    def fetch(t: Target) -> SyncSnapshot:
        return load_sync(t.target, timeout=timeout, proof=False)

    results = fetch_all(found, fetch, timeout)
    cwd = os.getcwd()
    if fmt == "json":
        jsonout.render(many_document("sync", time.time(), results), sys.stdout)
    else:
        shown = merge_primitives(results, show_all)
        if fmt == "text":
            many_sync.render_text(results, shown, sys.stdout, cwd=cwd, show_all=show_all)
        else:
            many_sync.render_table(results, shown, Console(), cwd=cwd, show_all=show_all)
    sys.stdout.flush()
    return report_failures(results, lambda line: stderr.print(line, markup=False, highlight=False))

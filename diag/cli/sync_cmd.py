"""``diag sync``: every live Lock, Semaphore, Condition, Event and Queue, who holds it, who waits."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from diag.errors import TargetError, UsageError
from diag.render import jsonout, sync_render
from diag.sync_source import load_sync

FORMATS = ("table", "text", "json")


def sync(
    target: str = typer.Argument(..., help="http://HOST:PORT, unix:/PATH, or a snapshot saved with -o"),
    format: Optional[str] = typer.Option(None, "--format", "-f", help="table, text or json"),
    show_all: bool = typer.Option(False, "--all", help="also primitives nobody holds or waits on"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also save the snapshot as JSON here"),
    timeout: float = typer.Option(10.0, "--timeout", help="seconds to wait for the target"),
) -> int:
    """List live asyncio primitives: state, holders (task, site, for how long) and waiters."""
    fmt = format or ("table" if sys.stdout.isatty() else "text")
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if not timeout > 0:
        raise UsageError("--timeout must be > 0")
    snap = load_sync(target, timeout=timeout, proof=False)
    if output is not None:
        try:
            output.write_text(snap.to_json())
        except OSError as err:
            raise TargetError(f"cannot write {output}: {err.strerror or err}") from None
    if fmt == "json":
        jsonout.render(snap, sys.stdout)
    elif fmt == "text":
        sync_render.render_text(snap, sys.stdout, cwd=os.getcwd(), show_all=show_all)
    else:
        sync_render.render_table(snap, Console(), cwd=os.getcwd(), show_all=show_all)
    return 0

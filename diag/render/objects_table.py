"""Rich tables for ``diag objects``: type counts and steady growth; the chain as text."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from diag.analysis.heap_growth import TypeGrowth
from diag.model.heap_snapshot import HeapSnapshot, TypeCount
from diag.render import formatting as fmt
from diag.render.objects_text import chain_lines, header


def render(latest: HeapSnapshot, types: tuple[TypeCount, ...], growth: tuple[TypeGrowth, ...] | None,
           console: Console, *, count: int = 1, interval: float = 0.0) -> None:
    for line in header(latest, count, interval):
        console.print(fmt.cell(line, "dim"))
    table = Table(header_style="bold", title="most common types")
    table.add_column("type")
    table.add_column("count", justify="right")
    for t in types:
        table.add_row(fmt.cell(t.name), fmt.cell(str(t.count)))
    console.print(table)
    if growth is not None:
        if not growth:
            console.print(Text("growing steadily: none (no type grew in every interval)"))
        else:
            grow = Table(header_style="bold", title="growing steadily (grew in every interval)")
            for name in ("type", "first", "last", "growth", "per interval"):
                grow.add_column(name, justify="left" if name in ("type", "per interval") else "right")
            for g in growth:
                grow.add_row(fmt.cell(g.name), fmt.cell(str(g.first)), fmt.cell(str(g.last)),
                             fmt.cell(f"{g.growth:+d}"), fmt.cell(" ".join(f"{d:+d}" for d in g.per_interval)),
                             style="bold red" if g is growth[0] else "")
            console.print(grow)
    if latest.backrefs is not None:
        for line in chain_lines(latest.backrefs):
            console.print(fmt.cell(line))

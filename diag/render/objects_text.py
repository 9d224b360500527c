"""Plain-text ``diag objects``: type counts, steady growth and a back-reference chain."""

from __future__ import annotations

from typing import TextIO

from diag.analysis.heap_growth import TypeGrowth
from diag.model.heap_snapshot import BackrefChain, ChainLink, HeapSnapshot, TypeCount
from diag.render import formatting as fmt


def header(snap: HeapSnapshot, count: int, interval: float) -> list[str]:
    taken = fmt.timestamp(snap.taken_at)
    lines = [f"diag objects: pid {snap.process.pid} (python {snap.process.python or '?'}), "
             f"{snap.objects} GC-tracked objects of {snap.types_total} types, taken {taken} "
             f"in {snap.collect_seconds:.2f}s"]
    if count > 1:
        lines.append(f"{count} snapshots {interval:g}s apart")
    lines += [f"note: {n}" for n in snap.notes]
    return lines


def link_label(link: ChainLink) -> str:
    text = link.type
    if link.label:
        text += f" {link.label}"
    if link.size is not None:
        text += f" (len {link.size})"
    return text


def via_label(link: ChainLink) -> str:
    if link.via_kind == "key":
        return f"[{link.via}]"
    if link.via_kind == "attr":
        return f".{link.via}"
    if link.via_kind == "index":
        return f"[{link.via}]"
    if link.via_kind == "item":
        return "(member)"
    return "(refers to)" if link.via_kind == "referent" else ""


def chain_lines(chain: BackrefChain) -> list[str]:
    if not chain.chain:
        return [f"back-references: no live object of type {chain.type!r}"]
    sample = chain.chain[-1]
    if chain.found:
        head = f"back-references: why {sample.type} {sample.id} is alive ({chain.matched} of its type live)"
    elif chain.cut_short:
        head = (f"back-references: search for {sample.type} {sample.id} cut short after "
                f"{chain.searched_seconds:.1f}s; no module or task reached; partial chain:")
    else:
        head = (f"back-references: no module or task within {chain.max_depth} links holds "
                f"{sample.type} {sample.id} (held only by cycles or objects diag cannot see)")
    lines = [head]
    for i, link in enumerate(chain.chain):
        via = via_label(link)
        lines.append(("  " * i) + (f"{via} -> " if i else "") + link_label(link) + (f" {link.id}" if i else ""))
    return lines


def render(latest: HeapSnapshot, types: tuple[TypeCount, ...], growth: tuple[TypeGrowth, ...] | None,
           out: TextIO, *, count: int = 1, interval: float = 0.0) -> None:
    lines = header(latest, count, interval)
    lines.append("")
    names = [fmt.safe_text(t.name) for t in types]  # escaped first, so the columns line up
    width = max([len(n) for n in names] + [4])
    lines.append(f"{'type'.ljust(width)}  {'count':>9}")
    lines += [f"{name.ljust(width)}  {t.count:>9}" for name, t in zip(names, types)]
    if growth is not None:
        lines.append("")
        if not growth:
            lines.append("growing steadily: none (no type grew in every interval)")
        else:
            lines.append("growing steadily (grew in every interval), by total growth:")
            grown = [fmt.safe_text(g.name) for g in growth]
            gw = max([len(n) for n in grown] + [4])
            lines.append(f"{'type'.ljust(gw)}  {'first':>9}  {'last':>9}  {'growth':>9}  per interval")
            lines += [f"{name.ljust(gw)}  {g.first:>9}  {g.last:>9}  {g.growth:>+9}  "
                      + " ".join(f"{d:+d}" for d in g.per_interval) for name, g in zip(grown, growth)]
    if latest.backrefs is not None:
        lines.append("")
        lines += chain_lines(latest.backrefs)
    out.write(fmt.text_lines(lines))

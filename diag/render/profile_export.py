"""Profile files other tools read: pstats, callgrind, speedscope and folded stacks.

``pstat`` and ``callgrind`` need calls and caller -> callee edges (yappi mode);
``speedscope`` and ``collapsed`` need whole stacks (sample mode).  yappi keeps only
edges, so no stack is ever made up from them: asking for a stack format of a yappi
profile is an error.  ``json`` is diag's own snapshot, which ``diag profile FILE``
renders again.

Usage::

    fmt = format_for_path("out.speedscope.json")      # "speedscope"
    write(snap, fmt, open("out.speedscope.json", "wb"))
"""

from __future__ import annotations

import json
import marshal
import os
from typing import Any, BinaryIO

import diag
from diag.errors import UsageError
from diag.model.profile_snapshot import ProfileSnapshot
from diag.render.formatting import short_path

FORMATS = ("json", "pstat", "callgrind", "speedscope", "collapsed")
#: Formats that need each mode's data.
YAPPI_FORMATS = ("pstat", "callgrind")
STACK_FORMATS = ("speedscope", "collapsed")
SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def format_for_path(path: str) -> str:
    """The export format an output file name asks for, by its extension."""
    name = os.path.basename(path).lower()
    if name.endswith(".speedscope.json"):
        return "speedscope"
    if name.endswith(".json"):
        return "json"
    if name.endswith((".pstat", ".pstats", ".prof")):
        return "pstat"
    if name.endswith(".callgrind") or name.startswith("callgrind.out"):
        return "callgrind"
    if name.endswith((".collapsed", ".folded")):
        return "collapsed"
    raise UsageError(f"cannot tell the format of {path!r} from its name: use .json, .pstat, .callgrind, "
                     ".speedscope.json or .collapsed, or --output-format")


def check_format(fmt: str, mode: str) -> None:
    """``UsageError`` when ``fmt`` cannot be made from a ``mode`` profile."""
    if fmt not in FORMATS:
        raise UsageError(f"--output-format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt in STACK_FORMATS and mode != "sample":
        raise UsageError(f"{fmt} needs stacks, and yappi records only caller -> callee edges; use --mode sample")
    if fmt in YAPPI_FORMATS and mode != "yappi":
        raise UsageError(f"{fmt} needs call counts and edges, which sampling does not record; use --mode yappi")


def pstats_dict(snap: ProfileSnapshot) -> dict[tuple[str, int, str], tuple[Any, ...]]:
    """``{(file, line, name): (cc, nc, tt, ct, {caller: (cc, nc, tt, ct)})}``, as ``pstats`` loads it."""
    keys = [(f.file, f.line, f.name) for f in snap.functions]
    callers: list[dict[tuple[str, int, str], tuple[int, int, float, float]]] = [{} for _ in keys]
    for e in snap.edges:
        prev = callers[e.callee].get(keys[e.caller])
        cur = (e.primitive_calls, e.calls, e.own_seconds, e.total_seconds)
        if prev is not None:
            cur = (prev[0] + cur[0], prev[1] + cur[1], prev[2] + cur[2], prev[3] + cur[3])
        callers[e.callee][keys[e.caller]] = cur
    out: dict[tuple[str, int, str], tuple[Any, ...]] = {}
    for key, f, who in zip(keys, snap.functions, callers):
        prev_entry = out.get(key)
        if prev_entry is not None:  # two functions on one line (lambdas): merge, as pstats would
            merged = {**prev_entry[4], **who}
            out[key] = (prev_entry[0] + f.primitive_calls, prev_entry[1] + f.calls,
                        prev_entry[2] + f.own_seconds, prev_entry[3] + f.total_seconds, merged)
        else:
            out[key] = (f.primitive_calls, f.calls, f.own_seconds, f.total_seconds, who)
    return out


def write_pstat(snap: ProfileSnapshot, out: BinaryIO) -> None:
    marshal.dump(pstats_dict(snap), out)


def callgrind_text(snap: ProfileSnapshot) -> str:
    """KCachegrind's format; costs in microseconds, positions are source lines."""
    files: dict[str, int] = {}
    names: dict[str, int] = {}

    def ref(table: dict[str, int], value: str) -> str:
        if value in table:
            return f"({table[value]})"
        table[value] = len(table) + 1
        return f"({table[value]}) {value}"

    def us(seconds: float) -> int:
        return max(0, round(seconds * 1_000_000))

    lines = ["# callgrind format", "version: 1", f"creator: diag {diag.__version__}",
             f"pid: {snap.process.pid}", f"cmd: {' '.join(snap.process.argv)}",
             f"part: 1", f"desc: clock: {snap.clock}, window: {snap.duration:.3f}s, thread: {snap.thread_name}",
             "positions: line", "events: Microseconds",
             f"summary: {us(sum(f.own_seconds for f in snap.functions))}", ""]
    out_edges: list[list[int]] = [[] for _ in snap.functions]
    for i, e in enumerate(snap.edges):
        out_edges[e.caller].append(i)
    for i, f in enumerate(snap.functions):
        lines.append(f"fl={ref(files, f.file)}")
        lines.append(f"fn={ref(names, f.name)}")
        lines.append(f"{f.line} {us(f.own_seconds)}")
        for ei in out_edges[i]:
            e = snap.edges[ei]
            callee = snap.functions[e.callee]
            lines.append(f"cfl={ref(files, callee.file)}")
            lines.append(f"cfn={ref(names, callee.name)}")
            lines.append(f"calls={max(e.calls, 0)} {callee.line}")
            lines.append(f"{f.line} {us(e.total_seconds)}")
        lines.append("")
    return "\n".join(lines) + "\n"


def speedscope_dict(snap: ProfileSnapshot, cwd: str | None = None) -> dict[str, Any]:
    """One sampled profile (outermost frame first, weights in seconds) per the speedscope schema."""
    frames = [{"name": f.name, "file": short_path(f.file, cwd), "line": f.line} for f in snap.frames]
    samples = [list(s.frames) for s in snap.stacks]
    weights = [s.count * snap.interval for s in snap.stacks]
    name = f"{snap.thread_name or 'thread'} of pid {snap.process.pid} ({snap.samples} samples)"
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "name": name,
        "exporter": f"diag {diag.__version__}",
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "name": name, "unit": "seconds", "startValue": 0,
                      "endValue": sum(weights), "samples": samples, "weights": weights}],
    }


def _folded_name(name: str, file: str, line: int, cwd: str | None) -> str:
    return f"{name} ({short_path(file, cwd)}:{line})".replace(";", ":").replace("\n", " ")


def collapsed_lines(snap: ProfileSnapshot, *, by_task: bool = False, cwd: str | None = None) -> list[str]:
    """Folded stacks, ``outer;inner;leaf count``; with ``by_task`` the task's coroutine is the root."""
    names = [_folded_name(f.name, f.file, f.line, cwd) for f in snap.frames]
    counts: dict[str, int] = {}
    for s in snap.stacks:
        parts = [names[i] for i in s.frames]
        if by_task:
            coro = snap.tasks[s.task].coro if s.task >= 0 else "(no task)"
            parts.insert(0, f"task {coro}".replace(";", ":"))
        key = ";".join(parts) or "(empty)"
        counts[key] = counts.get(key, 0) + s.count
    return [f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def write(snap: ProfileSnapshot, fmt: str, out: BinaryIO, *, by_task: bool = False, cwd: str | None = None) -> None:
    """Write ``snap`` as ``fmt`` to a binary file."""
    check_format(fmt, snap.mode)
    if fmt == "pstat":
        write_pstat(snap, out)
    elif fmt == "callgrind":
        out.write(callgrind_text(snap).encode())
    elif fmt == "speedscope":
        out.write(json.dumps(speedscope_dict(snap, cwd)).encode())
    elif fmt == "collapsed":
        out.write(("\n".join(collapsed_lines(snap, by_task=by_task, cwd=cwd)) + "\n").encode())
    else:
        out.write(snap.to_json().encode())


__all__ = ["FORMATS", "YAPPI_FORMATS", "STACK_FORMATS", "format_for_path", "check_format", "pstats_dict",
           "write_pstat", "callgrind_text", "speedscope_dict", "collapsed_lines", "write"]

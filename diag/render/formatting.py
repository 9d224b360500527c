"""Small, shared ways of turning snapshot values into words (used by every renderer).

Every string that comes from the target (task names, primitive labels, type names,
dict keys, source lines) is escaped for its medium here, once: ``text_lines`` for plain
text, ``cell`` for rich tables and lines, ``json_text`` for JSON, ``encodable`` for
Prometheus label values (whose format escapes the rest).  Numbers from the
target may be infinite, NaN or huge: ``duration`` and ``timestamp`` put them in words.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from typing import TYPE_CHECKING, Any, Iterable

from diag.model.task_snapshot import ChildProcess, ConnectionPool, CreatedBy, Frame, Primitive, Wait, WriteBacklog
from diag.wording import also_named, plural

if TYPE_CHECKING:
    from rich.text import Text

_LIB_RX = re.compile(r".*/(?:site-packages|dist-packages)/|.*/lib/python3\.\d+/")


def short_path(path: str, cwd: str | None = None) -> str:
    """``asyncio/locks.py`` for the stdlib, ``aiohttp/web.py`` for packages, else relative to cwd."""
    m = _LIB_RX.match(path)
    if m:
        return path[m.end():]
    cwd = os.getcwd() if cwd is None else cwd
    if cwd and path.startswith(cwd.rstrip(os.sep) + os.sep):
        return path[len(cwd.rstrip(os.sep)) + 1:]
    return path


#: Characters that would act on a terminal or forge a line instead of being read: C0 and C1
#: controls (newline, ESC, BEL, NUL...), line and paragraph separators, bidirectional
#: overrides, and surrogates (which cannot be encoded, so would crash the write).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SURROGATE = re.compile("[\ud800-\udfff]")


def _visible(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """``text`` with every control character shown as an escape (``\\n``, ``\\x1b``,
    ``\\ud800``): one line, printable, encodable as UTF-8."""
    return _UNSAFE.sub(_visible, text)


def text_lines(lines: Iterable[str]) -> str:
    """Lines of a plain-text rendering joined into its output (with the final newline);
    each line is escaped, so a name holding a newline cannot start a line of its own."""
    return "\n".join(safe_text(line) for line in lines) + "\n"


def cell(text: str, style: str = "") -> Text:
    """A table cell or console line: never read as rich markup, controls escaped."""
    from rich.text import Text  # here: the text and JSON renderers do without rich

    return Text(safe_text(text), style=style)


def encodable(text: str) -> str:
    """``text`` with every surrogate replaced by U+FFFD, so it encodes as UTF-8."""
    return _SURROGATE.sub("\ufffd", text)


def json_safe(data: Any) -> Any:
    """``data`` with every surrogate in its strings (keys too) replaced by U+FFFD."""
    if isinstance(data, str):
        return encodable(data)
    if isinstance(data, dict):
        return {json_safe(k): json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


#: In JSON escaped to ASCII, a surrogate (paired or not) is written ``\\udXXX``.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def json_text(data: Any, *, indent: int | None = 2) -> str:
    """``data`` as JSON that encodes as UTF-8: lone surrogates become U+FFFD (the slower
    walk runs only when the fast dump shows one may be there)."""
    text = json.dumps(data, indent=indent)
    if _ESCAPED_SURROGATE.search(text):
        text = json.dumps(json_safe(data), indent=indent)
    return text


#: Beyond this a duration is shown in years (a task sleeping ``1e12`` seconds).
_YEAR = 365.25 * 86400


def duration(seconds: float | None) -> str:
    """Go-like durations: 0.4s, 12s, 5m03s, 2h05m, then years; ``forever`` for an infinite
    one (``asyncio.sleep(math.inf)``), ``unknown`` for NaN."""
    if seconds is None:
        return "?"
    if math.isnan(seconds):
        return "unknown"
    if math.isinf(seconds):
        return "forever" if seconds > 0 else "unknown"
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds >= 100 * _YEAR:
        return "over 100 years"
    if seconds >= _YEAR:
        return f"{seconds / _YEAR:.1f} years"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def timestamp(t: float | None, tz: datetime.tzinfo | None = datetime.timezone.utc,
              pattern: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    """A Unix time as ``pattern`` in ``tz`` (None: local time); ``unknown`` when it is not
    a time a clock can show (infinite, NaN, out of range)."""
    if t is None:
        return "unknown"
    try:
        return datetime.datetime.fromtimestamp(t, tz).strftime(pattern)
    except (OverflowError, ValueError, OSError):
        return "unknown"


def where(frame: Frame, cwd: str | None = None) -> str:
    return f"{short_path(frame.file, cwd)}:{frame.line}"


def primitive_names(prim: Primitive, name: str = "") -> tuple[str, tuple[str, ...]]:
    """The name to show for ``prim`` and its other names (``Primitive.named_by``);
    ``name`` is what the waiting frame calls it."""
    return prim.named_by(name)


def primitive_state(prim: Primitive) -> str:
    """``value=0/16 waiters=3``, ``locked waiters=1``, ``size=0/1 getters=1``."""
    parts = []
    if prim.kind in ("semaphore", "bounded_semaphore"):
        cap = f"/{prim.capacity}" if prim.capacity is not None else ""
        parts.append(f"value={prim.value}{cap}")
    elif prim.kind in ("lock", "condition"):
        parts.append("locked" if prim.locked else "unlocked")
    elif prim.kind == "event":
        parts.append("set" if prim.is_set else "unset")
    elif prim.kind == "queue":
        parts.append(f"size={prim.size}/{prim.maxsize or 'inf'}")
        if prim.getters:
            parts.append(f"getters={prim.getters}")
        if prim.putters:
            parts.append(f"putters={prim.putters}")
        if prim.unfinished is not None and prim.size is not None and prim.unfinished > prim.size:
            parts.append(f"not_done={prim.unfinished - prim.size}")  # taken by get(), no task_done() yet
        return " ".join(parts)
    if prim.waiters is not None:
        parts.append(f"waiters={prim.waiters}")
    return " ".join(parts)


def child_process(child: ChildProcess) -> str:
    """``<child 4242 state=S in pipe_write stdin=open stdout=65536B paused>``"""
    parts = [f"child {child.pid}"]
    if child.state:
        parts.append(f"state={child.state}" + (f" in {child.wchan}" if child.wchan else ""))
    if child.stdin_open:
        parts.append("stdin=open")
    for pipe in child.outputs:
        if pipe.buffered or pipe.paused:
            parts.append(f"{pipe.name}={pipe.buffered}B" + (" paused" if pipe.paused else ""))
    return "<" + " ".join(parts) + ">"


def write_backlog(backlog: WriteBacklog) -> str:
    """``<to 127.0.0.1:5555 buffered=1048576B unacked=2626560B closing>``: what a write wait
    has in front of it."""
    parts = [f"to {backlog.peer}"] if backlog.peer else ["write"]
    parts.append(f"buffered={backlog.buffered}B" + (f"/{backlog.high_water}B" if backlog.high_water else ""))
    if backlog.in_kernel is not None:
        parts.append(f"unacked={backlog.in_kernel}B")
    if backlog.closing:
        parts.append("closing")
    return "<" + " ".join(parts) + ">"


def connection_pool(pool: ConnectionPool) -> str:
    """``<TCPConnector 0x7f3a.. in_use=3/3 waiting=2>`` (``/-`` for no limit)."""
    limit = str(pool.limit) if pool.limit else "-"
    text = f"<{pool.kind} {pool.id} in_use={pool.in_use}/{limit}"
    if pool.limit_per_host:
        text += f" per_host={pool.limit_per_host}"
    return text + f" waiting={pool.waiting}>"


def matching(shown: int, groups: int, grouped: bool) -> str:
    """How many tasks of a dump match: ``12 matching in 3 groups``; ungrouped, every task
    listed is one that matches, so ``12 matching``."""
    return f"{shown} matching in {plural(groups, 'group')}" if grouped else f"{shown} matching"


def primitive_name(prim: Primitive, name: str = "") -> str:
    """``first (also: second)``: the name ``primitive_names`` shows, with the others."""
    shown, aliases = primitive_names(prim, name)
    return f"{shown} {also_named(aliases)}" if aliases else shown


def primitive(prim: Primitive, name: str = "") -> str:
    """``<work_pool 0x7f3a.. value=0/16 waiters=3>``; ``name`` is the waiting frame's name
    for it (``<second (also: first) 0x7f3a.. locked waiters=1>``)."""
    state = primitive_state(prim)
    return f"<{primitive_name(prim, name)} {prim.id}" + (f" {state}>" if state else ">")


def _times(n: int) -> str:
    return "once" if n == 1 else "twice" if n == 2 else f"{n} times"


def wait_reason(wait: Wait, cwd: str | None = None, *, with_primitive: bool = True) -> str:
    """What a task waits on, in one line: ``Semaphore.acquire <pool 0x.. value=0 waiters=3>``
    (without the primitive's part when not ``with_primitive``)."""
    kind = wait.kind
    if kind in ("running", "ready"):
        return kind
    text = wait.detail or kind
    if wait.primitive is not None and with_primitive:
        text += " " + primitive(wait.primitive, wait.frame_label)
    if wait.remote_loop:
        text += (f" (on loop {wait.remote_loop}, " + (f"task {wait.remote_task})" if wait.remote_task is not None
                                                      else "not started)"))
    if kind == "sleep" and wait.time_left is not None:
        text += f" ({duration(wait.time_left)} left)"
    if wait.predicate:
        woken = (f"; woken {_times(wait.woken)}, still false, the last {duration(wait.woken_seconds or 0.0)} ago"
                 if wait.woken else "")
        text += f" (wait_for {wait.predicate}{woken})"
    if kind == "task" and len(wait.tasks) == 1:
        text = f"await task {wait.tasks[0]}"
    elif wait.tasks:
        shown = ", ".join(str(t) for t in wait.tasks[:5]) + (", ..." if len(wait.tasks) > 5 else "")
        ended = "; ".join(f"{f.id} {f.coro} {f.outcome}" for f in wait.finished[:3])
        if len(wait.finished) > 3:
            ended += f"; {len(wait.finished) - 3} more"
        text += f" ({'task' if len(wait.tasks) == 1 else 'tasks'} {shown}" + (f"; ended: {ended})" if ended else ")")
    if wait.created_at is not None:
        text += f" (future created at {where(wait.created_at, cwd)})"
    if wait.child is not None:
        text += " " + child_process(wait.child)
    if wait.pool is not None and with_primitive:
        text += " " + connection_pool(wait.pool)
    if wait.backlog is not None:
        text += " " + write_backlog(wait.backlog)
    if kind == "unknown":
        text = f"unknown wait ({wait.detail})" if wait.detail else "unknown wait"
    return text


def created_by(created: CreatedBy | None, cwd: str | None = None) -> str:
    """``created by handler in task 17 at app.py:88`` (Go's ``created by``)."""
    if created is None:
        return "created by ? (not recorded: made before diag started, or by asyncio.Task() directly)"
    in_task = f" in task {created.task_id}" if created.task_id is not None else " outside any task"
    return f"created by {created.function}{in_task} at {short_path(created.file, cwd)}:{created.line}"

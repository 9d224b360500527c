"""Which ``Condition.wait_for`` calls a ``notify()`` woke, how often, and when.

``Condition.wait_for(predicate)`` re-checks its predicate after every wake-up and goes
back to waiting while it is false, so it cannot miss a notify: a task idle in it waits
for its condition, as a worker on ``Queue.get`` waits for work.  What its state does not
say is whether it has been woken since and found its predicate still false.  One that
was notified and went back to waiting, on a predicate comparing shared state with a
value of its own (``self.seq > failed_on``), waits for a state that the notifies so far
have not brought it: the condition moves on, this waiter does not.

``install`` wraps ``asyncio.Condition.notify`` at class level (``notify_all`` calls it):
once asyncio's own ``notify`` has run, each waiter it woke that is a task suspended in
``Condition.wait_for`` (found before, through the future's wake-up callback) gets a
record on the condition: a weak reference to that
``wait_for`` coroutine, how many times it was woken, and when last.  The record names
the call, not the task, so a later ``wait_for`` of the same task starts afresh.  It
costs nothing until a notify, then a few attribute reads per waiter woken.
``uninstall`` puts asyncio's own method back.

Usage::

    condition_activity.install()
    count, when = condition_activity.woken(condition, wait_for_coroutine) or (0, None)
"""

from __future__ import annotations

import asyncio
import time
import types
import weakref
from typing import Any

from diag.collect.safe_read import plain_attr

#: The condition's attribute holding ``{id(wait_for coroutine): (weak ref, times woken, when last)}``.
_ATTR = "_diag_woken"
#: ``wait_for`` calls recorded per condition (past it, those ended go, then the first recorded).
MAX_RECORDED = 256
#: Waiters looked at per notify: a notify_all of thousands records the first ones only.
MAX_PER_NOTIFY = 64
#: Await-chain links followed from a woken task's coroutine to its ``wait_for``.
MAX_DEPTH = 16

_WAIT_FOR_CODE = asyncio.Condition.wait_for.__code__
_CORO = types.CoroutineType
_monotonic = time.monotonic
_original: Any = None


def _wait_for_of(fut: object) -> Any:
    """The ``Condition.wait_for`` coroutine of the task that ``fut`` would wake, or None."""
    for callback, _context in getattr(fut, "_callbacks", None) or ():
        task = getattr(callback, "__self__", None)
        if not isinstance(task, asyncio.Task):
            continue
        node: Any = task.get_coro()
        for _ in range(MAX_DEPTH):
            if type(node) is not _CORO:
                return None
            if node.cr_code is _WAIT_FOR_CODE:
                return node
            node = node.cr_await
        return None
    return None


def _record(condition: object, calls: list[Any]) -> None:
    attrs = condition.__dict__
    table = attrs.get(_ATTR)
    if type(table) is not dict:
        table = attrs[_ATTR] = {}
    now = _monotonic()
    for coro in calls:
        key = id(coro)
        old = table.get(key)
        if old is not None and old[0]() is coro:
            table[key] = (old[0], old[1] + 1, now)
        else:
            table[key] = (weakref.ref(coro), 1, now)
    if len(table) > MAX_RECORDED:  # (a reader in another thread only ever looks one key up)
        live = [(k, v) for k, v in table.items() if (c := v[0]()) is not None and c.cr_frame is not None]
        attrs[_ATTR] = dict(live[-MAX_RECORDED:])


def _wrap(original: Any) -> Any:
    def notify(self: asyncio.Condition, n: int = 1) -> None:
        # the waiters it will wake, read first: waking a future drops its callbacks, the
        # way back to the task that awaits it
        calls: list[Any] = []
        try:
            picked = 0
            for fut in self.__dict__.get("_waiters") or ():
                if picked >= n or picked >= MAX_PER_NOTIFY:
                    break
                if not fut.done():
                    picked += 1
                    coro = _wait_for_of(fut)
                    if coro is not None:
                        calls.append(coro)
        except Exception:  # an odd subclass: not recorded
            calls = []
        original(self, n)  # raises, with nothing woken, when the lock is not held
        if calls:
            try:
                _record(self, calls)
            except Exception:
                pass

    notify.__wrapped__ = original  # type: ignore[attr-defined]
    notify.__doc__ = original.__doc__
    notify.__qualname__ = original.__qualname__
    return notify


def install() -> None:
    """Record the ``wait_for`` calls each ``Condition.notify`` wakes; idempotent."""
    global _original
    if _original is not None:
        return
    _original = asyncio.Condition.__dict__["notify"]
    asyncio.Condition.notify = _wrap(_original)  # type: ignore[method-assign]


def uninstall() -> None:
    """Put asyncio's own ``Condition.notify`` back (what was recorded stays on the conditions)."""
    global _original
    if _original is not None:
        asyncio.Condition.notify = _original  # type: ignore[method-assign]
        _original = None


def installed() -> bool:
    return _original is not None


def woken(condition: object, wait_for: object) -> tuple[int, float] | None:
    """(times woken, monotonic time of the last) of the ``wait_for`` coroutine ``wait_for``
    by a ``notify()`` of ``condition`` since recording began, or None."""
    table = plain_attr(condition, _ATTR)
    if type(table) is not dict:
        return None
    rec = table.get(id(wait_for))
    if type(rec) is not tuple or len(rec) != 3:
        return None
    ref, count, when = rec
    try:
        if ref() is not wait_for:
            return None
    except Exception:
        return None
    if type(count) is int and type(when) is float:
        return count, when
    return None

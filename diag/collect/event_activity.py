"""When each asyncio Event was last set, and how often.

A lost wake-up on an Event (``set()`` then ``clear()`` before the waiter got there, or
a check-then-wait race) leaves a task waiting for a ``set()`` that already happened.
Nothing in the Event's state says so: it is not set and it has a waiter, as a shutdown
event has.  What tells them apart is history: an event that was set before the wait
began, and never since, is a signal this waiter missed (or that stopped coming); one
never set is a one-shot signal still to come.

``install`` wraps ``asyncio.Event.set`` at class level: the original runs first, then
the count and time are kept on the instance (one tuple in its ``__dict__``).  It costs a
Python call per ``set()``; ``Event.set`` is not on asyncio's hot paths (a Queue sets its
``join`` event only when its last task is done).  ``clear()`` is wrapped the same way and
keeps, for a clear that unsets a set event, when and by which task (a Queue clears its
join event on every ``put``: a clear of an unset one costs a dict read and is not kept): a waiter that clears the event itself (or has it cleared
by the task that made it or waits for it) and then waits is waiting for the next
signal, not one it missed.  ``uninstall`` puts the originals back.

Usage::

    event_activity.install()
    count, when = event_activity.last_set(event) or (0, None)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from diag.collect import task_origins
from diag.collect.safe_read import plain_attr

_ATTR = "_diag_sets"
_CLEARED = "_diag_cleared"
_original: Any = None
_original_clear: Any = None
_monotonic = time.monotonic
_current_task = asyncio.current_task


def _wrap(original: Any) -> Any:
    def set(self: asyncio.Event) -> None:  # noqa: A001 - the method it stands for
        original(self)
        try:
            seen = self.__dict__.get(_ATTR)
            self.__dict__[_ATTR] = ((seen[0] + 1) if seen else 1, _monotonic())
        except Exception:  # an odd subclass (slots, a __dict__ property): not recorded
            pass

    set.__wrapped__ = original  # type: ignore[attr-defined]
    set.__doc__ = original.__doc__
    set.__qualname__ = original.__qualname__
    return set


def _wrap_clear(original: Any) -> Any:
    def clear(self: asyncio.Event) -> None:
        # Queue.put clears its join event on every put: only a clear that unsets a set
        # event is recorded, which leaves that hot path one attribute read dearer.
        was_set = self.__dict__.get("_value") is True
        original(self)
        if not was_set:
            return
        try:
            try:
                task = _current_task()
            except RuntimeError:  # no running loop in this thread
                task = None
            self.__dict__[_CLEARED] = (_monotonic(), task_origins.task_seq(task) if task is not None else None)
        except Exception:
            pass

    clear.__wrapped__ = original  # type: ignore[attr-defined]
    clear.__doc__ = original.__doc__
    clear.__qualname__ = original.__qualname__
    return clear


def install() -> None:
    """Record every ``Event.set`` and ``Event.clear``; idempotent."""
    global _original, _original_clear
    if _original is not None:
        return
    _original = asyncio.Event.__dict__["set"]
    _original_clear = asyncio.Event.__dict__["clear"]
    asyncio.Event.set = _wrap(_original)  # type: ignore[method-assign]
    asyncio.Event.clear = _wrap_clear(_original_clear)  # type: ignore[method-assign]


def uninstall() -> None:
    """Put asyncio's own ``Event.set`` and ``clear`` back (what was recorded stays on the events)."""
    global _original, _original_clear
    if _original is not None:
        asyncio.Event.set = _original  # type: ignore[method-assign]
        asyncio.Event.clear = _original_clear  # type: ignore[method-assign]
        _original = _original_clear = None


def installed() -> bool:
    return _original is not None


def last_clear(event: object) -> tuple[float, int | None] | None:
    """(monotonic time of the last ``clear()``, the id of the task that called it, None
    outside a task) since recording began, or None."""
    seen = plain_attr(event, _CLEARED)
    if type(seen) is tuple and len(seen) == 2 and type(seen[0]) is float and (seen[1] is None or type(seen[1]) is int):
        return seen[0], seen[1]
    return None


def last_set(event: object) -> tuple[int, float] | None:
    """(times set, monotonic time of the last ``set()``) since recording began, or None."""
    seen = plain_attr(event, _ATTR)
    if type(seen) is tuple and len(seen) == 2 and type(seen[0]) is int and type(seen[1]) is float:
        return seen[0], seen[1]
    return None

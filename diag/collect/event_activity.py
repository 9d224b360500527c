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
``join`` event only when its last task is done).  ``uninstall`` puts the original back.

Usage::

    event_activity.install()
    count, when = event_activity.last_set(event) or (0, None)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from diag.collect.safe_read import plain_attr

_ATTR = "_diag_sets"
_original: Any = None
_monotonic = time.monotonic


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


def install() -> None:
    """Record every ``Event.set``; idempotent."""
    global _original
    if _original is not None:
        return
    _original = asyncio.Event.__dict__["set"]
    asyncio.Event.set = _wrap(_original)  # type: ignore[method-assign]


def uninstall() -> None:
    """Put asyncio's own ``Event.set`` back (counts already made stay on their events)."""
    global _original
    if _original is not None:
        asyncio.Event.set = _original  # type: ignore[method-assign]
        _original = None


def installed() -> bool:
    return _original is not None


def last_set(event: object) -> tuple[int, float] | None:
    """(times set, monotonic time of the last ``set()``) since recording began, or None."""
    seen = plain_attr(event, _ATTR)
    if type(seen) is tuple and len(seen) == 2 and type(seen[0]) is int and type(seen[1]) is float:
        return seen[0], seen[1]
    return None

"""Who holds which asyncio Lock or Semaphore permit, and since when.

asyncio's Lock and Semaphore (and so Condition and BoundedSemaphore) record no owner.
``install`` wraps their ``acquire`` and ``release`` at class level: each successful
acquire appends a record to the primitive (the acquiring task's diag id, the call
site and the time), each release removes the releasing task's record (or the oldest,
when a permit is handed to another task to release).  Records hold only ints and
floats, so they keep nothing alive.  ``uninstall`` puts the original methods back.

Usage::

    holders.install()
    ...
    for rec in holders.records(lock):
        print(rec.task_id, rec.since)
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import time
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any, Callable

from diag.collect import task_origins

_ATTR = "_diag_holders"
_ACTIVITY_ATTR = "_diag_activity"
_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
#: How many frames of the acquiring code are kept (innermost first).
SITE_DEPTH = 3
_ASYNC_FLAGS = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE

_originals: dict[tuple[type, str], Any] = {}
_codes: dict[int, CodeType] = {}
_get_running_loop = asyncio.get_running_loop


def _current_task() -> Any:
    try:
        return _current_tasks.get(_get_running_loop())
    except RuntimeError:
        return None


try:  # the C registry of running tasks (3.11); asyncio.current_task() is a Python wrapper over it
    _current_tasks: Any = asyncio.tasks._current_tasks  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover - other layouts
    _current_tasks = None
if not isinstance(_current_tasks, dict):
    _current_task = asyncio.current_task  # type: ignore[assignment]  # noqa: F811
_getframe = sys._getframe
_monotonic = time.monotonic


@dataclass(frozen=True)
class HolderRecord:
    """One held permit: the acquiring task, where it acquired (innermost first), and when."""

    task_id: int | None
    site: tuple[tuple[CodeType, int], ...]  # (code, instruction offset) of the acquiring frames
    since: float  # time.monotonic()


_SKIP, _KEEP, _STOP = 0, 1, 2
#: id(code) -> what the site walk does with a frame of that code; code objects of a
#: running program are few and long-lived, and this spares a string test per frame.
_code_kinds: dict[int, int] = {}


def _code_kind(code: CodeType) -> int:
    if not code.co_flags & _ASYNC_FLAGS:
        kind = _STOP  # past the task's coroutines: the loop's own frames, not worth a walk
    elif code.co_filename.startswith(_ASYNCIO_DIR) or code.co_filename == __file__:
        kind = _SKIP
    else:
        kind = _KEEP
        _codes[id(code)] = code
    _code_kinds[id(code)] = kind
    return kind


def _site(frame: FrameType | None) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    kinds = _code_kinds
    while frame is not None and len(out) < SITE_DEPTH:
        code = frame.f_code
        kind = kinds.get(id(code))
        if kind is None:
            kind = _code_kind(code)
        if kind == _KEEP:
            out.append((id(code), frame.f_lasti))
        elif kind == _STOP:
            break
        frame = frame.f_back
    return tuple(out)


def _note_acquired(primitive: object, frame: FrameType | None) -> None:
    try:
        task = _current_task()
        entry = (None if task is None else task_origins.task_seq(task), _site(frame), _monotonic())
        held = primitive.__dict__.get(_ATTR)
        if held is None:
            held = []
            setattr(primitive, _ATTR, held)
        held.append(entry)
        setattr(primitive, _ACTIVITY_ATTR, entry[2])
    except Exception:  # bookkeeping must never break the program's acquire
        pass


def _note_released(primitive: object) -> None:
    try:
        setattr(primitive, _ACTIVITY_ATTR, _monotonic())
        held = primitive.__dict__.get(_ATTR)
        if not held:
            return
        task = _current_task()
        seq = None if task is None else task_origins.task_seq(task)
        for i, entry in enumerate(held):
            if entry[0] == seq:
                del held[i]
                return
        del held[0]  # released on the holder's behalf: the oldest permit goes
    except Exception:
        pass


def _wrap_acquire(original: Callable[..., Any]) -> Callable[..., Any]:
    async def acquire(self: Any) -> Any:
        result = await original(self)
        _note_acquired(self, _getframe(1))
        return result

    acquire.__wrapped__ = original  # type: ignore[attr-defined]
    acquire.__qualname__ = original.__qualname__
    acquire.__doc__ = original.__doc__
    return acquire


def _wrap_release(original: Callable[..., Any]) -> Callable[..., Any]:
    def release(self: Any) -> None:
        original(self)
        _note_released(self)

    release.__wrapped__ = original  # type: ignore[attr-defined]
    release.__qualname__ = original.__qualname__
    release.__doc__ = original.__doc__
    return release


#: Code objects of the wrappers, which the collector leaves out of await stacks.
WRAPPER_CODES: frozenset[int] = frozenset()


def install() -> None:
    """Start recording holders of every asyncio Lock and Semaphore; idempotent."""
    global WRAPPER_CODES
    if _originals:
        return
    codes = set()
    for cls in (asyncio.Lock, asyncio.Semaphore):
        for name, wrap in (("acquire", _wrap_acquire), ("release", _wrap_release)):
            original = cls.__dict__[name]
            _originals[(cls, name)] = original
            wrapper = wrap(original)
            codes.add(id(wrapper.__code__))
            setattr(cls, name, wrapper)
    WRAPPER_CODES = frozenset(codes)


def uninstall() -> None:
    """Put asyncio's own methods back (records already made stay on their objects)."""
    for (cls, name), original in _originals.items():
        setattr(cls, name, original)
    _originals.clear()


def installed() -> bool:
    return bool(_originals)


def records(primitive: object) -> list[HolderRecord]:
    """The permits of ``primitive`` held now, oldest first (empty when not tracked)."""
    try:
        held = list(primitive.__dict__.get(_ATTR) or ())
    except Exception:
        return []
    out = []
    for seq, site, since in held:
        frames = tuple((_codes[cid], lasti) for cid, lasti in site if cid in _codes)
        out.append(HolderRecord(seq, frames, since))
    return out


def last_activity(primitive: object) -> float | None:
    """Monotonic time of the last acquire or release diag saw, if any."""
    try:
        value = primitive.__dict__.get(_ACTIVITY_ATTR)
    except Exception:
        return None
    return None if value is None else float(value)

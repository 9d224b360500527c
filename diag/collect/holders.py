"""Who holds which asyncio Lock or Semaphore permit, and since when.

asyncio's Lock and Semaphore (and so Condition and BoundedSemaphore) record no owner.
``install`` wraps their ``acquire`` and ``release`` at class level: each successful
acquire appends a record to the primitive (the acquiring task's diag id, the call
site and the time), each release removes the releasing task's record (or the oldest,
when a permit is handed to another task to release).  Records hold ints, floats and
code objects, never tasks or frames, so they keep nothing of the program's alive.
``uninstall`` puts the original methods back.

The recording runs in C (``diag._origins``, the accelerator that keeps task ids) when
that is built: it reads the acquire site from the interpreter's frames without making
frame objects, which is most of the cost otherwise (bench/holders_instructions.py).  The
Python path here does the same work, and is used with ``DIAG_ORIGINS=python``.

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
from types import CodeType, FrameType, FunctionType
from typing import Any, Callable

from diag.collect import condition_activity, event_activity, task_origins

#: The primitive's attribute holding a list: [time of the last acquire or release,
#: record, record, ...], records oldest first.
_ATTR = "_diag_holders"
#: The primitive's attribute holding the time of the last release made by other code than
#: the acquirer's (a permit handed on by design: acquired by one task, released by another
#: or by a callback).  The C recorder derives the same name.
_HANDOFF_ATTR = _ATTR + "_handoff"
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
    if code.co_filename.startswith(_ASYNCIO_DIR) or code.co_filename == __file__:
        kind = _SKIP  # asyncio's acquire and __aenter__, and the wrappers here
    elif not code.co_flags & _ASYNC_FLAGS:
        kind = _STOP  # past the task's coroutines: the loop's own frames, not worth a walk
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


_getattribute = object.__getattribute__
_setattr = object.__setattr__


def _held(primitive: object) -> Any:
    """The primitive's list of records, if any.  A plain attribute, read and set by the
    generic machinery: asking for ``__dict__`` would make an object with inline attribute
    values (3.11+) build a real dict, slowing every attribute access asyncio makes on it."""
    try:
        return _getattribute(primitive, _ATTR)
    except AttributeError:
        return None


def _note_acquired(primitive: object) -> None:
    try:
        now = _monotonic()
        task = _current_task()
        entry = (None if task is None else task_origins.task_seq(task), _site(_getframe(1)), now)
        held = _held(primitive)
        if held is None:
            _setattr(primitive, _ATTR, [now, entry])
        else:
            held[0] = now
            held.append(entry)
    except Exception:  # bookkeeping must never break the program's acquire
        pass
    if _logs:
        try:
            _log_acquired(primitive)
        except Exception:
            pass


def _note_released(primitive: object) -> None:
    try:
        now = _monotonic()
        held = _held(primitive)
        if held:
            held[0] = now
        if not held or len(held) < 2:
            # a release with no permit recorded as held: handed on, or taken before diag came
            _setattr(primitive, _HANDOFF_ATTR, now)
            return
        task = _current_task()
        seq = None if task is None else task_origins.task_seq(task)
        for i in range(1, len(held)):
            if held[i][0] == seq:
                del held[i]
                return
        # released on the holder's behalf: the oldest permit goes, and the primitive is one
        # whose permits are handed on, unless that permit's task ran the acquire itself
        # (wait_for's inner task on 3.11: no site of the program's)
        oldest = held.pop(1)
        if oldest[1]:
            _setattr(primitive, _HANDOFF_ATTR, now)
    except Exception:
        pass


def _load_accelerator() -> Any:
    """The C wrappers of diag._origins, when task ids are kept there too (they must agree)."""
    fast = task_origins._fast
    if fast is None or not hasattr(fast, "HeldMethod") or not isinstance(_current_tasks, dict):
        return None
    try:
        fast.configure_holders(asyncio.events._get_running_loop, _current_tasks, _ATTR, __file__)
    except Exception:
        return None
    return fast


_fast = _load_accelerator()

#: Sets that collect every primitive acquired while they are registered (see add_acquire_log).
_logs: list[Any] = []


def _log_acquired(primitive: object) -> None:
    for log in _logs:
        try:
            log.add(primitive)
        except TypeError:  # not weak-referenceable
            pass


def add_acquire_log(log: Any) -> None:
    """From now on add every acquired Lock or Semaphore to ``log`` (a WeakSet)."""
    _logs.append(log)
    if _fast is not None:
        _fast.set_acquire_observer(_log_acquired)


def remove_acquire_log(log: Any) -> None:
    if log in _logs:
        _logs.remove(log)
    if not _logs and _fast is not None:
        _fast.set_acquire_observer(None)


def accelerated() -> bool:
    """True when the wrappers and records are the C accelerator's."""
    return _fast is not None


def _wrap_acquire(original: Callable[..., Any]) -> Callable[..., Any]:
    async def acquire(self: Any) -> Any:
        result = await original(self)
        _note_acquired(self)
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


def _wrap(original: Callable[..., Any], releases: bool) -> Callable[..., Any]:
    if _fast is None:
        return (_wrap_release if releases else _wrap_acquire)(original)
    wrapper: Callable[..., Any] = _fast.HeldMethod(original, releases)
    if not releases:  # still a coroutine function to asyncio.iscoroutinefunction (and inspect's, 3.12+)
        wrapper._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)  # type: ignore[attr-defined]
        if hasattr(inspect, "markcoroutinefunction"):
            inspect.markcoroutinefunction(wrapper)
    return wrapper


#: Code objects of the Python wrappers, which the collector leaves out of await stacks.
WRAPPER_CODES: frozenset[int] = frozenset()
WRAPPER_CODE_OBJECTS: tuple[CodeType, ...] = ()


def install() -> None:
    """Start recording holders of every asyncio Lock and Semaphore, and when each Event
    is set (``event_activity``) and which ``Condition.wait_for`` calls a notify woke
    (``condition_activity``); idempotent."""
    global WRAPPER_CODES, WRAPPER_CODE_OBJECTS
    if _originals:
        return
    event_activity.install()
    condition_activity.install()
    codes: dict[int, CodeType] = {}
    for cls in (asyncio.Lock, asyncio.Semaphore):
        for name, releases in (("acquire", False), ("release", True)):
            original = cls.__dict__[name]
            _originals[(cls, name)] = original
            wrapper = _wrap(original, releases)
            if isinstance(wrapper, FunctionType):  # the C wrappers have no frames to hide
                codes[id(wrapper.__code__)] = wrapper.__code__
            setattr(cls, name, wrapper)
    WRAPPER_CODES = frozenset(codes)
    WRAPPER_CODE_OBJECTS = tuple(codes.values())


def uninstall() -> None:
    """Put asyncio's own methods back (records already made stay on their objects)."""
    for (cls, name), original in _originals.items():
        setattr(cls, name, original)
    _originals.clear()
    event_activity.uninstall()
    condition_activity.uninstall()


def installed() -> bool:
    return bool(_originals)


def records(primitive: object) -> list[HolderRecord]:
    """The permits of ``primitive`` held now, oldest first (empty when not tracked)."""
    try:
        held = list(_held(primitive) or ())[1:]
    except Exception:
        return []
    out = []
    for seq, site, since in held:
        # the C recorder keeps the code objects themselves, the Python one their ids
        frames = tuple((code, lasti) if isinstance(code, CodeType) else (_codes[code], lasti)
                       for code, lasti in site if isinstance(code, CodeType) or code in _codes)
        out.append(HolderRecord(seq, frames, since))
    return out


def last_handoff(primitive: object) -> float | None:
    """Monotonic time of the last release diag saw made by other code than the
    acquirer's (see ``_HANDOFF_ATTR``), if any."""
    try:
        value = _getattribute(primitive, _HANDOFF_ATTR)
        return float(value) if type(value) is float else None
    except Exception:
        return None


def last_activity(primitive: object) -> float | None:
    """Monotonic time of the last acquire or release diag saw, if any."""
    try:
        held = _held(primitive)
        return float(held[0]) if held else None
    except Exception:
        return None

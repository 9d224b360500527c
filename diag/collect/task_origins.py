"""Task ids and "created by" records, kept on the tasks themselves.

A task gets a small sequential id (like a goroutine number) the first time diag needs
one.  The task factory that the agent installs on each loop records, for every new
task, the call site that created it and the id of the task that was running then.  The
record is a tuple stored as an attribute on the task, so it dies with the task and
costs no lookup table; the factory chains to whatever factory the program had set.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from types import CodeType, FrameType
from typing import Any, Callable, Coroutine

_SEQ_ATTR = "_diag_seq"
_ORIGIN_ATTR = "_diag_origin"
_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep

_counter = itertools.count(1)
#: Creating code objects by id, so task records hold ints only.  Kept alive here, so an
#: id is never reused for another code object; bounded by the program's create sites.
_codes: dict[int, CodeType] = {}
_Task = asyncio.Task
_CREATE_TASK_CODE = asyncio.tasks.create_task.__code__
_getframe = sys._getframe
_current_task = asyncio.current_task

#: (id of the creating code (see ``creating_code``), its instruction offset, the creating
#: task's id or None, the task's own id)
Origin = tuple[int, int, "int | None", int]
TaskFactory = Callable[..., "asyncio.Future[Any]"]


def task_seq(task: asyncio.Future[Any]) -> int:
    """The task's diag id, stable for the task's life: given at creation by the factory,
    or on first use for tasks created before the agent started."""
    origin = getattr(task, _ORIGIN_ATTR, None)
    if origin is not None:
        return int(origin[3])
    seq = getattr(task, _SEQ_ATTR, None)
    if seq is None:
        seq = next(_counter)
        try:
            setattr(task, _SEQ_ATTR, seq)
        except AttributeError:  # a Task subclass with __slots__: fall back to its address
            return id(task)
    return int(seq)


def task_origin(task: asyncio.Future[Any]) -> Origin | None:
    origin: Origin | None = getattr(task, _ORIGIN_ATTR, None)
    return origin


class OriginFactory:
    """A task factory that records who created each task, then defers to ``inner``.

    ``inner`` is the factory the loop had before (or None for plain ``asyncio.Task``).
    """

    __slots__ = ("inner",)

    def __init__(self, inner: TaskFactory | None) -> None:
        self.inner = inner

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                 **kwargs: Any) -> asyncio.Future[Any]:
        inner = self.inner
        task = inner(loop, coro, **kwargs) if inner is not None else _Task(coro, loop=loop, **kwargs)
        try:
            # Usually: factory <- loop.create_task <- asyncio.create_task <- the creating code.
            frame: FrameType | None = _getframe(2)
            if frame is not None and frame.f_code is _CREATE_TASK_CODE:
                frame = frame.f_back
            while frame is not None and frame.f_code.co_filename.startswith(_ASYNCIO_DIR):
                frame = frame.f_back
            parent = _current_task(loop)
            code_id = 0
            if frame is not None:
                code = frame.f_code
                code_id = id(code)
                if code_id not in _codes:
                    _codes[code_id] = code
            # Only ints: the tuple is then untracked by the cyclic GC, and the instruction
            # offset (not the line, which needs a walk of the line table) is free to read.
            setattr(task, _ORIGIN_ATTR, (
                code_id,
                0 if frame is None else frame.f_lasti,
                None if parent is None else task_seq(parent),
                next(_counter),
            ))
        except Exception:  # never let bookkeeping break the program's create_task
            pass
        return task


def creating_code(origin: Origin) -> CodeType | None:
    return _codes.get(origin[0])


def origin_line(code: CodeType, offset: int) -> int:
    """The source line of instruction ``offset`` (bytes) in ``code``."""
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line or code.co_firstlineno
    return code.co_firstlineno


def install_factory(loop: asyncio.AbstractEventLoop) -> bool:
    """Put an ``OriginFactory`` in front of the loop's current factory; idempotent.

    Returns False when the loop refuses (closed loop, foreign loop implementation).
    """
    try:
        current = loop.get_task_factory()
        if isinstance(current, OriginFactory):
            return True
        loop.set_task_factory(OriginFactory(current))  # type: ignore[arg-type]
        return True
    except Exception:
        return False


def uninstall_factory(loop: asyncio.AbstractEventLoop) -> None:
    try:
        current = loop.get_task_factory()
        if isinstance(current, OriginFactory):
            loop.set_task_factory(current.inner)
    except Exception:
        pass

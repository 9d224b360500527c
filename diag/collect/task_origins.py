"""Task ids and "created by" records.

A task gets a small sequential id (like a goroutine number) the first time diag needs
one.  The task factory that the agent installs on each loop records, for every new
task, the call site that created it and the id of the task that was running then; the
factory chains to whatever factory the program had set.

Two implementations keep the same records.  The C accelerator ``diag._origins``
(built at install time when a compiler is present, for the interpreters whose frame
layout it knows) reads the creating frame without making frame objects and keeps
records in a table keyed by task, pruned of dead tasks as it grows: about 2 % on a
``create_task`` of a do-nothing coroutine (bench/tasks_bench.py).  Without it, this
module's Python factory stores a tuple of ints as an attribute on each task (it dies
with the task), at roughly a third more per ``create_task``.  ``DIAG_ORIGINS=python``
forces the Python path.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from types import CodeType, FrameType
from typing import Any, Callable, Coroutine, Sequence

from diag.collect.safe_read import read_attr

_SEQ_ATTR = "_diag_seq"
_ORIGIN_ATTR = "_diag_origin"
_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
#: Frames of this file are passed over like asyncio's when the creating code is looked for:
#: ``_NamedCreateTask`` calls the factory from here.
_THIS_FILE = __file__

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


#: The interpreters the C accelerator was built and tested for.  On any other (a newer
#: CPython whose frames or tasks it has never seen) it is not even imported: the Python
#: path runs and dumps say so once (``accelerator_note``).
ACCELERATOR_VERSIONS = ((3, 11), (3, 12), (3, 13))


def accelerator_note() -> str | None:
    """The dump's note when this interpreter is one the accelerator was not built for."""
    version = tuple(sys.version_info[:2])
    if version in ACCELERATOR_VERSIONS:
        return None
    return (f"Python {version[0]}.{version[1]} is not one diag's C accelerator was built and tested for (3.11 to 3.13): "
            f"task ids, creators and holders are kept by the pure-Python path")


def _load_accelerator() -> Any:
    if os.environ.get("DIAG_ORIGINS", "").strip().lower() == "python":
        return None
    if accelerator_note() is not None:
        return None
    try:
        from diag import _origins  # type: ignore[attr-defined]
    except ImportError:
        return None
    if not hasattr(_origins, "OriginFactory"):  # built for a frame layout it does not know
        return None
    _origins.configure(_codes, _ASYNCIO_DIR, _THIS_FILE)
    return _origins


_fast: Any = _load_accelerator()
_current_tasks: "dict[Any, Any] | None" = getattr(asyncio.tasks, "_current_tasks", None)
if not isinstance(_current_tasks, dict):  # the C factory needs asyncio's loop -> task map
    _fast = None


def accelerated() -> bool:
    """True when records are kept by the C accelerator."""
    return _fast is not None


def task_seq(task: asyncio.Future[Any]) -> int:
    """The task's diag id, stable for the task's life: given at creation by the factory,
    or on first use for tasks created before the agent started."""
    if _fast is not None:
        try:
            return int(_fast.task_seq(task))
        except Exception:  # not weak-referenceable: an odd Task subclass
            pass
    origin = read_attr(task, _ORIGIN_ATTR)  # read, not asked: a Task subclass may trap attributes
    if type(origin) is tuple:
        return int(origin[3])
    seq = read_attr(task, _SEQ_ATTR)
    if type(seq) is not int:
        seq = next(_counter)
        try:
            object.__setattr__(task, _SEQ_ATTR, seq)
        except AttributeError:  # a Task subclass with __slots__: fall back to its address
            return id(task)
    return int(seq)


def task_seqs(tasks: Sequence[asyncio.Future[Any]]) -> list[int]:
    """``task_seq`` of each of ``tasks``, in one C pass when the accelerator is loaded."""
    if _fast is not None:
        try:
            return list(map(_fast.task_seq, tasks))
        except Exception:  # an odd Task subclass among them: one at a time
            pass
    return [task_seq(t) for t in tasks]


def dying_task_ids(task: asyncio.Future[Any]) -> tuple[int | None, Origin | None]:
    """``task_seq`` and ``task_origin`` of a task the GC is finalizing (its weak references
    are cleared by then, so the usual lookup would take it for a new task); ``(None,
    None)`` for a task diag never numbered, which is not given a number now."""
    if _fast is not None:
        try:
            found = _fast.dying_task_origin(task)
        except Exception:
            return None, None
        if found is None:
            return None, None
        return int(found[0]), found[1]
    origin = read_attr(task, _ORIGIN_ATTR)
    if type(origin) is tuple:
        return int(origin[3]), origin
    seq = read_attr(task, _SEQ_ATTR)
    return (int(seq) if type(seq) is int else None), None


def task_origin(task: asyncio.Future[Any]) -> Origin | None:
    if _fast is not None:
        try:
            fast: Origin | None = _fast.task_origin(task)
            return fast
        except Exception:
            return None
    origin = read_attr(task, _ORIGIN_ATTR)
    return origin if type(origin) is tuple else None


def new_factory(inner: TaskFactory | None) -> TaskFactory:
    """A recording factory in front of ``inner`` (the C one when available)."""
    if _fast is not None:
        factory: TaskFactory = _fast.OriginFactory(inner, _Task, _current_tasks)
        return factory
    return OriginFactory(inner)


def is_origin_factory(factory: object) -> bool:
    return isinstance(factory, OriginFactory) or (
        _fast is not None and isinstance(factory, _fast.OriginFactory))


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
                # an eager task may have got its id already, when its first step (run
                # inside the inner factory) created children
                getattr(task, _SEQ_ATTR, None) or next(_counter),
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


#: The code of asyncio's eager task factories (3.12+): ``asyncio.eager_task_factory`` and
#: every factory ``asyncio.create_eager_task_factory`` makes share it.
_EAGER_FACTORY_CODE = getattr(getattr(asyncio, "eager_task_factory", None), "__code__", None)


def is_eager_factory(factory: object) -> bool:
    """Whether ``factory`` is one of asyncio's eager task factories, known by its code, as
    libraries know it: anyio, finding one on the loop, starts its own tasks lazily through
    the factory's task constructor (its cancel scopes must be set before a task's first step)."""
    return _EAGER_FACTORY_CODE is not None and getattr(factory, "__code__", None) is _EAGER_FACTORY_CODE


#: CPython 3.13.0 to 3.13.2 rename every task a factory made without a name "None": their
#: ``BaseEventLoop.create_task`` calls ``task.set_name(name)`` after the factory, name or not
#: (python/cpython gh-130033; 3.13.3 passes the name to the factory instead).  On those,
#: a loop that had no factory of its own gets ``_NamedCreateTask`` as its ``create_task``.
_SETS_NAME_NONE = sys.version_info[:2] == (3, 13) and sys.version_info[2] < 3
_BASE_CREATE_TASK = asyncio.BaseEventLoop.create_task


class _NamedCreateTask:
    """``loop.create_task`` as 3.13.3 has it for a loop whose factory is diag's own: the name
    goes to the factory (and so to ``Task()``), and an unnamed task keeps its ``Task-N``.
    Any other factory (the program set one after diag's) gets asyncio's own method."""

    __slots__ = ("loop", "factory")

    def __init__(self, loop: asyncio.AbstractEventLoop, factory: TaskFactory) -> None:
        self.loop = loop
        self.factory = factory

    def __call__(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None,
                 context: Any = None) -> asyncio.Task[Any]:
        loop = self.loop
        factory = self.factory
        if loop.get_task_factory() is not factory:
            return _BASE_CREATE_TASK(loop, coro, name=name, context=context)  # type: ignore[arg-type]
        loop._check_closed()  # type: ignore[attr-defined]
        if context is None:
            return factory(loop, coro, name=name)  # type: ignore[call-arg,return-value,unused-ignore]
        return factory(loop, coro, name=name, context=context)  # type: ignore[call-arg,return-value,unused-ignore]


def _keep_names(loop: asyncio.AbstractEventLoop, factory: TaskFactory) -> None:
    own = getattr(loop, "__dict__", None)
    if _SETS_NAME_NONE and type(loop).create_task is _BASE_CREATE_TASK and own is not None and "create_task" not in own:
        own["create_task"] = _NamedCreateTask(loop, factory)


def install_factory(loop: asyncio.AbstractEventLoop, *, over_eager: bool = False) -> bool:
    """Put an ``OriginFactory`` in front of the loop's current factory; idempotent.

    A loop whose factory is asyncio's eager one is left alone (and False returned): behind
    another factory, libraries that look for it no longer see it.  ``over_eager=True``
    wraps it all the same.
    Returns False when the loop refuses (closed loop, foreign loop implementation).
    """
    try:
        current = loop.get_task_factory()
        if is_origin_factory(current):
            return True
        if not over_eager and is_eager_factory(current):
            return False
        factory = new_factory(current)
        loop.set_task_factory(factory)  # type: ignore[arg-type]
        if current is None:
            _keep_names(loop, factory)
        return True
    except Exception:
        return False


def uninstall_factory(loop: asyncio.AbstractEventLoop) -> None:
    try:
        current = loop.get_task_factory()
        if is_origin_factory(current):
            loop.set_task_factory(current.inner)  # type: ignore[union-attr]
        if isinstance(getattr(loop, "__dict__", {}).get("create_task"), _NamedCreateTask):
            del loop.create_task  # type: ignore[method-assign]
    except Exception:
        pass

"""What a test (or a block of code) left behind, and which of it is excused.  Pure.

Leak-check options are composable values, as in goleak: each ``ignore_*`` builder
returns one ``Ignore``; ``build_options`` adds the defaults and validates the lot.
A report (``LeftoverReport``) is plain data made by the collector
(``diag.collect.leftovers``); ``excused`` and ``verdict`` decide on it.

Usage::

    options = build_options(ignore_top_function("worker"), ignore_name(r"^bg-"), timeout=2.0)
    kept = [t for t in report.tasks.tasks if not excused(t, options)]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from diag.errors import UsageError
from diag.model.sync_snapshot import Reachability
from diag.model.task_snapshot import Frame, Primitive, TaskInfo, TaskSnapshot

#: What an ``Ignore`` matches: the innermost stack function, any stack function, the
#: creating function, the task name (a regex), a thread name (a regex), or the coroutine
#: function the task runs (``module:qualname``, matched by its code object).
IGNORE_KINDS = ("top_function", "function", "creator", "name", "thread", "coroutine")
DEFAULT_TIMEOUT = 1.0
#: Object types whose count may grow by this much during a test before it is reported.
DEFAULT_OBJECT_GROWTH = 100
#: Threads that are never blamed: diag's own.
DEFAULT_THREAD_IGNORES = (r"^diag-",)
#: Tasks that test frameworks and libraries run for themselves, never blamed on a test:
#: ``module:qualname`` of the coroutine function each runs, and why it outlives a test.
#: They are recognised by the code object of the task's coroutine, looked up in the
#: module once it is imported (diag never imports it).
FRAMEWORK_COROUTINES = (
    ("anyio._backends._asyncio:TestRunner._run_tests_and_fixtures",
     "anyio's pytest plugin runs every test and async fixture inside this task; it lives as long as the "
     "runner, and the runner cancels it when it closes"),
    ("anyio._backends._asyncio:_shutdown_process_pool_on_exit",
     "anyio's per-loop \"AnyIO process pool shutdown task\" sleeps until its loop closes, then stops the "
     "worker processes"),
)

PROVEN = "proven leak: nothing can ever wake it"
SUSPECT = "suspect: still reachable"
NOT_BLOCKED = "suspect: not blocked (running or ready to run)"


@dataclass(frozen=True)
class Ignore:
    """One thing never to blame; build it with the ``ignore_*`` functions."""

    kind: str
    value: str

    def validate(self) -> None:
        if self.kind not in IGNORE_KINDS:
            raise UsageError(f"unknown ignore kind {self.kind!r}; choose from {', '.join(IGNORE_KINDS)}")
        if not self.value:
            raise UsageError(f"empty value for ignore {self.kind}")
        if self.kind in ("name", "thread"):
            try:
                re.compile(self.value)
            except re.error as err:
                raise UsageError(f"bad {self.kind} regex {self.value!r}: {err}") from None
        if self.kind == "coroutine":
            module, sep, qualname = self.value.partition(":")
            if not (module and sep and qualname):
                raise UsageError(f"bad coroutine {self.value!r}: expected module:qualname, as "
                                 "anyio._backends._asyncio:TestRunner._run_tests_and_fixtures")


def ignore_top_function(name: str) -> Ignore:
    """Excuse tasks whose innermost frame is in function ``name`` (``worker`` or ``Pool.worker``)."""
    return Ignore("top_function", name)


def ignore_function(name: str) -> Ignore:
    """Excuse tasks with function ``name`` anywhere in their await stack."""
    return Ignore("function", name)


def ignore_creator(name: str) -> Ignore:
    """Excuse tasks created by code in function ``name``."""
    return Ignore("creator", name)


def ignore_name(regex: str) -> Ignore:
    """Excuse tasks whose name matches ``regex`` (``re.search``)."""
    return Ignore("name", regex)


def ignore_thread(regex: str) -> Ignore:
    """Excuse threads whose name matches ``regex`` (with ``threads=True``)."""
    return Ignore("thread", regex)


def ignore_coroutine(spec: str) -> Ignore:
    """Excuse tasks running the coroutine function ``spec`` (``module:qualname``), known by
    its code object, so a function of the same name elsewhere is not excused."""
    return Ignore("coroutine", spec)


def parse_ignore(text: str) -> Ignore:
    """``KIND=VALUE``, as given on a command line or in an ini file."""
    kind, sep, value = text.partition("=")
    kind = kind.strip().replace("-", "_")
    if not sep:
        raise UsageError(f"bad ignore {text!r}: expected KIND=VALUE with KIND one of {', '.join(IGNORE_KINDS)}")
    ignore = Ignore(kind, value.strip())
    ignore.validate()
    return ignore


def ignores_from_kwargs(kwargs: Mapping[str, Any]) -> tuple[Ignore, ...]:
    """``top_function="worker", name=[r"^bg-", r"^x"]`` -> Ignores (a marker's keywords)."""
    out = []
    for kind, values in kwargs.items():
        for value in ([values] if isinstance(values, str) else list(values)):
            ignore = Ignore(kind, str(value))
            ignore.validate()
            out.append(ignore)
    return tuple(out)


@dataclass(frozen=True)
class LeakCheckOptions:
    """How a check looks: ``timeout`` is the total budget of the retries before leftovers
    count; ``threads`` also checks threads; ``object_growth`` (0: off) reports object types
    whose count grew by more than that; ``permits`` checks Lock/Semaphore permits."""

    timeout: float = DEFAULT_TIMEOUT
    ignores: tuple[Ignore, ...] = ()
    threads: bool = False
    object_growth: int = 0
    permits: bool = True

    def validate(self) -> None:
        if not self.timeout >= 0:
            raise UsageError("the leak-check timeout must be a number of seconds >= 0")
        if self.object_growth < 0:
            raise UsageError("the object growth threshold must be >= 0")
        for ignore in self.ignores:
            ignore.validate()

    def with_ignores(self, ignores: Iterable[Ignore]) -> LeakCheckOptions:
        return replace(self, ignores=self.ignores + tuple(i for i in ignores if i not in self.ignores))


def build_options(*ignores: Ignore, timeout: float = DEFAULT_TIMEOUT, threads: bool = False,
                  object_growth: int = 0, permits: bool = True) -> LeakCheckOptions:
    """The one place defaults are added: diag's own threads and the frameworks' own tasks
    (``FRAMEWORK_COROUTINES``) are never blamed."""
    defaults = (tuple(ignore_thread(rx) for rx in DEFAULT_THREAD_IGNORES)
                + tuple(ignore_coroutine(spec) for spec, _why in FRAMEWORK_COROUTINES))
    options = LeakCheckOptions(timeout=timeout, threads=threads, object_growth=object_growth,
                               permits=permits).with_ignores(defaults + ignores)
    options.validate()
    return options


def _same_function(frame_function: str, wanted: str) -> bool:
    return frame_function == wanted or frame_function.rsplit(".", 1)[-1] == wanted


def excused(task: TaskInfo, options: LeakCheckOptions) -> bool:
    """Whether an ignore option matches this task (``coroutine`` ignores are matched by the
    collector, on the task's code object, before a task is described)."""
    for ignore in options.ignores:
        kind, value = ignore.kind, ignore.value
        if kind == "top_function" and task.stack and _same_function(task.stack[0].function, value):
            return True
        if kind == "function" and any(_same_function(f.function, value) for f in task.stack):
            return True
        if kind == "creator" and task.created_by is not None and _same_function(task.created_by.function, value):
            return True
        if kind == "name" and re.search(value, task.name):
            return True
    return False


def thread_excused(name: str, options: LeakCheckOptions) -> bool:
    return any(i.kind == "thread" and re.search(i.value, name) for i in options.ignores)


@dataclass(frozen=True)
class PermitLeak:
    """A Lock/Semaphore permit acquired during the check by a task that has finished."""

    primitive: Primitive
    task_id: int | None
    site: tuple[Frame, ...]
    held_seconds: float


@dataclass(frozen=True)
class ThreadLeak:
    """A thread started during the check and still alive; ``stack`` innermost first."""

    name: str
    ident: int | None
    target: str
    daemon: bool
    stack: tuple[Frame, ...] = ()


@dataclass(frozen=True)
class TypeGrowth:
    type_name: str
    before: int
    after: int


@dataclass(frozen=True)
class LeftoverReport:
    """Everything a check found left over; ``tasks`` are single tasks (debug 2)."""

    tasks: TaskSnapshot
    reachability: Reachability = Reachability(False)
    permits: tuple[PermitLeak, ...] = ()
    threads: tuple[ThreadLeak, ...] = ()
    objects: tuple[TypeGrowth, ...] = ()
    waited: float = 0.0
    notes: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.tasks.tasks or self.permits or self.threads or self.objects)

    def excuse(self, options: LeakCheckOptions) -> LeftoverReport:
        """The report without what ``options`` excuses."""
        tasks = tuple(t for t in self.tasks.tasks if not excused(t, options))
        threads = tuple(t for t in self.threads if not thread_excused(t.name, options))
        return replace(self, tasks=self.tasks.with_tasks(tasks), threads=threads)


def verdict(task: TaskInfo, proof: Reachability) -> str:
    """Proven or suspect, from the reachability proof run on the leftovers."""
    if task.state != "waiting":
        return NOT_BLOCKED
    if proof.ran and proof.complete and task.id in proof.unreachable:
        return PROVEN
    if proof.ran and not proof.complete:
        return f"{SUSPECT} (the proof was cut short)"
    return SUSPECT


def grown_types(before: Mapping[str, int], after: Mapping[str, int], threshold: int) -> tuple[TypeGrowth, ...]:
    """Types whose count grew by more than ``threshold``, biggest growth first."""
    out = [TypeGrowth(name, before.get(name, 0), n) for name, n in after.items()
           if n - before.get(name, 0) > threshold]
    out.sort(key=lambda g: (-(g.after - g.before), g.type_name))
    return tuple(out)

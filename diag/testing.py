"""Leak checks for tests, with or without pytest: goleak for asyncio.

``no_leaks()`` takes a baseline when its block starts and, when the block ends, fails
with ``LeakError`` if asyncio tasks it started are still pending, Lock/Semaphore
permits it took are held by tasks that have finished, or (``threads=True``) threads
it started still run.  Async work may simply be finishing: the check retries with
backoff for up to ``timeout`` seconds, giving idle loops turns meanwhile (``async
with`` awaits instead).  ``assert_no_leaks()`` checks against the tasks that were
pending when this module was imported (or at the last ``set_baseline()``).

Usage::

    from diag.testing import ignore_name, no_leaks

    async def test_fetch():
        async with no_leaks(ignore_name(r"^pool-")):
            await client.fetch()

    @no_leaks(timeout=2.0)
    def test_run():
        asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
import weakref
from types import TracebackType
from typing import Any, Callable, Iterable, TypeVar

from diag.analysis.leftovers import (
    DEFAULT_TIMEOUT, Ignore, LeakCheckOptions, LeftoverReport, TypeGrowth, build_options, excused, grown_types,
    ignore_coroutine, ignore_creator, ignore_function, ignore_name, ignore_thread, ignore_top_function,
    thread_excused,
)
from diag.collect import leftovers
from diag.render import leftovers_text

F = TypeVar("F", bound=Callable[..., Any])
Task = asyncio.Task[Any]
#: The first retry waits this long; each next one twice as long, within the timeout.
FIRST_DELAY = 0.002
_TASK_IGNORES = ("top_function", "function", "creator", "name")


class LeakError(AssertionError):
    """Something was left behind; ``report`` says what, ``str(err)`` shows it in full."""

    def __init__(self, report: LeftoverReport, where: str) -> None:
        super().__init__(leftovers_text.render(report, where))
        self.report = report
        self.where = where


class LeakCheck:
    """One check: a baseline when made, then ``check()`` (or ``await check_async()``).

    ``excused`` is a weak set of tasks never blamed (a session's baseline); ``start`` and
    ``stop`` open and close the permit log and the task pins.
    """

    def __init__(self, options: LeakCheckOptions, *, excused: "weakref.WeakSet[Task] | None" = None,
                 baseline: "weakref.WeakSet[Task] | None" = None) -> None:
        self.options = options
        self.baseline = leftovers.task_set() if baseline is None else baseline
        self.excused = excused
        self._ignored: "weakref.WeakSet[Task]" = weakref.WeakSet()
        self._sifted: "weakref.WeakSet[Task]" = weakref.WeakSet()
        self._codes = leftovers.CoroutineCodes(i.value for i in options.ignores if i.kind == "coroutine")
        self._described = any(i.kind in _TASK_IGNORES for i in options.ignores)
        self.permit_log = leftovers.PermitLog() if options.permits else None
        self.pins = leftovers.TaskPins(self.baseline)
        self.threads_before = leftovers.threads_now() if options.threads else None
        self.types_before = leftovers.type_counts() if options.object_growth else None
        #: The tasks of the last failed look, to cancel them (strong references: clear it).
        self.leftover: list[Task] = []

    def start(self) -> LeakCheck:
        """Open the permit log, and keep the pending tasks the check may blame from being
        garbage-collected before it looks (``TaskPins``)."""
        if self.permit_log is not None:
            self.permit_log.open()
        self.pins.open()
        return self

    def stop(self) -> None:
        self.pins.close()
        if self.permit_log is not None:
            self.permit_log.close()

    # -- the fast look -------------------------------------------------------------------
    def leftover_tasks(self, loop: asyncio.AbstractEventLoop | None = None,
                       exclude: Iterable[Task] = ()) -> list[Task]:
        tasks = leftovers.new_tasks(self.baseline, loop=loop, exclude=exclude)
        tasks = [t for t in tasks if t not in self._ignored and (self.excused is None or t not in self.excused)]
        unsifted = [t for t in tasks if t not in self._sifted]
        if unsifted:
            self._sift(unsifted)
            tasks = [t for t in tasks if t not in self._ignored]
        return tasks

    def _sift(self, tasks: list[Task]) -> None:
        """Judge each new leftover against the ignores once: by the code it runs (a set
        lookup), then, when stack, creator or name ignores are given, by its description
        (its stack only: no heap scan)."""
        rest = []
        for task in tasks:
            self._sifted.add(task)
            if self._codes.matches(task):
                self._ignored.add(task)
            else:
                rest.append(task)
        if not (rest and self._described):
            return
        infos = leftovers.sift_infos(rest)
        for task in rest:
            info = infos.get(id(task))
            if info is not None and excused(info, self.options):
                self._ignored.add(task)

    def _look(self, loop: asyncio.AbstractEventLoop | None, exclude: Iterable[Task],
              tasks_only: bool) -> tuple[list[Task], list[Any], list[Any]]:
        tasks = self.leftover_tasks(loop, exclude)
        if tasks_only:
            return tasks, [], []
        permits = self.permit_log.held() if self.permit_log is not None else []
        threads = []
        if self.threads_before is not None:
            threads = [t for t in leftovers.new_threads(self.threads_before)
                       if not thread_excused(t.name, self.options)]
        return tasks, permits, threads

    # -- retries ---------------------------------------------------------------------------
    def settle(self, *, loop: asyncio.AbstractEventLoop | None = None, exclude: Iterable[Task] = (),
               tasks_only: bool = False) -> LeftoverReport | None:
        """Look, and look again with backoff until nothing is left or the timeout is spent;
        idle loops of leftover tasks are run meanwhile.  None when clean (the fast path)."""
        exclude = tuple(exclude)
        started = time.monotonic()
        deadline = started + self.options.timeout
        delay = FIRST_DELAY
        while True:
            tasks, permits, threads = self._look(loop, exclude, tasks_only)
            if not (tasks or permits or threads):
                return None if tasks_only else self._objects_report(time.monotonic() - started)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._report(tasks, permits, threads, time.monotonic() - started, tasks_only)
            step = min(delay, remaining)
            if tasks:
                leftovers.give_turns(tasks, step)
            else:
                time.sleep(step)
            delay *= 2

    async def settle_async(self, *, exclude: Iterable[Task] = ()) -> LeftoverReport | None:
        """``settle`` from inside a coroutine: the retries await, so the loop turns."""
        exclude = tuple(exclude)
        started = time.monotonic()
        deadline = started + self.options.timeout
        delay = FIRST_DELAY
        while True:
            tasks, permits, threads = self._look(None, exclude, False)
            if not (tasks or permits or threads):
                return self._objects_report(time.monotonic() - started)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._report(tasks, permits, threads, time.monotonic() - started, False)
            await asyncio.sleep(min(delay, remaining))
            delay *= 2

    def _objects_report(self, waited: float) -> LeftoverReport | None:
        if self.types_before is None:
            return None
        grown = grown_types(self.types_before, leftovers.type_counts(), self.options.object_growth)
        if not grown:
            return None
        return leftovers.describe((), objects=grown, waited=waited, proof=False)

    def _report(self, tasks: list[Task], permits: list[Any], threads: list[Any], waited: float,
                tasks_only: bool) -> LeftoverReport | None:
        grown: tuple[TypeGrowth, ...] = ()
        if not tasks_only and self.types_before is not None:
            grown = grown_types(self.types_before, leftovers.type_counts(), self.options.object_growth)
        report = leftovers.describe(tasks, permits=leftovers.PermitLog.describe(permits), threads=leftovers.describe_threads(threads),
                                    objects=grown, waited=waited).excuse(self.options)
        self.leftover = list(tasks)
        return None if report.empty else report


def _where(fn: Callable[..., Any] | None) -> str:
    return f"{fn.__module__}.{fn.__qualname__}" if fn is not None else "the no_leaks() block"


class no_leaks:
    """Fail with ``LeakError`` if the block (or decorated function) leaves anything behind.

    A context manager (``with`` and ``async with``) and a decorator (sync and async
    functions).  Nothing is checked when the block raises: its own error wins.

    Usage::

        async with no_leaks(ignore_top_function("keepalive"), timeout=0.5):
            await serve_one()
    """

    def __init__(self, *ignores: Ignore, ignore: Iterable[Ignore] = (), timeout: float = DEFAULT_TIMEOUT,
                 threads: bool = False, object_growth: int = 0, permits: bool = True) -> None:
        self.options = build_options(*ignores, *ignore, timeout=timeout, threads=threads,
                                     object_growth=object_growth, permits=permits)
        self.where = _where(None)
        self._checks: list[LeakCheck] = []

    def __enter__(self) -> no_leaks:
        self._checks.append(LeakCheck(self.options).start())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        check = self._checks.pop()
        try:
            report = check.settle() if exc_type is None else None
        finally:
            check.stop()
        if report is not None:
            raise LeakError(report, self.where)

    async def __aenter__(self) -> no_leaks:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        check = self._checks.pop()
        try:
            report = await check.settle_async() if exc_type is None else None
        finally:
            check.stop()
        if report is not None:
            raise LeakError(report, self.where)

    def __call__(self, fn: F) -> F:
        options = self.options
        where = _where(fn)

        def fresh() -> no_leaks:
            block = no_leaks()
            block.options, block.where = options, where
            return block

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async with fresh():
                    return await fn(*args, **kwargs)
            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with fresh():
                return fn(*args, **kwargs)
        return run  # type: ignore[return-value]


_baseline: "weakref.WeakSet[Task]" = leftovers.task_set()


def set_baseline() -> None:
    """Excuse every task pending now from later ``assert_no_leaks()`` calls."""
    global _baseline
    _baseline = leftovers.task_set()


def assert_no_leaks(*ignores: Ignore, ignore: Iterable[Ignore] = (), timeout: float = DEFAULT_TIMEOUT) -> None:
    """Fail with ``LeakError`` if tasks other than the current one are pending that were not
    pending at import (or the last ``set_baseline()``), after up to ``timeout`` of retries.

    Call it where no loop runs in this thread (after ``asyncio.run``, in a sync test); in a
    coroutine, ``await assert_no_leaks_async()`` lets the loop turn while it retries.
    """
    options = build_options(*ignores, *ignore, timeout=timeout, permits=False)
    check = LeakCheck(options, baseline=_baseline)
    current = _current_task()
    report = check.settle(exclude=(current,) if current is not None else ())
    if report is not None:
        raise LeakError(report, "assert_no_leaks()")


async def assert_no_leaks_async(*ignores: Ignore, ignore: Iterable[Ignore] = (),
                                timeout: float = DEFAULT_TIMEOUT) -> None:
    """``assert_no_leaks`` from inside a coroutine (the current task is never blamed)."""
    options = build_options(*ignores, *ignore, timeout=timeout, permits=False)
    check = LeakCheck(options, baseline=_baseline)
    current = asyncio.current_task()
    report = await check.settle_async(exclude=(current,) if current is not None else ())
    if report is not None:
        raise LeakError(report, "assert_no_leaks_async()")


def _current_task() -> Task | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


__all__ = [
    "Ignore", "LeakCheck", "LeakCheckOptions", "LeakError", "assert_no_leaks", "assert_no_leaks_async",
    "build_options", "ignore_coroutine", "ignore_creator", "ignore_function", "ignore_name", "ignore_thread",
    "ignore_top_function", "no_leaks", "set_baseline",
]

"""pytest plugin: fail tests that leave asyncio tasks, held permits or threads behind.

Off by default.  On for the run with ``--diag-leaks``, ``DIAG_LEAKS=1`` or the ini
option ``diag_leaks = true`` (precedence: command line, then environment, then ini;
``--no-diag-leaks`` turns it off); on for one test with ``@pytest.mark.diag_leaks``;
excused with ``@pytest.mark.diag_allow_leaks`` (everything) or
``@pytest.mark.diag_allow_leaks(top_function="worker", name=r"^bg-")`` (those).

Each checked test gets a baseline before its setup.  Leftovers are looked for when
its event loop is about to close (``asyncio.run``, pytest-asyncio's loop fixtures:
after the test's fixtures are torn down, before the loop cancels what is left) and
at the end of its teardown (loops that outlive the test, other threads).  Each look
retries with backoff for ``--diag-leaks-timeout`` seconds, then reports the test as
an error at teardown, with every leftover shown as ``diag tasks --debug 2`` shows it,
and cancels the leftovers.  Tasks that were pending when the session started, or that
a module/class/session-scoped fixture started, are never blamed; nor are test frameworks'
own tasks (``FRAMEWORK_COROUTINES``), nor the tasks of a run that KeyboardInterrupt or
SystemExit interrupted (``asyncio.run`` cancels those by design).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from dataclasses import dataclass, field
from typing import Any, Generator

import pytest

from diag.analysis.leftovers import (
    IGNORE_KINDS, LeakCheckOptions, LeftoverReport, build_options, ignores_from_kwargs, parse_ignore,
)
from diag.collect import leftovers, task_origins
from diag.collect.loop_watch import LoopWatch
from diag.errors import UsageError
from diag.render import leftovers_text
from diag.testing import LeakCheck

#: Every failure message starts with this (then the test's node id).
FAILURE_PREFIX = leftovers_text.PREFIX
ENV_VAR = "DIAG_LEAKS"
MARK_ON = "diag_leaks"
MARK_ALLOW = "diag_allow_leaks"

HELP_LEAKS = ("fail tests that leave asyncio tasks or Lock/Semaphore permits behind "
              f"(also: env {ENV_VAR}=1, ini diag_leaks = true)")
HELP_NO_LEAKS = f"do not check tests for leaks (overrides {ENV_VAR} and the ini)"
HELP_TIMEOUT = "seconds the leak check retries, letting the test's loop turn, before leftovers count (default 1.0)"
HELP_THREADS = "also fail tests that leave threads running"
HELP_OBJECTS = "also fail tests after which an object type grew by more than N objects (objgraph; 0: off)"
HELP_IGNORE = (f"never blame what matches KIND=VALUE, KIND one of {', '.join(IGNORE_KINDS)} "
               "(name and thread: regexes; repeatable)")
HELP_MARK_ON = f"{MARK_ON}(timeout=None): check this test for leaks even when the run does not"
HELP_MARK_ALLOW = (f"{MARK_ALLOW}(**ignores): with no arguments, do not check this test; with "
                   f"{', '.join(k + '=...' for k in IGNORE_KINDS)} (strings or lists), excuse those")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass
class _TestCheck:
    """The check of one test: its baseline, what its closing loops left, its loop hook."""

    nodeid: str
    check: LeakCheck
    watch: LoopWatch = field(default_factory=lambda: LoopWatch(install_factories=True))
    at_close: list[LeftoverReport] = field(default_factory=list)


@dataclass
class _State:
    """The plugin's state for one run (in ``config.stash``)."""

    enabled: bool
    options: LeakCheckOptions
    excused: "weakref.WeakSet[asyncio.Task[Any]]" = field(default_factory=weakref.WeakSet)
    users: int = 0
    current: _TestCheck | None = None

    def acquire(self) -> None:
        """Install the loop-close hook (first user only)."""
        if self.users == 0:
            leftovers.on_runner_close(self.loop_closing)
        self.users += 1

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            leftovers.remove_runner_close(self.loop_closing)

    def loop_closing(self, loop: asyncio.AbstractEventLoop) -> None:
        test = self.current
        if test is None or leftovers.run_interrupted():
            return
        report = test.check.settle(loop=loop, tasks_only=True)
        if report is not None:
            test.at_close.append(report)
            test.check.leftover = []  # the runner cancels them right after this


_STATE = pytest.StashKey[_State]()
_TEST = pytest.StashKey[_TestCheck]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("diag", "diag leak checks")
    group.addoption("--diag-leaks", action="store_true", default=None, dest="diag_leaks", help=HELP_LEAKS)
    group.addoption("--no-diag-leaks", action="store_false", dest="diag_leaks", help=HELP_NO_LEAKS)
    group.addoption("--diag-leaks-timeout", type=float, default=None, metavar="SECONDS", help=HELP_TIMEOUT)
    group.addoption("--diag-leaks-threads", action="store_true", default=None, help=HELP_THREADS)
    group.addoption("--diag-leaks-objects", type=int, default=None, metavar="N", help=HELP_OBJECTS)
    group.addoption("--diag-leaks-ignore", action="append", default=[], metavar="KIND=VALUE", help=HELP_IGNORE)
    parser.addini("diag_leaks", HELP_LEAKS, type="bool", default=False)
    parser.addini("diag_leaks_timeout", HELP_TIMEOUT, default="")
    parser.addini("diag_leaks_threads", HELP_THREADS, type="bool", default=False)
    parser.addini("diag_leaks_objects", HELP_OBJECTS, default="")
    parser.addini("diag_leaks_ignore", HELP_IGNORE, type="linelist", default=[])


def _enabled(config: pytest.Config) -> bool:
    cli = config.getoption("diag_leaks")
    if cli is not None:
        return bool(cli)
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        value = env.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise pytest.UsageError(f"{ENV_VAR}={env!r}: expected 1 or 0")
    return bool(config.getini("diag_leaks"))


def _options(config: pytest.Config) -> LeakCheckOptions:
    def number(cli: Any, ini: str, kind: type, what: str) -> Any:
        if cli is not None:
            return cli
        text = str(config.getini(ini)).strip()
        if not text:
            return None
        try:
            return kind(text)
        except ValueError:
            raise pytest.UsageError(f"{ini} = {text!r}: expected {what}") from None

    timeout = number(config.getoption("diag_leaks_timeout"), "diag_leaks_timeout", float, "seconds")
    objects = number(config.getoption("diag_leaks_objects"), "diag_leaks_objects", int, "a number of objects")
    threads = config.getoption("diag_leaks_threads")
    try:
        ignores = [parse_ignore(text) for text in [*config.getini("diag_leaks_ignore"),
                                                    *config.getoption("diag_leaks_ignore")]]
        return build_options(*ignores, timeout=1.0 if timeout is None else timeout,
                             threads=bool(config.getini("diag_leaks_threads") if threads is None else threads),
                             object_growth=objects or 0)
    except UsageError as err:
        raise pytest.UsageError(f"diag leak check: {err}") from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", HELP_MARK_ON)
    config.addinivalue_line("markers", HELP_MARK_ALLOW)
    state = _State(enabled=_enabled(config), options=_options(config))
    config.stash[_STATE] = state
    if state.enabled:
        state.excused = leftovers.task_set()  # the session's baseline
        state.acquire()


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None and state.enabled:
        state.release()


def _test_options(item: pytest.Item, state: _State) -> LeakCheckOptions | None:
    """The options of this test's check, or None when it is not checked."""
    allow = item.get_closest_marker(MARK_ALLOW)
    if allow is not None and not allow.args and not allow.kwargs:
        return None
    on = item.get_closest_marker(MARK_ON)
    if not state.enabled and on is None:
        return None
    options = state.options
    try:
        if on is not None and on.kwargs.get("timeout") is not None:
            options = build_options(*options.ignores, timeout=float(on.kwargs["timeout"]), threads=options.threads,
                                    object_growth=options.object_growth)
        if allow is not None:
            options = options.with_ignores(ignores_from_kwargs(allow.kwargs))
            options = options.with_ignores(parse_ignore(str(a)) for a in allow.args)
            options.validate()
    except (UsageError, TypeError, ValueError) as err:
        pytest.fail(f"bad {MARK_ALLOW}/{MARK_ON} marker on {item.nodeid}: {err}", pytrace=False)
    return options


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    state = item.config.stash.get(_STATE, None)
    options = _test_options(item, state) if state is not None else None
    if state is not None and options is not None:
        state.acquire()
        test = _TestCheck(item.nodeid, LeakCheck(options, excused=state.excused).start())
        test.watch.hook_running_loop()
        item.stash[_TEST] = test
        state.current = test
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Generator[Any, Any, Any]:
    """Tasks a wider-scoped fixture starts outlive the test that first needs them: excuse them."""
    state = request.config.stash.get(_STATE, None)
    if state is None or state.users == 0 or fixturedef.scope == "function":
        return (yield)
    before = leftovers.task_set()
    try:
        return (yield)
    finally:
        state.excused.update(leftovers.new_tasks(before))


def _unhook(test: _TestCheck) -> None:
    test.watch.unhook_running_loop()
    for loop in test.watch.loops():
        task_origins.uninstall_factory(loop)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    test = item.stash.get(_TEST, None)
    state = item.config.stash.get(_STATE, None)
    if test is None or state is None:
        return (yield)
    # Tasks created from here on need no creator; and the hook must not outlive the test.
    _unhook(test)
    try:
        result = yield
    finally:
        state.current = None
        try:
            final = test.check.settle()
            if test.check.leftover:
                leftovers.cancel(test.check.leftover)
                test.check.leftover = []
        finally:
            test.check.stop()
            state.release()
            del item.stash[_TEST]
    reports = [(r, f"{test.nodeid} (when its event loop closed)") for r in test.at_close]
    if final is not None:
        reports.append((final, test.nodeid))
    if reports:
        pytest.fail("\n\n".join(leftovers_text.render(r, where) for r, where in reports), pytrace=False)
    return result

"""The pytest plugin on suites run by test frameworks: anyio's pytest plugin, pytest-asyncio,
pytest-aiohttp and unittest's ``IsolatedAsyncioTestCase``, each through
``pytester.runpytest_subprocess`` with the framework's real plugin.

Their own machinery (anyio's runner task, its per-loop process pool shutdown task) is
never blamed on a test, and costs no retry; deliberate leaks (a forgotten task, an
unreleased permit, an ``asyncio.run`` leftover in a sync test) are still caught, even when
a garbage collection would free the forgotten task first, and a task sleeping forever is
reported, not crashed on.  The check keeps neither the loops a test runs alive nor anyio's
eager task factory hidden; and a subset of anyio's own suite, from its sdist, passes under it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from diag.pytest_plugin import ENV_VAR, FAILURE_PREFIX

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

ANYIO_SUITE = '''
import asyncio
import math
import os

import anyio
import anyio.to_process
import pytest
from hypothesis import given, settings, strategies as st

pytestmark = pytest.mark.anyio

SEM = asyncio.Semaphore(1)


@pytest.fixture
def anyio_backend():
    return ("asyncio", {"use_uvloop": USE_UVLOOP})


@pytest.fixture
async def resource():
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0.01)
    yield "ready"


async def test_task_group(resource):
    assert resource == "ready"
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0.01)


@settings(max_examples=20, deadline=200)  # a wait at a loop's close would miss the deadline
@given(st.integers())
async def test_hypothesis(n):
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0)


@settings(max_examples=20, deadline=200)
@given(st.integers())
def test_hypothesis_nested_runs(n):
    anyio.run(anyio.sleep, 0, backend="asyncio")


async def test_worker_thread():
    assert await anyio.to_thread.run_sync(lambda: 42) == 42


async def test_worker_process():
    # anyio starts its per-loop "process pool shutdown task", sleeping until the loop closes
    assert await anyio.to_process.run_sync(os.getpid) != os.getpid()


async def test_forgotten_task():
    asyncio.create_task(asyncio.sleep(math.inf), name="canary-forever")


async def forgets_to_release():
    await SEM.acquire()


async def test_unreleased_permit():
    await asyncio.create_task(forgets_to_release())


class TestRunner:
    """Named as anyio's runner, but the test's own: it is blamed."""

    async def _run_tests_and_fixtures(self):
        await asyncio.Event().wait()


async def test_lookalike_of_the_runner_task():
    asyncio.create_task(TestRunner()._run_tests_and_fixtures(), name="canary-lookalike")
    await asyncio.sleep(0)


def test_interrupted_run():
    # KeyboardInterrupt escapes the loop with tasks pending: asyncio.run cancels them by design
    async def nested():
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 5)
            await anyio.sleep(5)

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(nested)
            await anyio.sleep(0.01)
            asyncio.get_running_loop().call_soon(interrupt)
            await anyio.sleep(5)

    with pytest.raises(KeyboardInterrupt):
        anyio.run(main, backend="asyncio")


def interrupt():
    raise KeyboardInterrupt


def test_asyncio_run_leftover():
    async def main():
        asyncio.create_task(asyncio.Event().wait(), name="canary-run")
        await asyncio.sleep(0)
    asyncio.run(main())
'''

OTHER_FRAMEWORKS = '''
import asyncio
import unittest

import pytest
from aiohttp import web


class TestIsolated(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.event = asyncio.Event()

    async def test_clean(self):
        await asyncio.create_task(asyncio.sleep(0.01))

    async def test_leaky(self):
        asyncio.create_task(self.event.wait(), name="canary-unittest")
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_asyncio_clean():
    await asyncio.create_task(asyncio.sleep(0.01))


@pytest.mark.asyncio
async def test_asyncio_leaky():
    asyncio.create_task(asyncio.Event().wait(), name="canary-asyncio")
    await asyncio.sleep(0)


async def hello(request):
    return web.Response(text="hi")


@pytest.mark.asyncio
async def test_aiohttp_client(aiohttp_client):
    app = web.Application()
    app.router.add_get("/", hello)
    client = await aiohttp_client(app)
    response = await client.get("/")
    assert await response.text() == "hi"
'''


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def run(pytester: pytest.Pytester, source: str, *args: str) -> tuple[pytest.RunResult, dict[str, str]]:
    """The suite with ``--diag-leaks``; also each test's outcome, from its JUnit report."""
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=textwrap.dedent(source))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--diag-leaks", "--diag-leaks-timeout", "0.5",
                                           "--junitxml=report.xml", *args)
    outcomes = {}
    for case in ET.parse(pytester.path / "report.xml").getroot().iter("testcase"):
        bad = [c.tag for c in case if c.tag in ("failure", "error")]
        outcomes[str(case.get("name"))] = bad[0] if bad else "passed"
    return result, outcomes


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_anyio_runner_and_process_pool_tasks_are_not_blamed_and_canaries_are_caught(
        pytester: pytest.Pytester, use_uvloop: bool) -> None:
    if use_uvloop:
        pytest.importorskip("uvloop")
    result, outcomes = run(pytester, f"USE_UVLOOP = {use_uvloop}\n" + textwrap.dedent(ANYIO_SUITE))
    out = result.stdout.str()
    assert outcomes == {
        "test_task_group": "passed",
        "test_hypothesis": "passed",
        "test_hypothesis_nested_runs": "passed",
        "test_worker_thread": "passed",
        "test_worker_process": "passed",
        "test_forgotten_task": "error",
        "test_unreleased_permit": "error",
        "test_lookalike_of_the_runner_task": "error",
        "test_interrupted_run": "passed",
        "test_asyncio_run_leftover": "error",
    }, out
    assert "_run_tests_and_fixtures" not in out.split("canary-lookalike")[0], out  # the real one: never
    assert "process pool shutdown" not in out and "_shutdown_process_pool_on_exit" not in out, out
    assert "OverflowError" not in out and "Traceback" not in out, out
    assert f'{FAILURE_PREFIX} test_suite.py::test_forgotten_task' in out
    # uvloop's timers are not read: there the sleep's time left is not shown
    assert '"canary-forever" [sleep' + ("]" if use_uvloop else " (forever left)]") in out, out
    assert "permit of <test_suite.SEM" in out and "forgets_to_release" in out, out
    assert '"canary-lookalike"' in out and "TestRunner._run_tests_and_fixtures" in out, out
    assert '"canary-run"' in out, out


def test_pytest_asyncio_aiohttp_and_unittest_runners_are_not_blamed(pytester: pytest.Pytester) -> None:
    result, outcomes = run(pytester, OTHER_FRAMEWORKS)
    out = result.stdout.str()
    assert outcomes == {
        "test_clean": "passed",
        "test_leaky": "error",
        "test_asyncio_clean": "passed",
        "test_asyncio_leaky": "error",
        "test_aiohttp_client": "passed",
    }, out
    assert '"canary-unittest"' in out and '"canary-asyncio"' in out, out


COUNT_SCANS = '''
import gc
import json
import os

scans = [0]
_get_referrers = gc.get_referrers


def counting(*objs):
    scans[0] += 1
    return _get_referrers(*objs)


gc.get_referrers = counting


def pytest_sessionfinish(session):
    with open(os.path.join(str(session.config.rootpath), "scans.json"), "w") as f:
        json.dump(scans[0], f)
'''

EXCUSED = '''
import asyncio

import pytest


@pytest.mark.asyncio
@pytest.mark.parametrize("i", range(20))
async def test_leaves_an_excused_task(i):
    asyncio.create_task(asyncio.Event().wait(), name=f"bg-{i}")  # a primitive: a label to find
    await asyncio.sleep(0)
'''


def test_excusing_a_task_by_name_scans_no_heap(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(COUNT_SCANS)
    result, outcomes = run(pytester, EXCUSED, "--diag-leaks-ignore", "name=^bg-",
                           "--diag-leaks-ignore", "top_function=never_called")
    assert set(outcomes.values()) == {"passed"} and len(outcomes) == 20, result.stdout.str()
    assert json.loads((pytester.path / "scans.json").read_text()) == 0



LOOPS_FREED = '''
import asyncio
import gc
import weakref

import anyio


async def loop_ref():
    await asyncio.sleep(0)
    return weakref.ref(asyncio.get_running_loop())


# as anyio's own suite checks that anyio.run frees its loop
def test_asyncio_run_frees_its_loop():
    ref = asyncio.run(loop_ref())
    gc.collect()
    assert ref() is None


def test_anyio_run_frees_its_loop():
    ref = anyio.run(loop_ref, backend="asyncio")
    gc.collect()
    assert ref() is None
'''


def test_a_loop_the_check_watched_is_freed_when_the_test_drops_it(pytester: pytest.Pytester) -> None:
    result, outcomes = run(pytester, LOOPS_FREED)
    assert outcomes == {"test_asyncio_run_frees_its_loop": "passed", "test_anyio_run_frees_its_loop": "passed"}, \
        result.stdout.str()


ANYIO_EAGER = '''
import asyncio

import anyio
import pytest

pytestmark = pytest.mark.anyio


def eager_loop():
    loop = asyncio.new_event_loop()
    loop.set_task_factory(asyncio.eager_task_factory)
    return loop


@pytest.fixture
def anyio_backend():
    return ("asyncio", {"loop_factory": eager_loop})


async def test_task_group_on_an_eager_loop():
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0.01)
        await anyio.sleep(0)


async def test_forgotten_task_on_an_eager_loop():
    asyncio.create_task(asyncio.Event().wait(), name="canary-eager")
    await asyncio.sleep(0)
'''


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager task factories are 3.12+")
def test_anyio_on_an_eager_loop_keeps_its_lazy_tasks(pytester: pytest.Pytester) -> None:
    # anyio knows asyncio's eager factory by its code and starts its tasks lazily through it;
    # behind diag's factory it would start them eagerly, before their cancel scopes are set
    result, outcomes = run(pytester, ANYIO_EAGER)
    out = result.stdout.str()
    assert outcomes == {"test_task_group_on_an_eager_loop": "passed",
                        "test_forgotten_task_on_an_eager_loop": "error"}, out
    assert "cancel scope" not in out and '"canary-eager"' in out, out


#: A subset of anyio's own suite, from its sdist: synchronization primitives, task groups,
#: worker processes (the process pool shutdown task), memory object streams.  Not
#: tests/test_to_thread.py: two of its tests race with anyio's worker threads' exit
#: (test_single_thread, test_asyncio_run_does_not_leak_event_loop) and fail without the
#: leak check too on a busy machine.
ANYIO_SUBSET = ("tests/test_synchronization.py", "tests/test_taskgroups.py", "tests/test_to_process.py",
                "tests/streams/test_memory.py")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_subset_of_anyios_own_suite_passes_under_the_check(tmp_path: Path) -> None:
    version = importlib.metadata.version("anyio")
    sdist = Path(sys.prefix) / "sdists" / f"anyio-{version}.tar.gz"
    if not sdist.is_file():
        message = f"{sdist} is missing (scripts/venv.sh downloads it with pip)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    report = tmp_path / "anyio.xml"
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "PYTEST_ADDOPTS")}
    # anyio's own configuration (its pyproject.toml); pytest-aiohttp would need pytest-asyncio,
    # which anyio's configuration turns off
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:aiohttp", "-p", "no:cacheprovider", "-q", "-k", "not trio",
         "--diag-leaks", f"--junitxml={report}", *ANYIO_SUBSET],
        cwd=tmp_path / f"anyio-{version}", env=env, capture_output=True, text=True, timeout=540)
    outcomes: dict[str, list[str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        bad = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        outcomes.setdefault(bad[0] if bad else "passed", []).append(f"{case.get('classname')}::{case.get('name')}")
    out = proc.stdout[-20000:]
    assert not outcomes.get("failure") and not outcomes.get("error"), out
    assert FAILURE_PREFIX not in out, out
    passed = outcomes.get("passed", [])
    assert len(passed) > 400, out
    assert any("test_to_process" in name for name in passed), out  # worker processes ran
    assert proc.returncode == 0, out


# -- the rule, in process ----------------------------------------------------------------------
def test_framework_coroutines_are_default_ignores_and_specs_are_checked() -> None:
    from diag.analysis.leftovers import FRAMEWORK_COROUTINES, build_options, parse_ignore
    from diag.errors import UsageError

    kept = {i.value for i in build_options().ignores if i.kind == "coroutine"}
    assert kept == {spec for spec, _why in FRAMEWORK_COROUTINES}
    assert parse_ignore("coroutine=mylib.pool:Pool._reaper").value == "mylib.pool:Pool._reaper"
    for bad in ("coroutine=Pool._reaper", "coroutine=mylib:", "coroutine=:reaper"):
        with pytest.raises(UsageError, match="module:qualname"):
            parse_ignore(bad)


def test_coroutine_codes_know_a_task_by_its_code_not_its_name() -> None:
    import asyncio
    import types

    from diag.collect.leftovers import CoroutineCodes

    source = "import asyncio\n\nclass Pool:\n    async def _reaper(self):\n        await asyncio.sleep(3600)\n"
    module, lookalike = types.ModuleType("diag_test_fw_lib"), types.ModuleType("diag_test_fw_other")
    exec(source, module.__dict__)
    exec(source, lookalike.__dict__)  # the same code, equal by ==, in another module
    codes = CoroutineCodes(["diag_test_fw_lib:Pool._reaper", "diag_test_fw_lib:Gone.method"])

    async def main() -> tuple[bool, bool, bool]:
        real = asyncio.create_task(module.Pool()._reaper())
        other = asyncio.create_task(lookalike.Pool()._reaper())
        before = codes.matches(real)  # the module is not imported yet: nothing matches
        import sys

        sys.modules["diag_test_fw_lib"] = module
        try:
            result = (before, codes.matches(real), codes.matches(other))
        finally:
            del sys.modules["diag_test_fw_lib"]
            real.cancel()
            other.cancel()
        return result

    assert asyncio.run(main()) == (False, True, False)


COLLECTED = '''
import asyncio
import gc
import unittest

import pytest


# Each canary's task waits on an Event only the task itself refers to: garbage from the
# moment the test drops it, and freed by whichever collection comes first, here at once.
@pytest.mark.asyncio
async def test_asyncio_forgotten_and_collected():
    asyncio.create_task(asyncio.Event().wait(), name="canary-collected-asyncio")
    await asyncio.sleep(0)
    gc.collect()


class TestIsolated(unittest.IsolatedAsyncioTestCase):
    async def test_forgotten_and_collected(self):
        asyncio.create_task(asyncio.Event().wait(), name="canary-collected-unittest")
        await asyncio.sleep(0)
        gc.collect()


def test_run_forgotten_and_collected():
    async def main():
        asyncio.create_task(asyncio.Event().wait(), name="canary-collected-run")
        await asyncio.sleep(0)
        gc.collect()
    asyncio.run(main())


@pytest.mark.asyncio
async def test_clean_with_collections():
    event = asyncio.Event()
    task = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    gc.collect()
    event.set()
    assert await task
    gc.collect()
'''


def test_a_forgotten_task_is_caught_even_when_garbage_collection_frees_it_first(pytester: pytest.Pytester) -> None:
    result, outcomes = run(pytester, COLLECTED)
    out = result.stdout.str()
    assert outcomes == {
        "test_asyncio_forgotten_and_collected": "error",
        "test_forgotten_and_collected": "error",
        "test_run_forgotten_and_collected": "error",
        "test_clean_with_collections": "passed",
    }, out
    for name in ("canary-collected-asyncio", "canary-collected-unittest", "canary-collected-run"):
        assert f'"{name}" [Event.wait' in out, out
    # once per test in the errors section (under CI=true pytest repeats each message whole
    # in its short summary, so the summary is left out of the count)
    errors = out.split("short test summary info")[0]
    assert errors.count("verdict: proven leak: nothing can ever wake it") == 3, out
    assert "Task was destroyed but it is pending" not in out, out


def test_task_pins_keep_pending_new_tasks_and_let_finished_ones_go() -> None:
    import asyncio
    import gc
    import weakref

    from diag.collect.leftovers import TaskPins, task_set

    async def main() -> tuple[bool, bool, bool, bool, bool]:
        pins = TaskPins(task_set()).open()  # the running task is in the baseline
        try:
            forgotten = weakref.ref(asyncio.create_task(asyncio.Event().wait()))
            await asyncio.sleep(0)
            gc.collect()
            kept = forgotten()
            if kept is None:
                return False, False, False, False, False
            held = kept in pins.pinned
            baseline_free = asyncio.current_task() not in pins.pinned
            kept.cancel()
            await asyncio.gather(kept, return_exceptions=True)
            gc.collect()
            let_go = kept not in pins.pinned
            del kept
        finally:
            pins.close()
        return True, held, baseline_free, let_go, pins._on_collection not in gc.callbacks

    assert asyncio.run(main()) == (True, True, True, True, True)

"""The pytest plugin (``--diag-leaks``), run the way users run it: pytest in a subprocess."""

from __future__ import annotations

import textwrap

import pytest

from diag.pytest_plugin import ENV_VAR, FAILURE_PREFIX

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

TESTS = '''
import asyncio

async def waiter(event):
    await event.wait()

async def finisher():
    await asyncio.sleep(0.1)

def spawn():
    return asyncio.create_task(waiter(asyncio.Event()), name="leaky-waiter")

async def test_leaky():
    spawn()
    await asyncio.sleep(0)

async def test_clean():
    await asyncio.create_task(asyncio.sleep(0.01))

async def test_finishes_after_return():
    asyncio.create_task(finisher())
'''


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def run(pytester: pytest.Pytester, *args: str, ini: str = INI, **files: str) -> pytest.RunResult:
    pytester.makeini(ini)
    pytester.makepyfile(**{name: textwrap.dedent(src) for name, src in files.items()})
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--diag-leaks-timeout", "0.3", *args)


def test_leaky_test_fails_naming_task_wait_creator_and_verdict(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--diag-leaks", test_mod=TESTS)
    result.assert_outcomes(passed=3, errors=1)
    out = result.stdout.str()
    assert f"{FAILURE_PREFIX} test_mod.py::test_leaky" in out
    assert '"leaky-waiter" [Event.wait <event' in out
    assert "test_mod.py:4 waiter" in out and "await event.wait()" in out
    assert "created by spawn in task" in out and "at test_mod.py:10" in out
    assert "verdict: proven leak: nothing can ever wake it" in out
    assert out.count("ERROR at teardown") == 1  # cancelled: not blamed on the tests after it


def test_off_by_default(pytester: pytest.Pytester) -> None:
    run(pytester, test_mod=TESTS).assert_outcomes(passed=3)


@pytest.mark.parametrize("ini_on, env, cli, checked", [
    (True, None, (), True),
    (False, "1", (), True),
    (True, "0", (), False),
    (False, "0", ("--diag-leaks",), True),
    (True, "1", ("--no-diag-leaks",), False),
])
def test_precedence_cli_env_ini(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ini_on: bool,
                                env: str | None, cli: tuple[str, ...], checked: bool) -> None:
    if env is not None:
        monkeypatch.setenv(ENV_VAR, env)
    result = run(pytester, *cli, "-k", "leaky", ini=INI + f"diag_leaks = {'true' if ini_on else 'false'}\n",
                 test_mod=TESTS)
    result.assert_outcomes(passed=1, errors=1 if checked else 0)


@pytest.mark.parametrize("ignore", ["top_function=Event.wait", "function=waiter", "creator=spawn",
                                    "name=^leaky-"])
def test_each_ignore_option(pytester: pytest.Pytester, ignore: str) -> None:
    run(pytester, "--diag-leaks", "--diag-leaks-ignore", ignore, test_mod=TESTS).assert_outcomes(passed=3)


def test_ignore_from_ini_and_a_miss(pytester: pytest.Pytester) -> None:
    run(pytester, "--diag-leaks", ini=INI + "diag_leaks_ignore =\n    function=waiter\n",
        test_mod=TESTS).assert_outcomes(passed=3)
    run(pytester, "--diag-leaks", "--diag-leaks-ignore", "name=^other", test_mod=TESTS).assert_outcomes(
        passed=3, errors=1)


def test_bad_ignore_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--diag-leaks", "--diag-leaks-ignore", "colour=red", test_mod=TESTS)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown ignore kind 'colour'" in result.stderr.str()


def test_markers_force_on_and_allow(pytester: pytest.Pytester) -> None:
    src = TESTS + '''
import pytest

@pytest.mark.diag_leaks
async def test_marked_on():
    spawn()

@pytest.mark.diag_allow_leaks
async def test_allowed():
    spawn()

@pytest.mark.diag_allow_leaks(top_function="Event.wait", name=[r"^nothing"])
async def test_allowed_by_top_function():
    spawn()

@pytest.mark.diag_allow_leaks(name=r"^other-")
async def test_not_allowed_by_name():
    spawn()
'''
    result = run(pytester, "-k", "marked_on or allowed", test_mod=src)  # plugin off: only the marker checks
    result.assert_outcomes(passed=4, errors=1)
    assert "test_mod.py::test_marked_on" in result.stdout.str()
    result = run(pytester, "--diag-leaks", "-k", "allowed", test_mod=src)
    result.assert_outcomes(passed=3, errors=1)
    assert f"{FAILURE_PREFIX} test_mod.py::test_not_allowed_by_name" in result.stdout.str()


def test_plain_asyncio_run_tests(pytester: pytest.Pytester) -> None:
    src = '''
import asyncio

async def forever():
    await asyncio.Event().wait()

def test_run_clean():
    async def main():
        await asyncio.gather(asyncio.sleep(0.01), asyncio.sleep(0.02))
    asyncio.run(main())

def test_run_leaky():
    async def main():
        asyncio.create_task(forever(), name="run-leak")
        await asyncio.sleep(0)
    asyncio.run(main())
'''
    result = run(pytester, "--diag-leaks", test_mod=src)
    result.assert_outcomes(passed=2, errors=1)
    out = result.stdout.str()
    assert "test_run_leaky (when its event loop closed)" in out and '"run-leak"' in out
    assert "created by test_run_leaky.<locals>.main in task" in out


def test_permits_held_by_finished_tasks(pytester: pytest.Pytester) -> None:
    src = '''
import asyncio

POOL = asyncio.Semaphore(2)

async def forgets_to_release():
    await POOL.acquire()

async def test_permit_leak():
    await asyncio.create_task(forgets_to_release())

async def test_permit_released():
    async with POOL:
        pass
'''
    result = run(pytester, "--diag-leaks", test_mod=src)
    result.assert_outcomes(passed=2, errors=1)
    out = result.stdout.str()
    assert "1 permit held by a finished task" in out and "<test_mod.POOL" in out
    assert "test_mod.py:6 forgets_to_release" in out


def test_aiohttp_tests(pytester: pytest.Pytester) -> None:
    src = '''
import asyncio
from aiohttp import web

async def forever():
    await asyncio.Event().wait()

async def ok(request):
    return web.Response(text="ok")

async def leaky(request):
    request.app["bg"] = asyncio.create_task(forever(), name="handler-leak")
    return web.Response(text="leaky")

def make_app():
    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/leaky", leaky)
    return app

async def test_clean_client(aiohttp_client):
    client = await aiohttp_client(make_app())
    for _ in range(3):
        assert (await client.get("/ok")).status == 200

async def test_leaky_handler(aiohttp_client):
    client = await aiohttp_client(make_app())
    assert (await client.get("/leaky")).status == 200
'''
    result = run(pytester, "--diag-leaks", test_mod=src)
    result.assert_outcomes(passed=2, errors=1)
    out = result.stdout.str()
    assert "test_mod.py::test_leaky_handler" in out and '"handler-leak"' in out
    assert "created by leaky in task" in out
    assert "verdict: proven leak" in out  # the app holds the task, but nothing can reach its Event


def test_xdist_workers_check_their_own_tests(pytester: pytest.Pytester) -> None:
    src = TESTS + '''
async def test_leaky_too():
    spawn()
'''
    result = run(pytester, "--diag-leaks", "-n", "2", test_mod=src)
    result.assert_outcomes(passed=4, errors=2)


def test_session_baseline_and_session_fixtures(pytester: pytest.Pytester) -> None:
    conftest = '''
import asyncio
import threading
import pytest
import pytest_asyncio

_loop = asyncio.new_event_loop()
threading.Thread(target=_loop.run_forever, daemon=True, name="bg-loop").start()
asyncio.run_coroutine_threadsafe(asyncio.sleep(3600), _loop)  # pending before the session starts

async def ticker():
    while True:
        await asyncio.sleep(0.01)

@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def background():
    task = asyncio.create_task(ticker(), name="session-ticker")
    yield task
    task.cancel()
'''
    src = '''
import asyncio
import pytest

@pytest.mark.asyncio(loop_scope="session")
async def test_uses_background(background):
    await asyncio.sleep(0.02)

@pytest.mark.asyncio(loop_scope="session")
async def test_again(background):
    await asyncio.sleep(0.02)
'''
    run(pytester, "--diag-leaks", conftest=conftest, test_mod=src).assert_outcomes(passed=2)


def test_threads_and_objects_are_opt_in(pytester: pytest.Pytester) -> None:
    src = '''
import threading
import time

class Widget:
    pass

KEEP = []

def test_thread():
    stop = threading.Event()
    threading.Thread(target=stop.wait, args=(5,), name="stray", daemon=True).start()

def test_objects():
    KEEP.extend(Widget() for _ in range(1000))
'''
    run(pytester, "--diag-leaks", test_mod=src).assert_outcomes(passed=2)
    result = run(pytester, "--diag-leaks", "--diag-leaks-threads", "--diag-leaks-objects", "500", test_mod=src)
    result.assert_outcomes(passed=2, errors=2)
    out = result.stdout.str()
    assert 'thread "stray" (target Event.wait, daemon) still running' in out
    assert "object growth: test_mod.Widget +1000 (0 -> 1000)" in out

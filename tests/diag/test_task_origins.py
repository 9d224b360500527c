"""Task ids and "created by" records: the C accelerator and the Python path agree.

Each program runs in a subprocess twice, with the accelerator and with
``DIAG_ORIGINS=python``, and prints what each path recorded; both must name the same
creating function, line and creating task for every way a task can be made.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pytest

from diag.collect import task_origins
from tests.support.cli import run_diag
from tests.support.programs import DiagRun, run_python

PROGRAM = textwrap.dedent('''
    import asyncio, json, sys
    from diag.collect import task_origins

    def where(task):
        origin = task_origins.task_origin(task)
        if origin is None:
            return None
        code = task_origins.creating_code(origin)
        return [code.co_name, task_origins.origin_line(code, origin[1]), origin[2]]

    async def child():
        await asyncio.sleep(0)

    async def main():
        loop = asyncio.get_running_loop()
        seen = []
        def program_factory(loop, coro, **kw):
            seen.append(1)
            return asyncio.Task(coro, loop=loop, **kw)
        if sys.argv[1] == "chained":
            loop.set_task_factory(program_factory)
        task_origins.install_factory(loop)
        me = task_origins.task_seq(asyncio.current_task())
        made = {}
        made["create_task"] = asyncio.create_task(child(), name="a")            # LINE create_task
        made["loop.create_task"] = loop.create_task(child())                     # LINE loop.create_task
        async def spawner():
            return asyncio.create_task(child())                                  # LINE spawner
        made["spawner"] = asyncio.create_task(spawner())
        made["spawned"] = await made["spawner"]
        async with asyncio.TaskGroup() as tg:
            made["taskgroup"] = tg.create_task(child())                          # LINE taskgroup
        fut = asyncio.ensure_future(child())                                     # LINE ensure_future
        made["ensure_future"] = fut
        await asyncio.gather(*made.values())
        direct = asyncio.Task(child())  # not through the loop's factory: no record
        await direct
        out = {name: where(t) for name, t in made.items()}
        out["direct"] = where(direct)
        out["me"] = me
        out["spawner_seq"] = task_origins.task_seq(made["spawner"])
        out["chained_calls"] = len(seen)
        out["accelerated"] = task_origins.accelerated()
        out["names"] = sorted({t.get_name() if t.get_name() == "a" else t.get_name().split("-")[0]
                               for t in made.values()})
        print(json.dumps(out))

    asyncio.run(main())
''')


def _lines() -> dict[str, int]:
    return {line.split("# LINE ")[1].strip(): n
            for n, line in enumerate(PROGRAM.splitlines(), start=1) if "# LINE " in line}


def _run(source: str, *args: str, python_path: bool) -> dict[str, object]:
    proc = run_python(source, *args, python_path=python_path)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_the_accelerator_is_built_in_ci() -> None:
    # CI compiles diag/_origins.c on every interpreter it tests; a silent fallback to the
    # slower Python path there would hide a broken build.
    if os.environ.get("CI") != "true":
        pytest.skip("only required where CI=true")
    assert task_origins.accelerated()


@pytest.mark.parametrize("mode", ["plain", "chained"])
def test_both_paths_record_the_same_creators(mode: str) -> None:
    fast = _run(PROGRAM, mode, python_path=False)
    slow = _run(PROGRAM, mode, python_path=True)
    assert slow["accelerated"] is False
    assert fast["accelerated"] is task_origins.accelerated()
    lines = _lines()
    me = fast["me"]
    expected = {
        "create_task": ["main", lines["create_task"], me],
        "loop.create_task": ["main", lines["loop.create_task"], me],
        "spawner": None,  # checked below: created on the line after the def
        "spawned": ["spawner", lines["spawner"], fast["spawner_seq"]],
        "taskgroup": ["main", lines["taskgroup"], me],
        "ensure_future": ["main", lines["ensure_future"], me],
    }
    for result in (fast, slow):
        for name, want in expected.items():
            if want is not None:
                assert result[name] == [want[0], want[1], result["me"] if want[2] == me else result["spawner_seq"]], (name, result)
        assert result["spawner"][:2] == ["main", lines["spawner"] + 1]  # type: ignore[index]
        assert result["direct"] is None
        if mode == "chained":
            assert result["chained_calls"] == 6  # the program's factory still made every task
        # the one named task keeps its name, the others asyncio's Task-N (3.13.0-3.13.2 named
        # them "None" behind any factory: CPython gh-130033)
        assert result["names"] == ["Task", "a"] or (mode == "chained" and task_origins._SETS_NAME_NONE
                                                  and result["names"] == ["None", "a"]), result
    assert {k: v for k, v in fast.items() if k != "accelerated"} == {k: v for k, v in slow.items() if k != "accelerated"}


NAMES = textwrap.dedent('''
    import asyncio, json
    from diag.collect import task_origins

    async def child():
        await asyncio.sleep(0)

    async def main():
        loop = asyncio.get_running_loop()
        task_origins.install_factory(loop)
        out = {"diag": [asyncio.create_task(child()).get_name(), loop.create_task(child(), name="b").get_name()]}
        seen = []
        def program_factory(loop, coro, **kw):
            seen.append(kw.get("name"))
            return asyncio.Task(coro, loop=loop, **kw)
        loop.set_task_factory(program_factory)   # the program's own, set after diag's
        out["program"] = [asyncio.create_task(child(), name="c").get_name(), len(seen)]
        loop.set_task_factory(None)
        task_origins.install_factory(loop)
        task_origins.uninstall_factory(loop)
        out["after"] = [asyncio.create_task(child()).get_name(), "create_task" in vars(loop),
                        loop.get_task_factory() is None]
        await asyncio.sleep(0.01)
        print(json.dumps(out))

    asyncio.run(main())
''')


@pytest.mark.parametrize("python_path", [False, True])
def test_tasks_keep_their_names_behind_the_factory(python_path: bool) -> None:
    """An unnamed task is Task-N with or without diag's factory, a named one keeps its name;
    a factory the program sets later is called as asyncio calls it, and uninstalling leaves
    the loop as it was."""
    out = _run(NAMES, python_path=python_path)
    diag_made, named = out["diag"]  # type: ignore[misc]
    assert diag_made.startswith("Task-") and diag_made[5:].isdigit() and named == "b", out
    assert out["program"] == ["c", 1], out
    unnamed, patched, no_factory = out["after"]  # type: ignore[misc]
    assert unnamed.startswith("Task-") and not patched and no_factory, out


EAGER = textwrap.dedent('''
    import asyncio, json
    from diag.collect import task_origins

    async def leaf():
        await asyncio.sleep(0)

    async def parent():
        kid = asyncio.create_task(leaf())   # runs while parent's first step is still eager
        await kid
        return kid

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        task_origins.install_factory(loop, over_eager=True)  # in front of the eager factory, on purpose
        p = asyncio.create_task(parent())
        kid = await p
        print(json.dumps([task_origins.task_seq(p), task_origins.task_origin(kid)[2],
                          task_origins.task_origin(p) is not None]))

    asyncio.run(main())
''')


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are 3.12+")
def test_an_eager_parent_keeps_the_id_its_children_recorded() -> None:
    for python_path in (False, True):
        proc = run_python(EAGER, python_path=python_path)
        assert proc.returncode == 0, proc.stderr
        parent_seq, kid_creator, parent_recorded = json.loads(proc.stdout)
        assert kid_creator == parent_seq
        assert parent_recorded


CHURN = textwrap.dedent('''
    import asyncio, gc, json
    from diag import _origins
    from diag.collect import task_origins

    async def nothing():
        pass

    async def main():
        loop = asyncio.get_running_loop()
        task_origins.install_factory(loop)
        keeper = asyncio.create_task(asyncio.sleep(60))
        keeper_seq = task_origins.task_seq(keeper)
        sizes, strays = [], 0
        for _ in range(40):
            await asyncio.gather(*[asyncio.create_task(nothing()) for _ in range(5000)])
            # tasks made without the factory reuse the addresses of dead recorded ones
            direct = [asyncio.Task(nothing()) for _ in range(200)]
            strays += sum(task_origins.task_origin(t) is not None for t in direct)
            await asyncio.gather(*direct)
            del direct
            sizes.append(_origins.stats()["entries"])
        stable = task_origins.task_seq(keeper) == keeper_seq
        keeper.cancel()
        print(json.dumps({"max_entries": max(sizes), "strays": strays, "stable": stable}))

    asyncio.run(main())
''')


@pytest.mark.skipif(not task_origins.accelerated(), reason="the C accelerator is not built here")
def test_the_record_table_stays_bounded_and_never_mixes_up_tasks() -> None:
    result = _run(CHURN, python_path=False)
    # 200,000 tasks made in all, at most ~5,000 alive at once: the table is pruned
    # to a small multiple of the live tasks instead of growing with every task made.
    assert result["max_entries"] < 40_000, result
    assert result["strays"] == 0, result  # a reused address never inherits a dead task's record
    assert result["stable"] is True


def test_unnamed_tasks_keep_their_names_under_diag_run() -> None:
    """What a user sees: the program's own get_name() and diag's dump both say Task-N (on
    3.13.0-3.13.2 the agent's factory made them "None" before)."""
    program = """
import asyncio

async def idle():
    await asyncio.Event().wait()

async def main():
    kept = [asyncio.create_task(idle()) for _ in range(3)]
    await asyncio.sleep(0.2)
    print("names", sorted({t.get_name().split("-")[0] for t in kept}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""
    with DiagRun(program) as app:
        tasks = json.loads(run_diag("tasks", app.url, "--format", "json", "--debug", "2").stdout)["tasks"]
        idle = [t for t in tasks if t["coro"] == "idle"]
        assert len(idle) == 3 and all(t["name"].startswith("Task-") and t["name"][5:].isdigit() for t in idle), idle
        deadline = time.monotonic() + 30  # the agent can answer before the program has printed
        while "names" not in app.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "names ['Task']" in app.output(), app.output()

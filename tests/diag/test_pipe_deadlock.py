"""A ``Process.wait()`` for a child blocked writing to a pipe that nothing reads: a
deadlock when no other task can read that pipe; a suspect when one can (a slow reader
holding the process, whose code reads its stdout).  Real programs under ``diag run``,
with a real child, on asyncio and uvloop."""

from __future__ import annotations

import pytest

from tests.diag.test_leaks_evidence import RUN_ON, by_task, judged_as, leaks, settled
from tests.support.programs import DiagRun

EXPORT = """
import asyncio, os, sys

async def export(procs):
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "print('x' * 2000000)",
                                                stdout=asyncio.subprocess.PIPE)
    procs.append(proc)
    await proc.wait()           # the bug: waits for the child before reading its stdout
    return await proc.stdout.read()

async def tail(procs):
    while not procs:
        await asyncio.sleep(0.05)
    while True:                 # a slow reader of the same pipe: the child gets out, in time
        await asyncio.sleep(0.5)
        await procs[0].stdout.read(1)

async def main():
    procs = []
    keep = [asyncio.create_task(export(procs), name="export")]
    if os.environ.get("TAIL"):
        keep.append(asyncio.create_task(tail(procs), name="tail"))
    await asyncio.Event().wait()
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_wait_for_a_child_on_a_pipe_no_task_reads_is_a_deadlock(loop: str) -> None:
    with DiagRun(EXPORT, env={"LOOP": loop}) as app:
        code, data = judged_as(app.url, {"export"}, "deadlock")
        (finding,) = by_task(data)["export"]
        assert code == 1 and "and its child process" in finding["title"] and "wait on each other" in finding["title"]
        assert "is blocked writing to its stdout pipe" in finding["evidence"]
        assert "no other task refers to that pipe" in finding["evidence"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_child_whose_pipe_another_task_reads_is_no_deadlock(loop: str) -> None:
    with DiagRun(EXPORT, env={"LOOP": loop, "TAIL": "1"}) as app:
        settled(app.url, {"export"}, "--min-wait", "1")
        code, data = leaks(app.url, "--min-wait", "1")
        kinds = {f["kind"] for f in by_task(data).get("export", [])}
        assert kinds == {"suspect"}, data["findings"]
        (finding,) = by_task(data)["export"]
        assert "is blocked writing to its stdout pipe" in finding["evidence"]
        (waiting,) = finding["tasks"]
        assert waiting["wait"]["users"], waiting["wait"]  # the reader, named

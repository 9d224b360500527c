"""A ``--filter`` regex never runs in the target: the CLI matches it on the answer.

A pattern with nested repetition (``(a+)+$``) backtracks for longer than anyone waits
on a name of 150 ``a``s.  On the agent's thread it held the target's GIL for minutes;
matched by the CLI, the target's heartbeat never misses a beat and the CLI itself gives
up after its budget with one line.  Patterns ``re`` cannot compile are one line too.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from tests.support.cli import assert_one_line_error, run_diag
from tests.support.programs import DiagRun
from tests.support.target import free_port, http

PROGRAM = r'''
import asyncio
import time


async def named_wait():
    await asyncio.sleep(3600)


async def heartbeat():
    while True:
        print("beat", time.time(), flush=True)
        await asyncio.sleep(0.02)


async def main():
    tasks = [asyncio.create_task(named_wait(), name="a" * 150 + str(n)) for n in range(300)]
    tasks.append(asyncio.create_task(named_wait(), name="plain-worker"))
    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(3600)


asyncio.run(main())
'''


@pytest.fixture(scope="module")
def program() -> Iterator[DiagRun]:
    with DiagRun(PROGRAM) as run:
        deadline = time.monotonic() + 20
        while "beat" not in run.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "beat" in run.output(), run.output()
        yield run


def beats(run: DiagRun) -> list[float]:
    return [float(line.split()[1]) for line in run.output().splitlines() if line.startswith("beat ")]


def test_backtracking_filter_never_stalls_the_target(program: DiagRun) -> None:
    started = time.time()
    proc = run_diag("tasks", program.url, "--filter", "(a+)+$", "--format", "text", timeout=120)
    ended = time.time()
    line = assert_one_line_error(proc, 2)
    assert "took more than" in line and "--filter" in line, line
    # the beats while the CLI backtracked: the target's loop ran all along
    deadline = time.monotonic() + 10
    while max(beats(program), default=0.0) < ended and time.monotonic() < deadline:
        time.sleep(0.05)
    during = [t for t in beats(program) if started <= t <= ended]
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert len(during) > 20 and max(gaps) < 2.0, (len(during), max(gaps, default=None))


def test_filter_is_matched_on_the_answer(program: DiagRun) -> None:
    grouped = run_diag("tasks", program.url, "--filter", "^a{150}1[0-9]$", "--format", "json")
    assert grouped.returncode == 0, grouped.stderr
    snap = json.loads(grouped.stdout)
    assert snap["grouped"] is True
    assert [g["count"] for g in snap["tasks"]] == [10]
    full = run_diag("tasks", program.url, "--filter", "plain-worker|heartbeat", "--debug", "2",
                    "--format", "json")
    assert full.returncode == 0, full.stderr
    assert sorted(t["name"] for t in json.loads(full.stdout)["tasks"])[-1] == "plain-worker"
    assert len(json.loads(full.stdout)["tasks"]) == 2


def test_agent_refuses_filter_from_older_clients(program: DiagRun) -> None:
    started = time.monotonic()
    status, _, body = http("GET", program.url + "/debug/diag/tasks?" + urllib.parse.urlencode({"filter": "(a+)+$"}))
    assert time.monotonic() - started < 5
    assert status == 400, body
    assert "filter" in json.loads(body)["error"]


@pytest.mark.parametrize(("pattern", "expected"), [
    ("a{4294967296}", "repetition number is too large"),
    ("(" * 499 + ")" * 499, "recursion"),
    ("(unclosed", "missing )"),
])
def test_uncompilable_filters_are_one_line(pattern: str, expected: str) -> None:
    proc = run_diag("tasks", f"http://127.0.0.1:{free_port()}", "--filter", pattern)
    line = assert_one_line_error(proc, 2)
    assert "bad --filter regex" in line and expected in line, line
    assert len(line) < 400

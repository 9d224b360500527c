"""The task dump on the wire, against a real agent in a real program: the compact form
``diag.tasks/2`` for clients that ask for it, ``diag.tasks/1`` for the others, and the
CLI reading either, over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_diag
from tests.support.programs import DiagRun
from tests.support.target import http
from tests.target.helpers import wait_until

pytestmark = pytest.mark.timeout(120)

TASKS = 3000
PROGRAM = f"""
import asyncio
import sys
if sys.argv[1:] == ["uvloop"]:
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

async def park(event):
    await event.wait()

async def nap():
    await asyncio.sleep(3600)

async def main():
    event = asyncio.Event()
    tasks = [asyncio.create_task(park(event), name=f"parked-{{n}}") for n in range({TASKS} - 100)]
    tasks += [asyncio.create_task(nap(), name=f"napping-{{n}}") for n in range(100)]
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def program(request: pytest.FixtureRequest) -> Iterator[DiagRun]:
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    with DiagRun(PROGRAM, args=(request.param,)) as run:
        def started() -> bool:  # every task created, and every one past its first step (none still ready)
            status, _, body = http("GET", run.url + f"/debug/diag/tasks?debug=2&limit={TASKS + 10}", timeout=30)
            if status != 200:
                return False
            doc = json.loads(body)
            return doc["total_tasks"] > TASKS and all(t["state"] == "waiting" for t in doc["tasks"]
                                                      if t["coro"] in ("park", "nap"))
        assert wait_until(started, timeout=30, interval=0.1), run.output()
        yield run


def answer(url: str, query: str, headers: dict[str, str] | None = None) -> tuple[dict[str, str], bytes]:
    status, head, body = http("GET", f"{url}/debug/diag/tasks?{query}", headers=headers, timeout=30)
    assert status == 200, body[:300]
    return head, body


def test_the_agent_sends_the_compact_form_to_clients_that_ask(program: DiagRun) -> None:
    _, old = answer(program.url, "debug=2&limit=100000")
    _, new = answer(program.url, "debug=2&limit=100000&wire=2")
    v1, v2 = json.loads(old), json.loads(new)
    assert v1["schema"] == "diag.tasks/1" and v2["schema"] == "diag.tasks/2"
    assert {t["id"] for t in v1["tasks"]} == {row[0] for row in v2["tasks"]}
    assert len(v2["tasks"]) > TASKS
    assert len(v2["stacks"]) < 20
    assert len(new) * 4 < len(old), (len(new), len(old))


def test_an_unknown_form_is_a_clear_400(program: DiagRun) -> None:
    status, _, body = http("GET", program.url + "/debug/diag/tasks?wire=7")
    assert status == 400
    assert json.loads(body)["error"] == "wire must be 1 or 2, not '7'"


def test_sliced_it_is_the_same_dump_a_line_a_slice(program: DiagRun) -> None:
    """``layout=slices``: the same tasks and tables, laid out a slice a line for a reader
    that works as the answer comes; still one JSON document."""
    from diag.model.task_wire import SLICES_OPEN, joined

    _, plain = answer(program.url, "debug=2&limit=100000&wire=2")
    _, sliced = answer(program.url, "debug=2&limit=100000&wire=2&layout=slices")
    whole = joined(json.loads(sliced))
    doc = json.loads(plain)
    assert {row[0] for row in whole["tasks"]} == {row[0] for row in doc["tasks"]}
    assert len(whole["stacks"]) == len(doc["stacks"]) and len(whole["tasks"]) > TASKS
    lines = sliced.split(b"\n")
    assert lines[0].endswith(SLICES_OPEN.encode()) and lines[-1].startswith(b"]")
    slices = [json.loads(line.lstrip(b",")) for line in lines[1:-1]]
    assert len(slices) >= 2 and sum(len(s["tasks"]) for s in slices) == len(whole["tasks"])
    status, _, body = http("GET", program.url + "/debug/diag/tasks?wire=2&layout=rows")
    assert status == 400 and json.loads(body)["error"] == "layout must be plain or slices, not 'rows'"


def _dump(*args: str) -> dict[str, Any]:
    proc = run_diag("tasks", *args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_the_cli_prints_every_task_as_version_1(program: DiagRun) -> None:
    doc = _dump(program.url, "--debug", "2", "--limit", "100000")
    assert doc["schema"] == "diag.tasks/1"
    parked = [t for t in doc["tasks"] if t["coro"] == "park"]
    assert len(parked) == TASKS - 100
    assert [f["function"] for f in parked[0]["stack"]][-1] == "park"
    assert parked[0]["wait"]["kind"] == "event"
    naps = [t for t in doc["tasks"] if t["coro"] == "nap"]
    assert len(naps) == 100 and all(t["wait"]["kind"] == "sleep" for t in naps)
    assert all(t["wait"].get("time_left", 3600) > 3000 for t in naps)  # uvloop's timers do not say


def test_saved_dumps_are_compact_and_read_back(program: DiagRun, tmp_path: Path) -> None:
    saved = tmp_path / "tasks.json"
    proc = run_diag("tasks", program.url, "-o", str(saved), "--format", "text", "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(saved.read_text())["schema"] == "diag.tasks/2"
    doc = _dump(str(saved), "--debug", "2", "--limit", "100000")
    assert doc["schema"] == "diag.tasks/1"
    assert sum(t["coro"] == "park" for t in doc["tasks"]) == TASKS - 100
    text = run_diag("tasks", str(saved), "--format", "text", "--state", "waiting")
    assert text.returncode == 0, text.stderr
    assert f"{TASKS - 100} tasks" in text.stdout or str(TASKS - 100) in text.stdout


def test_gzip_for_clients_that_take_it(program: DiagRun) -> None:
    import gzip

    _, plain = answer(program.url, "debug=2&limit=100000&wire=2")
    head, packed = answer(program.url, "debug=2&limit=100000&wire=2", {"Accept-Encoding": "gzip"})
    assert head.get("Content-Encoding") == "gzip"
    assert len(packed) * 3 < len(plain)
    unpacked = json.loads(gzip.decompress(packed))
    assert unpacked["schema"] == "diag.tasks/2" and len(unpacked["tasks"]) == len(json.loads(plain)["tasks"])
    head, v1 = answer(program.url, "debug=2&limit=100000", {"Accept-Encoding": "gzip"})
    assert head.get("Content-Encoding") == "gzip" and json.loads(gzip.decompress(v1))["schema"] == "diag.tasks/1"
    head, _ = answer(program.url, "debug=2&limit=100000", {"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in head


def test_the_cli_writes_a_long_text_dump_as_it_comes(program: DiagRun) -> None:
    """More tasks than one slice: each written as its slice arrives, the summary after them."""
    proc = run_diag("tasks", program.url, "--debug", "2", "--format", "text", "--limit", "100000")
    assert proc.returncode == 0, proc.stderr
    first, rest = proc.stdout.split("\n", 1)
    assert first.startswith("diag tasks: pid ") and first.endswith("; the summary follows them"), first
    titles = [line for line in rest.splitlines() if line.startswith("task ")]
    assert sum('"parked-' in t for t in titles) == TASKS - 100 and sum('"napping-' in t for t in titles) == 100
    summary = rest.index("\ndiag tasks: pid ")
    assert rest.rindex("\ntask ") < summary
    total = int(rest[summary:].split("), ", 1)[1].split(" pending", 1)[0])
    assert total == len(titles) and f"{total} matching" in rest[summary:]

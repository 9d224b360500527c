"""Renderers against golden files (fixed width, no colour).  UPDATE_GOLDEN=1 rewrites them."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from diag.analysis.task_groups import TaskQuery, task_view
from diag.render import formatting, jsonout, tasks_table, tasks_text
from diag.task_snapshot import Frame, LoopInfo, TaskSnapshot, Wait

from .snapshots import fetchers_and_worker, snapshot, task

GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def stalled_with_cycle() -> TaskSnapshot:
    blocking = (Frame("/srv/app/handlers.py", 40, "blocking_handler", "time.sleep(seconds)"),)
    loop = LoopInfo("0x7f00l", 1, "MainThread", True, 0.0002, 3.5, blocking)
    a = task(5, name="a", wait=Wait("task", "await task", tasks=(7,), seconds=12.0))
    b = task(7, name="b", wait=Wait("task", "await task", tasks=(5,), seconds=12.0))
    return snapshot(a, b, loops=(loop,))


@pytest.mark.parametrize(("debug", "name"), [(1, "tasks_debug1.txt"), (2, "tasks_debug2.txt")])
def test_text(debug: int, name: str) -> None:
    out = io.StringIO()
    tasks_text.render(task_view(fetchers_and_worker(), TaskQuery(debug=debug)), out, cwd="/srv/app")
    check_golden(name, out.getvalue())


def test_text_reports_deadlock_and_blocked_loop() -> None:
    out = io.StringIO()
    tasks_text.render(task_view(stalled_with_cycle(), TaskQuery(debug=2)), out, cwd="/srv/app")
    check_golden("tasks_stalled.txt", out.getvalue())


def test_table() -> None:
    console = Console(file=io.StringIO(), width=160, color_system=None, force_terminal=False)
    tasks_table.render(task_view(fetchers_and_worker(), TaskQuery(debug=1)), console, cwd="/srv/app")
    check_golden("tasks_table.txt", console.file.getvalue())  # type: ignore[attr-defined]


def test_json_is_the_snapshot_and_round_trips() -> None:
    view = task_view(fetchers_and_worker(), TaskQuery(debug=1))
    out = io.StringIO()
    jsonout.render(view, out)
    data = json.loads(out.getvalue())
    assert data["schema"] == "diag.tasks/1"
    assert data["tasks"][0]["count"] == 3
    assert data["tasks"][0]["wait"]["kind"] == "semaphore"
    assert data["tasks"][0]["wait"]["primitive"]["id"] == "0x7f00a0"
    assert TaskSnapshot.from_dict(data) == view


@pytest.mark.parametrize(("seconds", "text"), [
    (0.42, "0.4s"), (9.96, "10.0s"), (12.7, "12s"), (303, "5m03s"), (7500, "2h05m"), (None, "?"),
])
def test_durations_read_like_go(seconds: float | None, text: str) -> None:
    assert formatting.duration(seconds) == text


def test_short_paths() -> None:
    assert formatting.short_path("/usr/lib/python3.12/asyncio/locks.py") == "asyncio/locks.py"
    assert formatting.short_path("/v/lib/python3.11/site-packages/aiohttp/web.py") == "aiohttp/web.py"
    assert formatting.short_path("/srv/app/x.py", cwd="/srv/app") == "x.py"
    assert formatting.short_path("/elsewhere/x.py", cwd="/srv/app") == "/elsewhere/x.py"

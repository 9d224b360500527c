"""Renderers against golden files (fixed width, no colour).  UPDATE_GOLDEN=1 rewrites them."""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
from rich.cells import cell_len
from rich.console import Console

from diag.analysis.leak_verdicts import LeakOptions, leak_report
from diag.analysis.merge import merge_findings, merge_primitives, merge_tasks
from diag.analysis.task_groups import TaskQuery, task_view
from diag import wording
from diag.model.target_result import Target, TargetResult
from diag.render import (
    fit, formatting, jsonout, leaks_render, many_leaks, many_sync, many_tasks, sync_render, tasks_table, tasks_text,
)
from diag.model.task_snapshot import Frame, LoopInfo, Primitive, TaskSnapshot, Wait

from .shop_snapshots import CWD, FLUSH, RESERVE, STOCK, TRANSFER_A, shop_sync, shop_tasks
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


def test_long_json_lists_encode_shared_values_once_and_write_the_same_text() -> None:
    # Tasks stuck in one place share one stack list; with shared=, it is encoded once and
    # spliced into each line.  The text must be exactly what encoding each entry gives,
    # whatever the strings around it hold (escaped quotes, the placeholder's own text,
    # lone surrogates) and whatever the shared keys hold (nothing, an empty list, None).
    stack = [{"function": "leaf", "file": "/srv/a.py", "line": 3}]
    creator = {"function": "spawn", "file": "/srv/b.py", "line": 9}
    tricky = ['plain', 'say "stack": "\x00shared\x00"', '"created_by": 0', "\ud800 lone", "\\"]
    tasks = []
    for i in range(jsonout.LONG_LIST + 5):
        entry = {"id": i, "name": tricky[i % len(tricky)], "stack": stack if i % 7 else [],
                 "wait": {"kind": "event", "detail": tricky[(i + 1) % len(tricky)]},
                 "created_by": creator if i % 3 else None}
        if i % 11 == 0:
            del entry["created_by"]
        tasks.append(entry)
    tasks.append("not a dict")
    doc = {"schema": "diag.tasks/1", "tasks": tasks}
    plain, shared = io.StringIO(), io.StringIO()
    jsonout.render(doc, plain)
    jsonout.render(doc, shared, shared=("stack", "created_by"))
    assert shared.getvalue() == plain.getvalue()
    back = json.loads(shared.getvalue())
    assert back["tasks"][1]["stack"] == stack and back["tasks"][1]["name"] == tricky[1]
    assert back["tasks"][3]["name"] == "\ufffd lone"


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


# -- tables that fit the terminal --------------------------------------------------------------
WIDTHS = (80, 120)


def table_text(width: int, draw: Callable[[Console], None]) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    draw(console)
    return console.file.getvalue()  # type: ignore[attr-defined, no-any-return]


def assert_fits(text: str, width: int) -> None:
    wide = [line for line in text.splitlines() if cell_len(line) > width]
    assert not wide, f"lines wider than {width}: {wide}"


def assert_whole(text: str, *pieces: str) -> None:
    """Each piece on one line of ``text``, uncut."""
    cut = [p for p in pieces if p not in text]
    assert not cut, f"cut or missing: {cut}\n{text}"


def frame_words(frame: Frame) -> tuple[str, str]:
    """What a table must keep of a frame: the file's name with the line, and the function."""
    return f"{frame.file.rsplit('/', 1)[-1]}:{frame.line}", frame.function


def user_frame_of(stack: tuple[Frame, ...]) -> Frame:
    return next(f for f in stack if "/asyncio/" not in f.file)


def task_words(snap: TaskSnapshot) -> list[str]:
    out: list[str] = []
    for t in snap.tasks:
        out += [*frame_words(user_frame_of(t.stack)), t.coro] + ([] if snap.grouped else [t.name])
        if t.wait.primitive is not None:
            out += [t.wait.detail, *t.wait.primitive.names]
        if t.created_by is not None:
            out += [t.created_by.function, f"{t.created_by.file.rsplit('/', 1)[-1]}:{t.created_by.line}"]
    return out


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("debug", [1, 2])
def test_task_tables_fit_and_keep_every_place_function_and_label_whole(width: int, debug: int) -> None:
    view = task_view(shop_tasks(), TaskQuery(debug=debug))
    text = table_text(width, lambda c: tasks_table.render(view, c, cwd=CWD))
    check_golden(f"tasks_table_debug{debug}_{width}.txt", text)
    assert_fits(text, width)
    assert_whole(text, *task_words(view))
    # the two transfers wait on locks their frames call "second"; the other name is an alias
    assert_whole(text, "second (also: first)")
    # the creators nobody recorded: one marker each, explained once under the table
    assert text.count("?¹") == 2 and "not recorded" not in text.split("?¹")[1].split("\n")[0]
    assert text.count("¹ creator not recorded: made before diag started, or by asyncio.Task() directly") == 1


def test_a_long_path_loses_directories_from_the_left_never_its_name_or_line() -> None:
    text = table_text(80, lambda c: tasks_table.render(task_view(shop_tasks(), TaskQuery(debug=1)), c, cwd=CWD))
    (line,) = [ln for ln in text.splitlines() if "batching_exporter.py:4471" in ln]
    assert "…/" in line and "/opt/vendor" not in line
    wide = table_text(400, lambda c: tasks_table.render(task_view(shop_tasks(), TaskQuery(debug=1)), c, cwd=CWD))
    assert f"{FLUSH.file}:{FLUSH.line}" in wide


def test_a_wide_terminal_keeps_every_column() -> None:
    text = table_text(400, lambda c: tasks_table.render(task_view(shop_tasks(), TaskQuery(debug=2)), c, cwd=CWD))
    header_line = next(line for line in text.splitlines() if "Waits on" in line)
    for col in ("Task", "Name", "State", "Waits on", "Waited", "Coroutine", "Where", "Created by"):
        assert col in header_line
    assert STOCK.id in text  # ids go only when the width runs short


@pytest.mark.parametrize("width", WIDTHS)
def test_sync_tables_fit_and_list_holders_compactly(width: int) -> None:
    snap = shop_sync()
    text = table_text(width, lambda c: sync_render.render_table(snap, c, cwd=CWD))
    check_golden(f"sync_table_{width}.txt", text)
    assert_fits(text, width)
    for state in snap.primitives:
        assert_whole(text, *state.primitive.names)
    # three holders of the stock semaphore: counted, the leaked one shown
    assert_whole(text, "task 90 LEAKED", "(+2 more holders)", *frame_words(RESERVE))
    assert "task 91" not in text
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert len(rows) <= 4 * len(snap.primitives)


def test_a_live_holder_whose_taker_left_past_its_release_is_shown_leaked() -> None:
    snap = shop_sync()
    (stock,) = [s for s in snap.primitives if s.primitive.id == STOCK.id]
    live = tuple(replace(h, task_alive=True, task_state="waiting", skipped_release=(40,)) if h.task_id == 90 else h
                 for h in stock.holders)
    left = replace(snap, primitives=tuple(replace(s, holders=live) if s is stock else s for s in snap.primitives))
    text = table_text(200, lambda c: sync_render.render_table(left, c, cwd=CWD))
    lines = "\n".join(line for s in left.primitives for line in sync_render.state_lines(s, CWD))
    assert "task 90 waiting LEAKED" in text
    assert "task 90 (waiting; LEAKED: its taker left past its release)" in lines
    handed = replace(left, primitives=tuple(replace(s, handoff_seconds=0.4) if s.primitive.id == STOCK.id else s
                                            for s in left.primitives))
    assert "LEAKED" not in table_text(200, lambda c: sync_render.render_table(handed, c, cwd=CWD))


def test_a_finished_holder_of_permits_handed_on_is_not_called_leaked() -> None:
    snap = shop_sync()
    (stock,) = [s for s in snap.primitives if s.primitive.id == STOCK.id]
    handed = replace(snap, primitives=tuple(replace(s, handoff_seconds=0.4) if s is stock else s
                                            for s in snap.primitives))
    for shown in (snap, handed):
        text = table_text(200, lambda c: sync_render.render_table(shown, c, cwd=CWD))
        lines = "\n".join(line for s in shown.primitives for line in sync_render.state_lines(s, CWD))
        if shown is snap:
            assert "task 90 LEAKED" in text and "task 90 (FINISHED: leaked)" in lines
        else:
            assert "LEAKED" not in text and "task 90 finished" in text
            assert "task 90 (finished: other code releases it)" in lines and "leaked" not in lines.lower()
            assert "(handed on: last released by other code than its holder's 0.4s ago)" in lines


@pytest.mark.parametrize("width", WIDTHS)
def test_leak_tables_fit_and_keep_the_programs_frames_whole(width: int) -> None:
    report = leak_report(shop_sync(), LeakOptions(min_wait=5.0))
    assert report.findings
    text = table_text(width, lambda c: leaks_render.render_table(report, c, cwd=CWD))
    check_golden(f"leaks_table_{width}.txt", text)
    assert_fits(text, width)
    for f in report.findings:
        for frame in leaks_render.site_frames(f, CWD):
            assert_whole(text, *frame_words(frame))
        assert_whole(text, f.kind.upper() if width < 100 else f.kind)


def test_the_piped_text_keeps_full_paths_and_every_holder() -> None:
    out = io.StringIO()
    sync_render.render_text(shop_sync(), out, cwd=CWD)
    text = out.getvalue()
    assert "task 91" in text and "myapp/services/shop/orders.py:123" in text
    assert "lock second (also: first) 0x7ff9efa3d450: locked" in text


# -- counts and plurals --------------------------------------------------------------------------
def test_plural_and_agreement() -> None:
    assert wording.plural(1, "task") == "1 task" and wording.plural(2, "task") == "2 tasks"
    assert wording.plural(0, "task") == "0 tasks"
    assert wording.plural(1, "process", "processes") == "1 process"
    assert wording.plural(3, "process", "processes") == "3 processes"
    assert wording.agree(1, "waits", "wait") == "waits" and wording.agree(2, "waits", "wait") == "wait"


def test_other_names_read_the_same_in_task_text_and_sync_tables() -> None:
    assert wording.also_named(["first"]) == "(also: first)"
    assert wording.also_named(["first", "pool"]) == "(also: first, pool)"
    state = next(s for s in shop_sync().primitives if s.primitive.aliases)
    assert formatting.primitive_name(state.primitive) == "first (also: second)"
    assert [p.text for p in sync_render.primitive_pieces(state)][1:] == ["first", "(also: second)"]


def test_headers_count_tasks_and_groups_in_the_singular_and_the_plural() -> None:
    one = tasks_text.header(task_view(snapshot(task(1)), TaskQuery(debug=1)))[0]
    assert "1 pending task, 1 matching in 1 group," in one
    many = tasks_text.header(task_view(fetchers_and_worker(), TaskQuery(debug=1)))[0]
    assert "4 pending tasks, 4 matching in 2 groups," in many


def test_a_wait_on_one_task_or_several() -> None:
    assert formatting.wait_reason(Wait("gather", "gather", tasks=(5,))) == "gather (task 5)"
    assert formatting.wait_reason(Wait("gather", "gather", tasks=(5, 6))) == "gather (tasks 5, 6)"


def test_sync_text_counts_its_waiters_and_primitives() -> None:
    out = io.StringIO()
    sync_render.render_text(shop_sync(), out, cwd=CWD)
    text = out.getvalue()
    assert "4 live primitives" in text
    assert "waiting: 1 task (300)" in text and "waiting: 12 tasks (100, 101, 102" in text
    assert "tasks 1" not in text.replace("tasks (1", "")  # never "waiting: tasks 13"


def test_findings_agree_with_their_counts() -> None:
    snap = shop_sync()
    permit = next(f for f in leak_report(snap, LeakOptions(min_wait=5.0)).findings if f.kind == "leaked_permit")
    assert "12 tasks wait for it" in permit.evidence and permit.title.startswith("1 permit of ")
    stock = snap.primitives[0]
    alone = replace(snap, primitives=(replace(stock, waiting_tasks=(100,)),) + snap.primitives[1:])
    permit = next(f for f in leak_report(alone, LeakOptions(min_wait=5.0)).findings if f.kind == "leaked_permit")
    assert "1 task waits for it" in permit.evidence and "1 tasks" not in permit.evidence


# -- a primitive with several names ---------------------------------------------------------------
def test_a_primitive_is_named_as_the_waiting_frame_names_it_with_its_other_names_after() -> None:
    lock = Primitive("lock", "0x7f01", "first", locked=True, waiters=1, aliases=("second",))
    as_first = Wait("lock", "Lock.acquire", lock, 3.0, frame_label="first")
    as_second = Wait("lock", "Lock.acquire", lock, 3.0, frame_label="second")
    assert formatting.wait_reason(as_first) == "Lock.acquire <first (also: second) 0x7f01 locked waiters=1>"
    assert formatting.wait_reason(as_second) == "Lock.acquire <second (also: first) 0x7f01 locked waiters=1>"
    unnamed = Wait("lock", "Lock.acquire", replace(lock, aliases=()), 3.0)
    assert formatting.wait_reason(unnamed) == "Lock.acquire <first 0x7f01 locked waiters=1>"
    assert lock.names == ("first", "second") and Primitive("lock", "0x1").names == ()


def test_names_round_trip_through_json_and_older_documents_default_them() -> None:
    snap = shop_tasks()
    assert TaskSnapshot.from_json(snap.to_json()) == snap
    data = json.loads(snap.to_json())
    for t in data["tasks"]:  # a document from before the names: neither field
        t["wait"].pop("frame_label", None)
        if "primitive" in t["wait"]:
            t["wait"]["primitive"].pop("aliases", None)
    old = TaskSnapshot.from_dict(data)
    transfer = next(t for t in old.tasks if t.id == 201)
    assert transfer.wait.frame_label == "" and transfer.wait.primitive is not None
    assert transfer.wait.primitive.aliases == () and transfer.wait.primitive.label == "second"
    sync = shop_sync()
    assert type(sync).from_json(sync.to_json()) == sync


def test_a_deadlock_names_each_lock_as_the_task_waiting_for_it_does() -> None:
    report = leak_report(shop_sync(), LeakOptions(min_wait=5.0))
    (deadlock,) = [f for f in report.findings if f.kind == "deadlock"]
    assert "task 201 waits for second (also: first) 0x7ff9efa3d450 held by task 202" in deadlock.evidence
    assert "task 202 waits for second (also: first) 0x7ff9efa3d010 held by task 201" in deadlock.evidence


def test_the_filter_matches_every_name_of_a_primitive() -> None:
    view = task_view(shop_tasks(), TaskQuery(debug=2, pattern="^first$"))
    assert {t.id for t in view.tasks} == {201, 202}


def test_a_name_every_frame_shares_stays_first_and_a_local_becomes_an_alias() -> None:
    queue = Primitive("queue", "0x7f02", "[app.outbox]", size=0, maxsize=1, getters=1, aliases=("queue",))
    wait = Wait("queue_get", "Queue.get", queue, 2.0, frame_label="queue")
    assert formatting.wait_reason(wait) == "Queue.get <[app.outbox] (also: queue) 0x7f02 size=0/1 getters=1>"
    pool = Primitive("semaphore", "0x7f03", "Client.pool", value=0, waiters=1, aliases=("sem",))
    assert pool.named_by("sem") == ("Client.pool", ("sem",))
    assert pool.named_by("Other.pool") == ("Other.pool", ("Client.pool", "sem"))
    assert Primitive("lock", "0x7f04").named_by() == ("lock", ())


def test_a_path_is_shortened_at_a_directory_and_keeps_its_name_and_line() -> None:
    where = "myapp/services/shop/orders.py:123"
    assert fit.shortened_path(where, 80) == where
    assert fit.shortened_path(where, 22) == "…/shop/orders.py:123"
    assert fit.shortened_path(where, 5) == "…/orders.py:123"
    assert fit.shortened_path("orders.py:123", 5) == "orders.py:123"


@pytest.mark.parametrize("width", [40, 60])
def test_a_terminal_too_narrow_for_any_layout_still_gets_no_line_wider_than_itself(width: int) -> None:
    text = table_text(width, lambda c: tasks_table.render(task_view(shop_tasks(), TaskQuery(debug=2)), c, cwd=CWD))
    assert_fits(text, width)
    text = table_text(width, lambda c: sync_render.render_table(shop_sync(), c, cwd=CWD))
    assert_fits(text, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_several_processes_tables_fit_too(width: int) -> None:
    sync = shop_sync()
    pid = replace(sync.process, pid=5152)
    other = replace(sync, process=pid, tasks=replace(sync.tasks, process=pid))
    syncs = [TargetResult(Target("http://a"), "ok", sync), TargetResult(Target("http://b"), "ok", other)]
    for debug in (1, 2):
        tasks = [TargetResult(r.target, "ok", task_view(r.value.tasks, TaskQuery(debug=debug))) for r in syncs
                 if r.value is not None]
        merged = merge_tasks(tasks, limit=None)
        text = table_text(width, lambda c: many_tasks.render_table(merged, c, cwd=CWD))
        assert_fits(text, width)
        # groups of two processes name no one primitive ("on 2 distinct semaphores"): places and coroutines
        for t in (g.task for g in merged.groups):
            assert_whole(text, *frame_words(user_frame_of(t.stack)), t.coro, *([] if merged.grouped else [t.name]))
    text = table_text(width, lambda c: many_sync.render_table(syncs, merge_primitives(syncs, False), c, cwd=CWD))
    assert_fits(text, width)
    assert_whole(text, "5151", "5152", *[n for s in sync.primitives for n in s.primitive.names])
    reports = [TargetResult(r.target, "ok", leak_report(r.value, LeakOptions(min_wait=5.0))) for r in syncs
               if r.value is not None]
    text = table_text(width, lambda c: many_leaks.render_table(reports, merge_findings(reports), c, cwd=CWD))
    assert_fits(text, width)
    assert_whole(text, *frame_words(TRANSFER_A), *frame_words(RESERVE))

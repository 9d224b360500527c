"""What a profile's reader is told, on hand-built profiles: percentages never pass
100 % (or the header says what they are of), a hint when the loop's own frames lead,
and what a negative difference means."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

from diag import loop_frames
from diag.analysis.profile_stats import ProfileQuery, loop_frame, loop_hint, profile_view
from diag.collect.profiler import LoopThread, _Sampler
from diag.model.profile_snapshot import FunctionStat, ProfileSnapshot, SampleFrame, SampleStack
from diag.render import profile_text
from diag.model.task_snapshot import ProcessInfo
from tests.support.cli import run_diag

PROC = ProcessInfo(42, ("app.py",), "3.11.7", "0.1.0")
ASYNCIO = "/usr/lib/python3.11/asyncio"


def wall_snap() -> ProfileSnapshot:
    """yappi's wall clock on a loop where a coroutine blocks in time.sleep and 40 tasks
    await asyncio.sleep: sleep's own time (its awaits) is more than the window."""
    funcs = (
        FunctionStat("sleep", f"{ASYNCIO}/tasks.py", 637, 80, 80, 8.0, 8.0, coroutine=True),
        FunctionStat("_run", f"{ASYNCIO}/events.py", 78, 240, 240, 0.6, 1.5),
        FunctionStat("OrderService.metrics_flusher", "/srv/app.py", 12, 0, 0, 0.0, 0.0, coroutine=True),
        FunctionStat("crunch", "/srv/app.py", 3, 9, 9, 0.3, 0.3),
    )
    return ProfileSnapshot(1.0e9, PROC, "yappi", "wall", 5.0, 5.0, "MainThread", funcs)


def sample_snap(*, idle: int = 70) -> ProfileSnapshot:
    frames = (SampleFrame("main", "/srv/app.py", 1), SampleFrame("OrderService.metrics_flusher", "/srv/app.py", 14),
              SampleFrame("EpollSelector.select", "/usr/lib/python3.11/selectors.py", 468))
    stacks = (SampleStack((0, 2), idle, -1), SampleStack((0, 1), 100 - idle, -1))
    return ProfileSnapshot(1.0e9, PROC, "sample", "wall", 1.0, 1.0, "MainThread", frames=frames, stacks=stacks,
                           samples=100, interval=0.01)


def text(view: object) -> str:
    out = io.StringIO()
    profile_text.render(view, out)  # type: ignore[arg-type]
    return out.getvalue()


def test_no_percentage_passes_100_and_the_header_says_which_rows_have_none() -> None:
    snap = wall_snap()
    rendered = text(profile_view(snap, ProfileQuery()))
    rows = {line.split()[-1]: line.split() for line in rendered.splitlines()
            if len(line.split()) == 8 and line.split()[0].isdigit()}
    # asyncio.sleep's own time (8 s of awaits in a 5 s window) and the flusher are async defs
    assert rows["sleep"][2] == "-" and rows["sleep"][4] == "-"
    assert rows["OrderService.metrics_flusher"][2] == "-"
    assert rows["crunch"][2:5] == ["6.0%", "0.3000", "6.0%"]  # of the 5 s window
    assert rows["_run"][2] == "12.0%" and rows["_run"][4] == "30.0%"
    shares = [float(cells[i].rstrip("%")) for cells in rows.values() for i in (2, 4) if cells[i] != "-"]
    assert shares and max(shares) <= 100.0
    assert "own % and total % are of the 5.0s window; rows marked - have none" in rendered
    assert "include its awaits" in rendered


def test_percentages_of_the_window_need_no_explanation() -> None:
    cpu = ProfileSnapshot(1.0e9, PROC, "yappi", "cpu", 5.0, 5.0, "MainThread",
                          (FunctionStat("crunch", "/srv/app.py", 3, 9, 9, 0.3, 0.3),
                           FunctionStat("handler", "/srv/app.py", 20, 9, 9, 0.1, 0.4, coroutine=True)))
    for snap in (cpu, sample_snap()):
        view = profile_view(snap, ProfileQuery())
        assert all(view.shared)
        assert view.total_seconds == (5.0 if snap is cpu else 1.0)
        assert "rows marked - have none" not in text(view)


def test_a_hint_when_the_loop_leads_pointing_to_what_shows_the_code() -> None:
    wall = loop_hint(profile_view(wall_snap(), ProfileQuery()))
    assert wall is not None and "asyncio.sleep" in wall and "--mode sample" in wall
    assert "coroutine that made it" in wall
    idle = loop_hint(profile_view(sample_snap(), ProfileQuery()))
    assert idle is not None and "waited for events (EpollSelector.select) 70% of the window" in idle
    assert loop_hint(profile_view(sample_snap(idle=30), ProfileQuery())) is None  # the program's code leads
    assert loop_hint(profile_view(wall_snap(), ProfileQuery(pattern="app.py"))) is None
    assert loop_hint(profile_view(wall_snap(), ProfileQuery(), base=wall_snap())) is None


def diff_pair() -> tuple[ProfileSnapshot, ProfileSnapshot]:
    before = ProfileSnapshot(1.0e9, PROC, "yappi", "cpu", 5.0, 5.0, "MainThread",
                             (FunctionStat("crunch", "/srv/app.py", 3, 10, 10, 1.0, 1.0),
                              FunctionStat("gone", "/srv/app.py", 9, 4, 4, 0.2, 0.2)))
    after = ProfileSnapshot(1.0e9 + 60, PROC, "yappi", "cpu", 5.0, 5.0, "MainThread",
                            (FunctionStat("crunch", "/srv/app.py", 3, 20, 20, 1.5, 1.5),))
    return after, before


def test_a_difference_says_what_negative_means_and_per_call_is_a_change_per_call() -> None:
    after, before = diff_pair()
    view = profile_view(after, ProfileQuery(), base=before)
    rendered = text(view)
    assert "difference: this profile minus the base" in rendered
    assert "negative: less in this profile than in the base" in rendered
    row = next(line.split() for line in rendered.splitlines() if line.endswith("crunch"))
    # 20 calls of 75 ms against 10 of 100 ms: +10 calls, +0.5 s, each call 25 ms cheaper
    assert row[:2] == ["10", "0.5000"] and row[5] == "-25.0000", row
    gone = next(line.split() for line in rendered.splitlines() if line.endswith("gone"))
    assert gone[:2] == ["-4", "-0.2000"] and gone[5] == "-", gone  # no calls in this profile: no per-call change


def test_the_cli_prints_the_legend_for_saved_profiles(tmp_path: Path) -> None:
    after, before = diff_pair()
    (tmp_path / "a.json").write_text(after.to_json())
    (tmp_path / "b.json").write_text(before.to_json())
    proc = run_diag("profile", str(tmp_path / "a.json"), "--base", str(tmp_path / "b.json"), "--format", "text")
    assert proc.returncode == 0, proc.stderr
    assert "negative: less in this profile than in the base" in proc.stdout
    assert "-25.0000" in proc.stdout
    table = run_diag("profile", str(tmp_path / "a.json"), "--base", str(tmp_path / "b.json"), "--format", "table")
    assert "negative: less in this profile than in the base" in table.stdout
    wall = tmp_path / "wall.json"
    wall.write_text(json.dumps(wall_snap().to_dict()))
    hinted = run_diag("profile", str(wall), "--format", "text")
    assert hinted.returncode == 0 and "hint:" not in hinted.stdout
    assert "--mode sample" in hinted.stderr.splitlines()[0]


def test_a_difference_sorted_per_call_follows_the_per_call_column() -> None:
    before = ProfileSnapshot(1.0e9, PROC, "yappi", "cpu", 5.0, 5.0, "MainThread",
                             (FunctionStat("steady", "/srv/app.py", 3, 10, 10, 1.0, 1.0),
                              FunctionStat("slower", "/srv/app.py", 9, 10, 10, 0.1, 0.1)))
    after = ProfileSnapshot(1.0e9 + 60, PROC, "yappi", "cpu", 5.0, 5.0, "MainThread",
                            (FunctionStat("steady", "/srv/app.py", 3, 30, 30, 3.0, 3.0),   # 100 ms a call, as before
                             FunctionStat("slower", "/srv/app.py", 9, 10, 10, 0.5, 0.5)))  # 10 ms -> 50 ms a call
    view = profile_view(after, ProfileQuery(sort="percall"), base=before)
    assert [f.name for f in view.functions] == ["slower", "steady"]


@pytest.mark.parametrize("file, function, kind", [
    ("/usr/lib/python3.11/selectors.py", "EpollSelector.select", loop_frames.IDLE),
    (f"{ASYNCIO}/runners.py", "Runner.run", loop_frames.IDLE),
    ("/venv/site-packages/uvloop/__init__.py", "run", loop_frames.IDLE),
    (f"{ASYNCIO}/tasks.py", "sleep", loop_frames.IDLE),
    (f"{ASYNCIO}/base_events.py", "BaseEventLoop._run_once", loop_frames.TURN),
    (f"{ASYNCIO}/base_events.py", "BaseEventLoop.run_forever", loop_frames.TURN),
    (f"{ASYNCIO}/base_events.py", "BaseEventLoop.run_until_complete", loop_frames.TURN),
    (f"{ASYNCIO}/events.py", "Handle._run", loop_frames.CALLBACK),
    (f"{ASYNCIO}/base_events.py", "BaseEventLoop.create_task", None),
    (f"{ASYNCIO}/tasks.py", "gather", None),
    ("/srv/app.py", "select", None),
])
def test_the_sampler_and_the_analysis_read_the_loops_frames_alike(file: str, function: str, kind: str | None) -> None:
    assert loop_frames.loop_frame(file, function) == kind
    # the analysis: the loop's wait is "idle", its turn and its callbacks' handle "scheduling"
    stat = FunctionStat(function, file, 1, 1, 1, 0.1, 0.1)
    assert loop_frame(stat) == {loop_frames.IDLE: "idle", None: None}.get(kind, "scheduling")
    # the sampler: a late sample is moved off the loop's wait and its turn, never off a callback
    sampler = _Sampler(LoopThread(threading.get_ident(), "MainThread", None))
    sampler.frames.append(SampleFrame(function, file, 1))
    assert sampler._in_loop(len(sampler.frames) - 1) is (kind in (loop_frames.IDLE, loop_frames.TURN))

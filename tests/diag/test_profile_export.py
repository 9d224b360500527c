"""Every export format from hand-built profiles: pstats loads it, speedscope matches its
schema, folded stacks parse, callgrind is well formed; and the pure analysis around them."""

from __future__ import annotations

import asyncio
import io
import json
import marshal
import pstats
import threading
import time
from pathlib import Path

import pytest

from diag.analysis.profile_stats import ProfileQuery, function_stats, profile_view, task_rows
from diag.collect import profiler
from diag.errors import TargetError, UsageError
from diag.model.profile_snapshot import (CallEdge, FunctionStat, ProfileSnapshot, SampleFrame, SampleStack, TaskTotal)
from diag.render import profile_export, profile_text
from diag.model.task_snapshot import ProcessInfo

PROC = ProcessInfo(42, ("app.py",), "3.11.7", "0.1.0")


def yappi_snap() -> ProfileSnapshot:
    funcs = (
        FunctionStat("handler", "/srv/app.py", 10, 4, 4, 0.01, 1.0, coroutine=True),
        FunctionStat("crunch", "/srv/work.py", 20, 4, 4, 0.3, 0.99),
        FunctionStat("_mix", "/srv/work.py", 30, 1000, 1000, 0.69, 0.69),
    )
    edges = (CallEdge(0, 1, 4, 4, 0.3, 0.99), CallEdge(1, 2, 1000, 1000, 0.69, 0.69))
    return ProfileSnapshot(1.0e9, PROC, "yappi", "cpu", 2.0, 2.0, "MainThread", funcs, edges)


def sample_snap() -> ProfileSnapshot:
    frames = (SampleFrame("main", "/srv/app.py", 1), SampleFrame("handler", "/srv/app.py", 12),
              SampleFrame("crunch", "/srv/work.py", 22), SampleFrame("_mix", "/srv/work.py", 31),
              SampleFrame("select", "/usr/lib/python3.11/selectors.py", 468))
    stacks = (SampleStack((0, 1, 2, 3), 60, 0), SampleStack((0, 1, 2), 20, 0), SampleStack((0, 4), 20, -1))
    return ProfileSnapshot(1.0e9, PROC, "sample", "wall", 1.0, 1.0, "MainThread", frames=frames, stacks=stacks,
                           tasks=(TaskTotal("handler", 80, 3),), samples=100, interval=0.01)


def test_pstat_loads_with_pstats(tmp_path: Path) -> None:
    path = tmp_path / "p.pstat"
    with open(path, "wb") as fh:
        profile_export.write(yappi_snap(), "pstat", fh)
    stats = pstats.Stats(str(path))
    entry = stats.stats[("/srv/work.py", 30, "_mix")]  # type: ignore[attr-defined]
    assert entry[:4] == (1000, 1000, 0.69, 0.69)
    assert ("/srv/work.py", 20, "crunch") in entry[4]
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(1)
    assert "_mix" in out.getvalue()


def test_callgrind_is_well_formed() -> None:
    text = profile_export.callgrind_text(yappi_snap())
    lines = text.splitlines()
    assert lines[0] == "# callgrind format" and "events: Microseconds" in lines
    assert "cfn=(2) crunch" in lines and "fn=(2)" in lines and "cfn=(3) _mix" in lines  # names compressed after first use
    assert "calls=1000 30" in lines
    i = lines.index("calls=1000 30")
    assert lines[i + 1] == "20 690000"  # inclusive cost of the call, at the caller's line


def test_speedscope_matches_the_schema() -> None:
    doc = json.loads(json.dumps(profile_export.speedscope_dict(sample_snap())))
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = doc["shared"]["frames"]
    assert all(isinstance(f["name"], str) for f in frames)
    (prof,) = doc["profiles"]
    assert prof["type"] == "sampled" and prof["unit"] == "seconds"
    for key, kind in (("name", str), ("startValue", (int, float)), ("endValue", (int, float)),
                      ("samples", list), ("weights", list)):
        assert isinstance(prof[key], kind), key
    assert len(prof["samples"]) == len(prof["weights"])
    assert all(0 <= i < len(frames) for s in prof["samples"] for i in s)
    assert prof["endValue"] == pytest.approx(sum(prof["weights"])) == pytest.approx(1.0)
    assert [frames[i]["name"] for i in prof["samples"][0]] == ["main", "handler", "crunch", "_mix"]


def test_folded_stacks_parse() -> None:
    lines = profile_export.collapsed_lines(sample_snap())
    parsed = {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        parsed[tuple(f.split(" (")[0] for f in stack.split(";"))] = int(count)
    assert parsed[("main", "handler", "crunch", "_mix")] == 60
    assert sum(parsed.values()) == 100
    by_task = profile_export.collapsed_lines(sample_snap(), by_task=True)
    assert by_task[0].startswith("task handler;main")


def test_formats_need_the_right_mode() -> None:
    with pytest.raises(UsageError, match="--mode sample"):
        profile_export.check_format("collapsed", "yappi")
    with pytest.raises(UsageError, match="--mode yappi"):
        profile_export.check_format("pstat", "sample")
    assert profile_export.format_for_path("x/out.speedscope.json") == "speedscope"
    assert profile_export.format_for_path("callgrind.out.123") == "callgrind"
    with pytest.raises(UsageError):
        profile_export.format_for_path("out.txt")


def test_snapshot_round_trips_and_rejects_bad_indices() -> None:
    for snap in (yappi_snap(), sample_snap()):
        assert ProfileSnapshot.from_json(snap.to_json()) == snap
    data = yappi_snap().to_dict()
    data["edges"][0]["callee"] = 99
    with pytest.raises(TargetError, match="index"):
        ProfileSnapshot.from_dict(data)
    data = sample_snap().to_dict()
    data["future_field"] = 1
    del data["interval"]
    assert ProfileSnapshot.from_dict(data).interval == 0.0


def test_sample_functions_sort_filter_diff_and_tasks() -> None:
    funcs = {f.name: f for f in function_stats(sample_snap())}
    assert funcs["_mix"].own_seconds == pytest.approx(0.6)
    assert funcs["crunch"].total_seconds == pytest.approx(0.8)
    view = profile_view(sample_snap(), ProfileQuery(sort="total", top=2, pattern="work"))
    assert [f.name for f in view.functions] == ["crunch", "_mix"] and view.matched == 2
    rows = task_rows(sample_snap())
    assert (rows[0].coro, rows[0].tasks, rows[0].share) == ("handler", 3, 0.8)
    diff = profile_view(yappi_snap(), ProfileQuery(sort="own"), base=yappi_snap())
    assert all(f.own_seconds == 0 for f in diff.functions)
    out = io.StringIO()
    profile_text.render(profile_view(yappi_snap(), ProfileQuery(sort="percall", top=1)), out)
    assert "handler" in out.getvalue().splitlines()[-1]  # 1.0s over 4 calls
    with pytest.raises(UsageError):
        ProfileQuery(sort="nope").validate()


def test_sampler_charges_samples_to_the_running_task_and_stops() -> None:
    """In-process: the sampler thread reads this loop's thread and ends with its window."""

    def busy_cpu(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sum(range(1000))

    async def busy_task() -> None:
        busy_cpu(0.4)

    async def main() -> ProfileSnapshot:
        loop = asyncio.get_running_loop()
        target = profiler.LoopThread(threading.get_ident(), "MainThread", loop)
        result: list[ProfileSnapshot] = []
        t = threading.Thread(target=lambda: result.append(
            profiler.take_profile(profiler.ProfileOptions(seconds=0.3, mode="sample"), target)))
        t.start()
        await asyncio.create_task(busy_task())
        await asyncio.to_thread(t.join)
        return result[0]

    snap = asyncio.run(main())
    assert snap.samples > 5
    busiest = max(snap.tasks, key=lambda t: t.samples)
    assert busiest.coro == "test_sampler_charges_samples_to_the_running_task_and_stops.<locals>.busy_task"
    names = {snap.frames[i].name.rsplit(".", 1)[-1] for s in snap.stacks for i in s.frames}
    assert "busy_cpu" in names
    assert profiler.status()["busy"] is False

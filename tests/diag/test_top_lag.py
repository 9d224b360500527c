"""``diag top``'s worst loop lag since the last refresh: from the agent's per-second
lag peaks on hand-built samples, and on a real program that blocks its loop 0.2 s
about once a second, watched by ``diag top`` as a subprocess."""

from __future__ import annotations

import re
import time

from rich.console import Console

from diag.analysis.top_summary import summarize, worst_lag
from diag.render import top_view
from diag.model.task_snapshot import LoopInfo
from tests.support.cli import run_diag
from tests.support.programs import DiagRun

from .test_top import sample


def loop(lag: float, peaks: tuple[tuple[float, float], ...] = ()) -> LoopInfo:
    return LoopInfo("0x7f00l", 1, "MainThread", True, lag, lag_peaks=peaks)


def test_worst_lag_counts_only_peaks_after_the_previous_sample() -> None:
    before = sample(at=0.0, loops=(loop(0.0001),))
    since = before.sync.taken_at
    peaks = ((since - 0.5, 0.300), (since + 0.4, 0.182), (since + 0.9, 0.004))
    now = sample(at=1.0, loops=(loop(0.0001, peaks),))
    summary = summarize("app:1", now, before)
    assert summary.worst_lags == (0.182,)  # the 0.3 s peak came before the previous refresh
    assert summarize("app:1", now).worst_lags == (None,)  # the first frame has no "since"
    assert worst_lag(loop(0.0002), since) == 0.0002  # no peak kept: the latest beat is the worst
    console = Console(width=120, record=True, color_system=None)
    console.print(top_view.render(summary, interval=1.0))
    assert "loop 0x7f00l on MainThread: turning, lag 0.1ms, worst 182.0ms since the last refresh" in console.export_text()


def test_loop_info_keeps_its_lag_peaks_through_json() -> None:
    info = loop(0.001, ((1.8e9, 0.2), (1.8e9 + 1, 0.05)))
    assert LoopInfo.from_dict(info.to_dict()) == info
    assert LoopInfo.from_dict({k: v for k, v in info.to_dict().items() if k != "lag_peaks"}).lag_peaks == ()


BLOCKS_NOW_AND_THEN = """
import asyncio, time

async def blocker():
    while True:
        await asyncio.sleep(0.93)  # not a multiple of the heartbeat's 0.1 s
        time.sleep(0.2)  # blocks the loop

asyncio.run(blocker())
"""

STALLED = re.compile(r"^loop \S+ on MainThread: STALLED for \d+\.\ds at \S+:7 blocker", re.M)
WORST = re.compile(r"^loop \S+ on MainThread: turning, lag (\d+\.\d)ms, worst (\d+\.\d)ms since the last refresh", re.M)


def test_top_shows_the_worst_lag_of_a_loop_blocked_now_and_then() -> None:
    with DiagRun(BLOCKS_NOW_AND_THEN) as run:
        worst: list[float] = []
        deadline = time.monotonic() + 60
        # The heartbeat measures a block from the moment it was sent, up to 0.1 s into
        # it; the block's phase against the heartbeat moves from one block to the next.
        while not any(w >= 150.0 for w in worst):
            assert time.monotonic() < deadline, worst
            proc = run_diag("top", run.url, "--iterations", "4", "--interval", "1", timeout=60)
            assert proc.returncode == 0, proc.stderr
            frames = re.split(r"^diag top ", proc.stdout, flags=re.M)[1:]
            assert len(frames) == 4, proc.stdout
            # every frame after the first has a worst lag; one drawn during a block says STALLED instead
            found = [WORST.search(f) for f in frames[1:]]
            assert all(m or STALLED.search(f) for m, f in zip(found, frames[1:])), proc.stdout
            found = [m.groups() for m in found if m]
            worst += [float(w) for _, w in found]
        assert max(worst) < 1000.0, worst  # a 0.2 s block, not the time since the agent started

"""Benchmarks for ``diag tasks``: python bench/tasks_bench.py [--tasks N]

Measured side by side in one run, reported as ratios because these machines are noisy:
1. snapshot: the agent's full collection (classification, wait times, creators) of N
   pending tasks, each three coroutines deep on an Event, and its grouped answer from
   sketches (one task a group described), against a plain walk of the same tasks'
   cr_await chains grouped by stack;
2. stall: the longest the target's loop went without turning while the agent answered
   a grouped dump on its own thread (a 1 ms ticker measures it);
3. end to end: ``diag tasks URL`` (CLI start-up, HTTP, grouping, rendering) against a
   process holding N tasks, and the longest its loop went without turning while the
   agent answered that and ``--debug 2 --format json`` (every task in full);
4. factory: create_task + run of trivial tasks with and without the agent's task
   factory, rounds interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diag.agent.endpoints import Endpoints  # noqa: E402
from diag.collect.loop_watch import LoopWatch, iter_all_tasks  # noqa: E402
from diag.analysis.task_groups import TaskQuery, grouped_view  # noqa: E402
from diag.collect.task_collector import CollectOptions, TaskSketches, collect_tasks  # noqa: E402
from diag.model.task_snapshot import TaskSnapshot  # noqa: E402
from diag.collect.task_origins import OriginFactory, accelerated, new_factory  # noqa: E402


async def _leaf(event: asyncio.Event) -> None:
    await event.wait()


async def _middle(event: asyncio.Event) -> None:
    await _leaf(event)


async def _top(event: asyncio.Event) -> None:
    await _middle(event)


def plain_walk() -> int:
    """The baseline: follow cr_await, group by (code, line) stack; no classification."""
    groups: dict[tuple[object, ...], int] = {}
    for task in iter_all_tasks():
        coro = task.get_coro()
        key = []
        while coro is not None and hasattr(coro, "cr_frame"):
            frame = coro.cr_frame
            if frame is None:
                break
            key.append((frame.f_code, frame.f_lineno))
            coro = coro.cr_await
        groups[tuple(key)] = groups.get(tuple(key), 0) + 1
    return len(groups)


async def bench_snapshot(n: int, rounds: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    watch = LoopWatch()
    watch.add_loop(loop)
    event = asyncio.Event()
    tasks = [asyncio.create_task(_top(event)) for _ in range(n)]
    await asyncio.sleep(0.1)
    watch.sample_waits()
    walk, snap, sketched = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await asyncio.to_thread(plain_walk)
        walk.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = await asyncio.to_thread(collect_tasks, watch)
        snap.append(time.perf_counter() - t0)
        assert result.total_tasks >= n
        del result
        t0 = time.perf_counter()
        view = await asyncio.to_thread(grouped_sketches, watch)
        sketched.append(time.perf_counter() - t0)
        assert view.total_tasks >= n
    # Loop stall while the agent answers a dump on another thread (collection, grouping,
    # JSON, as GET /debug/diag/tasks does): a 1 ms ticker's worst lateness.
    worst = 0.0
    done = threading.Event()
    api = Endpoints(watch)

    def dump() -> None:
        assert api.dispatch("GET", "/debug/diag/tasks", {}).status == 200
        done.set()

    threading.Thread(target=dump).start()
    while not done.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - t0 - 0.001)
    event.set()
    await asyncio.gather(*tasks)
    return {"plain_walk_s": min(walk), "snapshot_s": min(snap), "snapshot_ratio": min(snap) / min(walk),
            "grouped_sketches_s": min(sketched), "grouped_sketches_ratio": min(sketched) / min(walk),
            "loop_stall_max_s": worst}


def grouped_sketches(watch: LoopWatch) -> TaskSnapshot:
    """What the agent does for a grouped dump of more tasks than it keeps snapshots of:
    each task read as far as its group needs, one a group described in full."""
    with TaskSketches(watch, CollectOptions()) as sketches:
        return grouped_view(sketches, sketches.describe, sketches.snapshot, TaskQuery())


HOLDER = """
import asyncio, signal, sys, time
async def leaf(e): await e.wait()
async def middle(e): await leaf(e)
async def top(e): await middle(e)
worst = 0.0
def report():  # SIGUSR1: print the loop's worst lateness since the last report
    global worst
    print(f"{worst:.4f}", flush=True)
    worst = 0.0
async def main():
    global worst
    e = asyncio.Event()
    ts = [asyncio.create_task(top(e)) for _ in range(int(sys.argv[1]))]
    await asyncio.sleep(1)  # every task has started and is waiting
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report)
    print("ready", flush=True)
    while True:  # a 1 ms ticker: how late the loop gets to run it
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - t0 - 0.001)
asyncio.run(main())
"""


def bench_end_to_end(n: int, rounds: int, walk_s: float) -> dict[str, float]:
    """``diag tasks URL`` against a process holding n tasks: the grouped view's time, and
    how late the target's loop ran while it answered the grouped view and the full JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "holder.py"
        script.write_text(textwrap.dedent(HOLDER))
        addr = Path(tmp) / "addr"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "diag", "run", "--agent-file", str(addr), "--",
                                 sys.executable, str(script), str(n)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, text=True)

        def stall_since_last() -> float:
            assert proc.stdout is not None
            os.kill(proc.pid, signal.SIGUSR1)
            return float(proc.stdout.readline())

        def cli(*args: str) -> str:
            return subprocess.run([sys.executable, "-m", "diag", "tasks", url, *args],
                                  capture_output=True, text=True, env=env, check=True).stdout

        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            url = addr.read_text().strip()
            times, stalls, full_stalls = [], [], []
            for _ in range(rounds):
                stall_since_last()
                t0 = time.perf_counter()
                out = cli("--format", "text")
                times.append(time.perf_counter() - t0)
                stalls.append(stall_since_last())
                assert f"{n} tasks @ Event.wait" in out, out
                time.sleep(0.3)  # past the agent's answer cache
                stall_since_last()
                full = json.loads(cli("--debug", "2", "--format", "json", "--limit", str(n + 10)))
                full_stalls.append(stall_since_last())
                # past the agent's 32 MB answer budget the answer keeps the first tasks and says so
                cut = any(note.startswith("cut:") for note in full.get("notes", ()))
                assert len(full["tasks"]) >= n or cut, (len(full["tasks"]), full.get("notes"))
                full_count = len(full["tasks"])
        finally:
            proc.kill()
            proc.wait()
    return {"cli_end_to_end_s": min(times), "cli_ratio_to_plain_walk": min(times) / walk_s,
            "cli_loop_stall_max_s": max(stalls), "full_json_loop_stall_max_s": max(full_stalls),
            "full_json_tasks": full_count}


async def _noop() -> None:
    pass


async def bench_factory(n: int, rounds: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()

    async def batch() -> float:
        t0 = time.perf_counter()
        for _ in range(10):
            await asyncio.gather(*[asyncio.create_task(_noop()) for _ in range(n // 10)])
        return time.perf_counter() - t0

    # Rounds interleave: no factory, the agent's factory (C when built), the Python one.
    without, with_, python = [], [], []
    for _ in range(rounds):
        loop.set_task_factory(None)
        without.append(await batch())
        loop.set_task_factory(new_factory(None))  # type: ignore[arg-type]
        with_.append(await batch())
        loop.set_task_factory(OriginFactory(None))  # type: ignore[arg-type]
        python.append(await batch())
    loop.set_task_factory(None)
    base = statistics.median(without)
    return {"create_task_us": base / n * 1e6,
            "create_task_factory_us": statistics.median(with_) / n * 1e6,
            "factory_ratio": statistics.median(with_) / base,
            "factory_is_c": float(accelerated()),
            "create_task_python_factory_us": statistics.median(python) / n * 1e6,
            "python_factory_ratio": statistics.median(python) / base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, object] = {"python": sys.version.split()[0], "tasks": args.tasks}
    results.update(asyncio.run(bench_snapshot(args.tasks, args.rounds)))
    results.update(bench_end_to_end(args.tasks, args.rounds, float(results["plain_walk_s"])))  # type: ignore[arg-type]
    results.update(asyncio.run(bench_factory(100_000, 7)))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()

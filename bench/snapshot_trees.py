"""The agent's task snapshot in two trees of diag, side by side:
python bench/snapshot_trees.py OLD_TREE NEW_TREE [--tasks N] [--rounds R]

Each round runs one child process per tree, alternating, with the same interpreter: N
pending tasks three coroutines deep on one Event, then ``collect_tasks`` three times on a
thread (as the agent runs it, the GC paused); the child prints the three times.  The
figures are the medians over every round, and the ratio new/old.  A tree is a checkout
with its C accelerator built (``git worktree add``, then ``scripts/venv.sh`` or a copy
of the built ``diag/_origins*.so``)."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import asyncio, gc, sys, time
    sys.path.insert(0, sys.argv[1])
    from diag.collect.loop_watch import LoopWatch
    from diag.collect.task_collector import CollectOptions, collect_tasks

    async def leaf(e): await e.wait()
    async def mid(e): await leaf(e)
    async def top(e): await mid(e)

    async def main(n):
        watch = LoopWatch()
        watch.add_loop(asyncio.get_running_loop())
        event = asyncio.Event()
        tasks = [asyncio.create_task(top(event)) for _ in range(n)]
        await asyncio.sleep(0.2)
        watch.sample_waits()

        def work():
            gc.disable()
            try:
                for _ in range(3):
                    t0 = time.perf_counter()
                    collect_tasks(watch, CollectOptions(exclude=frozenset()))
                    print(f"{time.perf_counter() - t0:.4f}", flush=True)
            finally:
                gc.enable()

        await asyncio.to_thread(work)
        event.set()
        await asyncio.gather(*tasks)

    asyncio.run(main(int(sys.argv[2])))
""")


def run(tree: str, tasks: int) -> list[float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, tree, str(tasks)], capture_output=True, text=True,
                          timeout=600, cwd=tree)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return [float(line) for line in proc.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {args.old: [], args.new: []}
    for _ in range(args.rounds):
        for tree in (args.old, args.new):
            times[tree].extend(run(tree, args.tasks))
    old, new = statistics.median(times[args.old]), statistics.median(times[args.new])
    print(f"{args.tasks} tasks, {args.rounds} rounds x 3 snapshots, python {sys.version.split()[0]}")
    print(f"old  {args.old}: median {old:.3f} s")
    print(f"new  {args.new}: median {new:.3f} s")
    print(f"ratio new/old: {new / old:.2f}x")


if __name__ == "__main__":
    main()

"""What making the compact rows of a full dump costs, in-process: python bench/wire_rows.py [--tasks N] [--rounds R]

``task_wire.Tables.row`` against the plain way it made every row before (each index
looked up on its own), on two kinds of 100,000 tasks, with the cyclic GC paused as the
agent pauses it for a dump:

- shared wait: stuck together (one Event, one stack, one creator), where a row takes
  the indexes of the last row with the same Wait;
- own wait: each task with a Wait of its own (sleeps of different lengths), where
  nothing can be taken again and the look-up must cost next to nothing.

Best of R rounds, the two ways alternating.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diag.model.task_snapshot import CreatedBy, Frame, TaskInfo, Wait  # noqa: E402
from diag.model.task_wire import Tables  # noqa: E402


class Plain(Tables):
    """Every index looked up on its own (the rows themselves are the same)."""

    def row(self, task: TaskInfo) -> list[Any]:
        row: list[Any] = [task.id, task.name, self.string(task.coro), self.string(task.state),
                          self.stack(task.stack), self.wait(task.wait), self.creator(task.created_by),
                          self.string(task.loop), task.wait.seconds]
        extra: dict[str, Any] = {}
        wait = task.wait
        if wait.time_left is not None:
            extra["time_left"] = wait.time_left
        if wait.deadline is not None:
            extra["deadline"] = wait.deadline
        if task.cancelling:
            extra["cancelling"] = True
        if task.main:
            extra["main"] = True
        if task.cancel_seconds is not None:
            extra["cancel_seconds"] = task.cancel_seconds
        if task.handling_cancel:
            extra["handling_cancel"] = True
        if task.count != 1 or task.ids:
            extra["count"] = task.count
            extra["ids"] = list(task.ids)
        if extra:
            row.append(extra)
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    stack = (Frame("/app/a.py", 10, "leaf", "await e.wait()"), Frame("/app/a.py", 12, "top", "await leaf(e)"))
    creator = CreatedBy(None, None, "/app/a.py", 20, "main")
    shared = Wait("event", "Event.wait", seconds=5.0)
    kinds = {
        "shared wait": [TaskInfo(i, f"Task-{i}", "top", "waiting", stack, shared, creator, "0x1")
                        for i in range(args.tasks)],
        "own wait": [TaskInfo(i, f"Task-{i}", "top", "waiting", stack,
                              Wait("sleep", "sleep", seconds=5.0 + i * 1e-6, time_left=3.0), creator, "0x1")
                     for i in range(args.tasks)],
    }
    gc.disable()
    print(f"{args.tasks:,} tasks, Python {sys.version.split()[0]}, best of {args.rounds}")
    for name, tasks in kinds.items():
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for way in (Plain, Tables):
                tables = way()
                began = time.perf_counter()
                rows = [tables.row(t) for t in tasks]
                took = time.perf_counter() - began
                assert len(rows) == len(tasks)
                best[way.__name__] = min(best.get(way.__name__, took), took)
        plain, memo = best["Plain"], best["Tables"]
        print(f"- {name}: plain {plain * 1000:.0f} ms, Tables.row {memo * 1000:.0f} ms ({memo / plain:.2f}x)")


if __name__ == "__main__":
    main()

"""What the leak check's task pins cost each garbage collection (diag/collect/leftovers.py
``TaskPins``), with a test's worth of pending tasks, side by side in one run.

    python bench/task_pins_overhead.py

For each number of pending tasks started during the check, times a young-generation
collection (``gc.collect(0)``) and an allocation-heavy loop (a million small cyclic
objects, each full young generation collected automatically) with no pins and with pins
open, interleaved; prints the best of each and the difference.
"""

from __future__ import annotations

import asyncio
import gc
import time

from diag.collect.leftovers import TaskPins, task_set

ROUNDS = 7
COLLECTIONS = 2_000
OBJECTS = 1_000_000


def collections() -> float:
    start = time.perf_counter()
    for _ in range(COLLECTIONS):
        gc.collect(0)
    return (time.perf_counter() - start) / COLLECTIONS


def allocations() -> float:
    start = time.perf_counter()
    for _ in range(OBJECTS):
        a: list[object] = []
        a.append(a)
    return time.perf_counter() - start


async def measure(pending: int) -> None:
    baseline = task_set()
    event = asyncio.Event()
    tasks = [asyncio.create_task(event.wait()) for _ in range(pending)]
    await asyncio.sleep(0)
    pins = TaskPins(baseline)
    best: dict[str, list[float]] = {"off": [], "on": []}
    alloc: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(ROUNDS):
        for mode in ("off", "on"):
            if mode == "on":
                pins.open()
            try:
                best[mode].append(collections())
                alloc[mode].append(allocations())
            finally:
                pins.close()
    off, on = min(best["off"]), min(best["on"])
    a_off, a_on = min(alloc["off"]), min(alloc["on"])
    print(f"{pending:>5} pending tasks: gc.collect(0) {off * 1e6:6.2f} us -> {on * 1e6:6.2f} us "
          f"(+{(on - off) * 1e6:.2f} us); {OBJECTS:,} cyclic allocations {a_off * 1e3:6.1f} ms -> "
          f"{a_on * 1e3:6.1f} ms ({(a_on / a_off - 1) * 100:+.1f}%)")
    event.set()
    await asyncio.gather(*tasks)


def main() -> None:
    for pending in (1, 10, 100, 1000):
        asyncio.run(measure(pending))


if __name__ == "__main__":
    main()

"""The reachability proof on a big heap: python bench/proof_bench.py [--objects N] [--rounds R]

Builds N objects the GC tracks (held by a module global, in short linked chains), 1,000 tasks waiting on
a reachable Event and 100 on futures nobody holds, then runs the proof from another
thread while the loop runs, as the agent does, R times with the C marking and R times
with the Python one, alternating (a noisy machine slows both alike).  Prints, per
marking, the proof's median time, the objects it marked, and how long the loop went
without turning meanwhile, and the ratios of the two.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diag.collect import reachability  # noqa: E402

class Item:
    """A small object the GC tracks (instances of classes are tracked, atomic dicts are not)."""

    __slots__ = ("value", "next")

    def __init__(self, value: int, next: "Item | None") -> None:
        self.value = value
        self.next = next


HEAP: list[Item] = []


async def waiter(event: asyncio.Event) -> None:
    await event.wait()


async def orphan() -> None:
    await asyncio.get_running_loop().create_future()


async def main(objects: int, rounds: int) -> dict[str, Any]:
    previous = None
    for i in range(objects):
        previous = Item(i, previous if i % 100 else None)  # short chains, so marking goes deep too
        HEAP.append(previous)
    event = asyncio.Event()
    tasks = [asyncio.create_task(waiter(event)) for _ in range(1000)]
    tasks += [asyncio.create_task(orphan()) for _ in range(100)]
    await asyncio.sleep(0.1)
    c_mark = reachability._c_mark
    runs: dict[str, list[dict[str, Any]]] = {"c": [], "python": []}
    for _ in range(rounds):
        for marking in ("c", "python"):
            if marking == "c" and c_mark() is None:
                continue
            reachability._c_mark = c_mark if marking == "c" else (lambda: None)
            try:
                runs[marking].append(await _one_proof())
            finally:
                reachability._c_mark = c_mark
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out: dict[str, Any] = {"python": sys.version.split()[0], "gc_tracked_objects": len(gc.get_objects()),
                           "rounds": rounds}
    for marking, results in runs.items():
        if results:
            out[f"{marking}_marking"] = {
                "proof_seconds_median": statistics.median(r["seconds"] for r in results),
                "loop_paused_max_s_median": statistics.median(r["paused"] for r in results),
                "objects_marked": results[-1]["marked"], "blocked": results[-1]["blocked"],
                "proven_unreachable": results[-1]["unreachable"],
                "complete": all(r["complete"] for r in results)}
    if runs["c"] and runs["python"]:
        c, py = out["c_marking"], out["python_marking"]
        out["python_over_c"] = {"proof_seconds": round(py["proof_seconds_median"] / c["proof_seconds_median"], 2),
                                "loop_paused": round(py["loop_paused_max_s_median"]
                                                     / c["loop_paused_max_s_median"], 2)}
    return out


async def _one_proof() -> dict[str, Any]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(reachability.prove(budget=30)))
    worst = 0.0
    thread.start()
    while thread.is_alive():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - t0)
    thread.join()
    proof = result[0]
    return {"seconds": round(proof.seconds, 3), "marked": proof.objects_marked, "blocked": proof.blocked,
            "unreachable": len(proof.unreachable), "paused": round(worst, 3), "complete": proof.complete}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.objects, args.rounds)), indent=2))

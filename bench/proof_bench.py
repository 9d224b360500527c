"""The reachability proof on a big heap: python bench/proof_bench.py [--objects N]

Builds N objects the GC tracks (held by a module global, in short linked chains), 1,000 tasks waiting on
a reachable Event and 100 on futures nobody holds, then runs the proof from another
thread while the loop runs, as the agent does.  Prints the proof's time, the objects
it marked, and how long the loop went without turning meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diag.collect.reachability import prove  # noqa: E402

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


async def main(objects: int) -> dict[str, Any]:
    previous = None
    for i in range(objects):
        previous = Item(i, previous if i % 100 else None)  # short chains, so marking goes deep too
        HEAP.append(previous)
    event = asyncio.Event()
    tasks = [asyncio.create_task(waiter(event)) for _ in range(1000)]
    tasks += [asyncio.create_task(orphan()) for _ in range(100)]
    await asyncio.sleep(0.1)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(prove(budget=30)))
    worst = 0.0
    thread.start()
    while thread.is_alive():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - t0)
    thread.join()
    proof = result[0]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"python": sys.version.split()[0], "gc_tracked_objects": len(gc.get_objects()),
            "proof_seconds": round(proof.seconds, 3), "objects_marked": proof.objects_marked,
            "blocked": proof.blocked, "proven_unreachable": len(proof.unreachable),
            "loop_paused_max_s": round(worst, 3), "complete": proof.complete}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.objects)), indent=2))

"""What asking "can anything still end this wait?" costs: python bench/users_bench.py [--objects N] [--rounds R]

Builds N objects the GC tracks, held by a module global and, in part, by a protocol
factory of a listening server (what the search from outside the tasks walks), 200 tasks
each waiting once on an event of its own object (the waits asked) and 200 waiting on the
same in a loop (workers: not asked), then asks the agent (started in-process) for ``diag
sync``'s snapshot over the loop's own streams, a ticker measuring its pauses: R times with the question asked and R
times with it left out (the waits made workers' by the bench), alternating.  Prints the
median collection time of each, the loop's longest pause meanwhile, how many waits were
found unreached (200 when asked), and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diag.collect import reach, sync_collector  # noqa: E402
import diag.agent  # noqa: E402
from bench.proof_bench import Item  # noqa: E402  (the same small tracked objects)


class Store:
    def __init__(self) -> None:
        self.changed = asyncio.Event()


HEAP: list[Item] = []


async def once(store: Store) -> None:
    await store.changed.wait()


async def looped(store: Store) -> None:
    while True:
        await store.changed.wait()


async def _collect(url: str) -> tuple[float, int]:
    """GET the agent's sync snapshot over the loop's own streams (a client thread running
    Python code would count as a thread that may act, and make every answer unknown)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /debug/diag/sync HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    seconds = time.perf_counter() - started
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    return seconds, sum(bool((t.get("wait") or {}).get("unreached")) for t in body["tasks"]["tasks"])


async def _ticker(gaps: list[float]) -> None:
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def main(objects: int, rounds: int) -> dict[str, Any]:
    previous = None
    for i in range(objects):
        previous = Item(i, previous if i % 100 else None)
        HEAP.append(previous)
    shared = HEAP[: objects // 10]
    server = await asyncio.get_running_loop().create_server(lambda: (shared, asyncio.Protocol())[1], "127.0.0.1", 0)
    stores = [Store() for _ in range(400)]
    tasks = [asyncio.create_task(once(s)) for s in stores[:200]]
    tasks += [asyncio.create_task(looped(s)) for s in stores[200:]]
    agent = diag.agent.start("127.0.0.1:0")
    await asyncio.sleep(3.0)  # the agent's sampler has seen the waits for over OWNER_MIN_WAIT
    runs: dict[str, list[dict[str, float]]] = {"asked": [], "not asked": []}
    real_in_loop = reach.in_loop
    try:
        for i in range(2 * rounds):
            mode = "asked" if i % 2 == 0 else "not asked"
            reach.in_loop = real_in_loop if mode == "asked" else (lambda coro: True)  # type: ignore[assignment]
            gaps: list[float] = []
            ticker = asyncio.create_task(_ticker(gaps))
            seconds, unreached = await _collect(agent.url)
            ticker.cancel()
            await asyncio.sleep(sync_collector.OWNER_MIN_WAIT)  # past the agent's reuse of a snapshot
            runs[mode].append({"seconds": seconds, "pause": max(gaps, default=0.0), "unreached": unreached})
    finally:
        reach.in_loop = real_in_loop
        diag.agent.stop()
        server.close()
        for t in tasks:
            t.cancel()
    out: dict[str, Any] = {}
    for mode, rows in runs.items():
        out[mode] = {"seconds": statistics.median(r["seconds"] for r in rows),
                     "pause": statistics.median(r["pause"] for r in rows),
                     "waits found unreached": statistics.median(r["unreached"] for r in rows)}
    out["ratio"] = {key: out["asked"][key] / out["not asked"][key] for key in ("seconds", "pause")}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(main(args.objects, args.rounds))
    print(json.dumps({"python": sys.version.split()[0], "objects": args.objects, **result}, indent=2))

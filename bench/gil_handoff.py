"""How long a thread waits for the GIL back after each blocking call, next to a busy
loop thread: one running Python without pause, and one asyncio loop turning through
``await asyncio.sleep(0)`` (so through ``select(0)``), run side by side in one process.

The second starves every other thread: it gives the GIL up and takes it back at each
turn, before a waiting thread wakes, and a waiter asks for the GIL to be handed over only
when it has not changed hands meanwhile.  The agent's file reads and socket writes wait
that long each, so its answers avoid file reads.

    python bench/gil_handoff.py [--calls 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time


def descend(depth: int) -> int:
    return descend(depth - 1) + 1 if depth else sum(range(2000))


def busy(kind: str, stop: threading.Event) -> None:
    if kind == "python":
        n = 0
        while not stop.is_set():
            descend(n % 60)
            n += 1
        return

    async def churn() -> None:
        n = 0
        while not stop.is_set():
            descend(n % 60)
            n += 1
            await asyncio.sleep(0)

    asyncio.run(churn())


def per_call(kind: str, calls: int) -> float:
    stop = threading.Event()
    thread = threading.Thread(target=busy, args=(kind, stop), daemon=True)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    for _ in range(calls):
        os.stat(os.curdir)
    took = (time.monotonic() - started) / calls
    stop.set()
    thread.join()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'round':>5}  {'python thread':>14}  {'select(0) loop':>15}  ratio")
    for i in range(args.rounds):
        plain = per_call("python", args.calls)
        loop = per_call("asyncio", args.calls)
        print(f"{i + 1:>5}  {plain * 1000:>11.2f} ms  {loop * 1000:>12.2f} ms  {loop / max(plain, 1e-9):>5.0f}x")


if __name__ == "__main__":
    main()

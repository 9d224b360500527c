"""What recording ``Event.set`` and ``Event.clear`` costs (diag/collect/event_activity.py),
side by side in one run.

    python bench/event_set_overhead.py

Times ``event.set(); event.clear()`` with asyncio's own methods, with diag's wrappers
installed, and asyncio's again, inside a running loop; prints the best of each and the
difference.  The last figure shows what the recording leaves behind: it writes to the
event's ``__dict__``, which makes asyncio's own methods on that event slower too.  Then the
same for ``queue.put_nowait(x); queue.get_nowait()``: every put clears the queue's join
event, which is not set, the wrapper's cheap path.  Last, ``Condition.notify()`` waking one
task in ``wait_for`` (diag/collect/condition_activity.py: the wrapper finds the woken
call through the future's wake-up callback and records it on the condition), and
``notify()`` with no waiter, timed inside a task that holds the lock.
"""

from __future__ import annotations

import asyncio
import timeit
from typing import Callable

from diag.collect import condition_activity, event_activity

NUMBER = 200_000


def side_by_side(what: str, pair: Callable[[], None]) -> None:
    def best() -> float:
        return min(timeit.repeat(pair, number=NUMBER, repeat=5)) / NUMBER

    plain = best()
    event_activity.install()
    try:
        wrapped = best()
    finally:
        event_activity.uninstall()
    after = best()  # asyncio's own again, on the objects the recording has written to
    print(f"{what}: {plain * 1e9:.0f} ns plain, {wrapped * 1e9:.0f} ns recorded: "
          f"+{(wrapped - plain) * 1e9:.0f} ns ({wrapped / plain:.2f}x); "
          f"plain again on the same objects {after * 1e9:.0f} ns")


async def main() -> None:
    # inside a running loop, as a program sets and clears its events (a clear of a set
    # event records the task that called it)
    event = asyncio.Event()

    def set_clear() -> None:
        event.set()
        event.clear()

    queue: asyncio.Queue[int] = asyncio.Queue()

    def put_get() -> None:
        queue.put_nowait(1)
        queue.get_nowait()

    side_by_side("event set+clear", set_clear)
    side_by_side("queue put_nowait+get_nowait", put_get)
    await notify_side_by_side()


async def notify_seconds(rounds: int, waiter: bool) -> float:
    """The best of ``rounds`` timed ``notify()`` calls, each waking one task in ``wait_for``
    (which finds its predicate false and waits again) or, without ``waiter``, none."""
    cond = asyncio.Condition()

    async def idle() -> None:
        async with cond:
            await cond.wait_for(lambda: False)

    task = asyncio.create_task(idle()) if waiter else None
    clock = timeit.default_timer
    best = float("inf")
    for _ in range(rounds):
        while task is not None and not (cond._waiters and not cond._waiters[-1].done()):
            await asyncio.sleep(0)
        async with cond:
            started = clock()
            cond.notify()
            best = min(best, clock() - started)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return best


async def notify_side_by_side(rounds: int = 20_000) -> None:
    for waiter in (True, False):
        plain = await notify_seconds(rounds, waiter)
        condition_activity.install()
        try:
            wrapped = await notify_seconds(rounds, waiter)
        finally:
            condition_activity.uninstall()
        what = "Condition.notify waking one wait_for" if waiter else "Condition.notify with no waiter"
        print(f"{what}: {plain * 1e9:.0f} ns plain, {wrapped * 1e9:.0f} ns recorded: "
              f"+{(wrapped - plain) * 1e9:.0f} ns ({wrapped / plain:.2f}x) (best of {rounds}, one call timed each)")


if __name__ == "__main__":
    asyncio.run(main())

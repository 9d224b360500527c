"""What recording ``Event.set`` and ``Event.clear`` costs (diag/collect/event_activity.py),
side by side in one run.

    python bench/event_set_overhead.py

Times ``event.set(); event.clear()`` with asyncio's own methods, with diag's wrappers
installed, and asyncio's again, inside a running loop; prints the best of each and the
difference.  The last figure shows what the recording leaves behind: it writes to the
event's ``__dict__``, which makes asyncio's own methods on that event slower too.  Then the
same for ``queue.put_nowait(x); queue.get_nowait()``: every put clears the queue's join
event, which is not set, the wrapper's cheap path.
"""

from __future__ import annotations

import asyncio
import timeit
from typing import Callable

from diag.collect import event_activity

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


if __name__ == "__main__":
    asyncio.run(main())

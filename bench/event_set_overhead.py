"""What recording ``Event.set`` costs (diag/collect/event_activity.py), side by side in one run.

    python bench/event_set_overhead.py

Times ``event.set(); event.clear()`` with asyncio's own ``Event.set``, with diag's
wrapper installed, and asyncio's again; prints the best of each and the difference.
"""

from __future__ import annotations

import asyncio
import timeit

from diag.collect import event_activity

NUMBER = 200_000


def main() -> None:
    event = asyncio.Event()

    def pair() -> None:
        event.set()
        event.clear()

    def best() -> float:
        return min(timeit.repeat(pair, number=NUMBER, repeat=5)) / NUMBER

    plain = best()
    event_activity.install()
    try:
        wrapped = best()
    finally:
        event_activity.uninstall()
    plain = min(plain, best())
    print(f"set+clear: {plain * 1e9:.0f} ns plain, {wrapped * 1e9:.0f} ns with set() recorded: "
          f"+{(wrapped - plain) * 1e9:.0f} ns per set ({wrapped / plain:.2f}x)")


if __name__ == "__main__":
    main()

"""The program ``diag profile`` is measured on, by its tests and by bench/profile_modes.py.

``OrderService.metrics_flusher`` blocks the loop in ``time.sleep(0.3)`` once a second;
``OrderService.burner`` spins 20, 35 or 50 ms (wall clock) every 0.4 s, about 8 % of the
time.  Each keeps its last intervals (Unix time) in ``spans.json`` in its working
directory, to compare a profile's window with what really ran in it.

Usage::

    with DiagRun(order_service(uvloop=True)) as run: ...
"""

from __future__ import annotations

_SOURCE = """
import asyncio, collections, json, os, time

SPANS = {"flush": collections.deque(maxlen=100), "burn": collections.deque(maxlen=200)}
UVLOOP = %(uvloop)r
C_BURSTS = %(c_bursts)r
IDLE_TASKS = %(idle_tasks)d

def save(kind, start):
    SPANS[kind].append((start, time.time()))
    with open("spans.tmp", "w") as f:
        json.dump({k: list(v) for k, v in SPANS.items()}, f)
    os.replace("spans.tmp", "spans.json")

if C_BURSTS:  # additions per second, to size a burst that is one C call
    _t = time.perf_counter()
    sum(range(3_000_000))
    RATE = 3_000_000 / (time.perf_counter() - _t)

def crunch(seconds):
    if C_BURSTS:
        return sum(range(int(seconds * RATE)))
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass

class OrderService:
    async def metrics_flusher(self):
        while True:
            t0 = time.time()
            time.sleep(0.3)
            save("flush", t0)
            await asyncio.sleep(0.7)

    async def burner(self):
        n = 0
        while True:
            t0 = time.time()
            crunch((0.020, 0.035, 0.050)[n %% 3])
            n += 1
            save("burn", t0)
            await asyncio.sleep(0.4)

    async def idle(self):
        while True:
            await asyncio.sleep(0.05)

async def main():
    service = OrderService()
    await asyncio.gather(service.metrics_flusher(), service.burner(), *(service.idle() for _ in range(IDLE_TASKS)))

if UVLOOP:
    import uvloop
    uvloop.install()
asyncio.run(main())
"""


def order_service(*, uvloop: bool = False, c_bursts: bool = False, idle_tasks: int = 0) -> str:
    """The program's source: on uvloop, with each burst one C call that keeps the GIL
    (``sum`` over a range, sized when the program starts), with ``idle_tasks`` more
    tasks waking every 50 ms."""
    return _SOURCE % {"uvloop": uvloop, "c_bursts": c_bursts, "idle_tasks": idle_tasks}

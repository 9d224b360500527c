"""Real saved documents: tasks and sync snapshots of a small asyncio program run in
this process (a lock held across a wait, its waiter, a semaphore holder, a queue reader,
an event waiter, and with ``forever`` a sleep of ``math.inf``), as ``diag ... -o`` saves them.

Usage::

    docs = real_documents()
    Path("tasks.json").write_text(docs["tasks"])
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from diag.collect.sync_collector import collect_sync
from diag.collect.task_collector import collect_tasks


async def _program(forever: bool) -> dict[str, str]:
    lock, sem, event, queue = asyncio.Lock(), asyncio.Semaphore(1), asyncio.Event(), asyncio.Queue[int]()

    async def holder() -> None:
        async with lock:
            await event.wait()

    async def waiter() -> None:
        async with lock:
            pass

    async def sem_holder() -> None:
        async with sem:
            await asyncio.sleep(3600)

    async def reader() -> None:
        await queue.get()

    async def sleeper() -> None:
        await asyncio.sleep(math.inf if forever else 60)

    coros: list[Any] = [holder(), waiter(), sem_holder(), reader(), sleeper()]
    tasks = [asyncio.create_task(c, name=f"worker-{i}") for i, c in enumerate(coros)]
    try:
        await asyncio.sleep(0.05)
        sync = collect_sync(None, proof=True, proof_budget=2.0).to_dict()
        _add_holder(sync)
        return {"tasks": collect_tasks().to_json(), "sync": json.dumps(sync)}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _add_holder(sync: dict[str, Any]) -> None:
    """The lock's holder, as holder tracking (off in this process) would have recorded it."""
    holder = next(t for t in sync["tasks"]["tasks"] if t["name"] == "worker-0")
    for state in sync["primitives"]:
        if state["primitive"]["kind"] == "lock":
            state["tracked"] = True
            state["holders"] = [{"task_id": holder["id"], "task_name": "worker-0", "task_alive": True,
                                 "task_state": "waiting", "held_seconds": 1.5,
                                 "site": [{"file": __file__, "line": 25, "function": "holder", "source": ""}]}]
    sync["holders_tracked"] = True


def real_documents(forever: bool = False) -> dict[str, str]:
    """``{"tasks": ..., "sync": ...}`` as JSON text."""
    return asyncio.run(_program(forever))

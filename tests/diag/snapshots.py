"""Hand-built snapshots for the pure analysis and rendering tests."""

from __future__ import annotations

from diag.model.task_snapshot import CreatedBy, Frame, LoopInfo, Primitive, ProcessInfo, TaskInfo, TaskSnapshot, Wait

ACQUIRE = Frame("/usr/lib/python3.11/asyncio/locks.py", 387, "Semaphore.acquire", "await fut")
FETCH = Frame("/srv/app/client.py", 20, "fetch", "async with self.pool:")
SLEEP = Frame("/usr/lib/python3.11/asyncio/tasks.py", 649, "sleep", "return await future")
WORKER = Frame("/srv/app/worker.py", 12, "Worker.run", "await asyncio.sleep(60)")
POOL = Primitive("semaphore", "0x7f00a0", "Client.pool", value=0, capacity=None, locked=True, waiters=3)
CREATOR = CreatedBy(17, "handler", "/srv/app/handlers.py", 88, "handler")


def task(tid: int, *, name: str = "", stack: tuple[Frame, ...] = (ACQUIRE, FETCH), wait: Wait | None = None,
         coro: str = "fetch", state: str = "waiting", created: CreatedBy | None = CREATOR) -> TaskInfo:
    return TaskInfo(id=tid, name=name or f"Task-{tid}", coro=coro, state=state, stack=stack,
                    wait=wait or Wait("semaphore", "Semaphore.acquire", POOL, seconds=303.0 + tid),
                    created_by=created, loop="0x7f00l")


def snapshot(*tasks: TaskInfo, loops: tuple[LoopInfo, ...] = ()) -> TaskSnapshot:
    return TaskSnapshot(taken_at=1_800_000_000.0, process=ProcessInfo(4242, ("python", "app.py"), "3.11.7", "0.1.0"),
                        tasks=tasks, loops=loops or (LoopInfo("0x7f00l", 1, "MainThread", True, 0.0002),),
                        total_tasks=len(tasks), wait_clock="sampled every 1.0s")


def fetchers_and_worker() -> TaskSnapshot:
    """Three tasks stuck on one semaphore and one idle worker sleeping."""
    worker = task(9, name="worker", stack=(SLEEP, WORKER), coro="Worker.run",
                  wait=Wait("sleep", "sleep", seconds=5.0, time_left=55.0), created=None)
    return snapshot(task(42, name="fetch"), task(43), task(44), worker)

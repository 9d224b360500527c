"""A hand-built shop service with the long names and deep paths real services have:
for the tests that tables fit 80 and 120 columns without cutting what matters."""

from __future__ import annotations

from diag.model.sync_snapshot import Holder, PrimitiveState, Reachability, SyncSnapshot
from diag.model.task_snapshot import CreatedBy, Frame, LoopInfo, Primitive, ProcessInfo, TaskInfo, TaskSnapshot, Wait

CWD = "/srv/shop"
SEM_ACQUIRE = Frame("/usr/lib/python3.11/asyncio/locks.py", 387, "Semaphore.acquire", "await fut")
LOCK_ACQUIRE = Frame("/usr/lib/python3.11/asyncio/locks.py", 114, "Lock.acquire", "await fut")
AENTER = Frame("/usr/lib/python3.11/asyncio/locks.py", 15, "_ContextManagerMixin.__aenter__", "await self.acquire()")
QUEUE_GET = Frame("/usr/lib/python3.11/asyncio/queues.py", 158, "Queue.get", "await getter")
SLEEP = Frame("/usr/lib/python3.11/asyncio/tasks.py", 649, "sleep", "return await future")
RESERVE = Frame(f"{CWD}/myapp/services/shop/orders.py", 123, "OrderService.reserve_stock",
                "async with self.stock_slots:")
HANDLE = Frame(f"{CWD}/myapp/services/shop/orders.py", 88, "OrderService.handle_order",
               "await self.reserve_stock(order)")
TRANSFER_A = Frame(f"{CWD}/myapp/services/ledger/transfers.py", 57, "transfer_between_accounts",
                   "async with second:")
TRANSFER_B = Frame(f"{CWD}/myapp/services/ledger/transfers.py", 61, "transfer_between_accounts",
                   "async with second:")
FLUSH = Frame("/opt/vendor/lib/internal/company/telemetry/exporters/batching_exporter.py", 4471,
              "BatchingExporter.flush_forever", "await asyncio.sleep(self.interval)")
CONSUME = Frame(f"{CWD}/myapp/workers/notifications.py", 40, "NotificationWorker.consume",
                "item = await self.outbox.get()")

STOCK = Primitive("semaphore", "0x7ff9efa3c2d0", "Inventory.stock_slots", value=0, capacity=4, locked=True,
                  waiters=12)
FIRST = Primitive("lock", "0x7ff9efa3d010", "first", locked=True, waiters=1, aliases=("second",))
SECOND = Primitive("lock", "0x7ff9efa3d450", "second", locked=True, waiters=1, aliases=("first",))
OUTBOX = Primitive("queue", "0x7ff9efa3e980", "[myapp.workers.notifications.outbox_queue]", size=0, maxsize=100,
                   getters=1, putters=0, waiters=1)
ACCEPT = CreatedBy(3, "acceptor", f"{CWD}/myapp/http/server_connections.py", 214, "ConnectionHandler.accept_loop")
SPAWN = CreatedBy(1, "main", f"{CWD}/myapp/services/ledger/transfers.py", 90, "reconcile_ledgers")
MAIN_LOOP = LoopInfo("0x7ff9f0000010", 1, "MainThread", True, 0.0003)


def _task(tid: int, name: str, coro: str, stack: tuple[Frame, ...], wait: Wait,
          created: CreatedBy | None) -> TaskInfo:
    return TaskInfo(id=tid, name=name, coro=coro, state="waiting", stack=stack, wait=wait, created_by=created,
                    loop=MAIN_LOOP.id)


def shop_tasks() -> TaskSnapshot:
    """Twelve orders queued on the stock semaphore, two transfers in a lock-order
    inversion (the lock each waits for has another name in the other's frame), a
    notification worker idle on its queue and a vendor exporter sleeping."""
    orders = tuple(
        _task(100 + i, f"order-handler-{100 + i}", "OrderService.handle_order", (SEM_ACQUIRE, RESERVE, HANDLE),
              Wait("semaphore", "Semaphore.acquire", STOCK, seconds=300.0 + i), ACCEPT)
        for i in range(12))
    a = _task(201, "transfer-a", "transfer_between_accounts", (LOCK_ACQUIRE, AENTER, TRANSFER_A),
              Wait("lock", "Lock.acquire", SECOND, seconds=95.0, frame_label="second"), SPAWN)
    b = _task(202, "transfer-b", "transfer_between_accounts", (LOCK_ACQUIRE, AENTER, TRANSFER_B),
              Wait("lock", "Lock.acquire", FIRST, seconds=95.0, frame_label="second"), SPAWN)
    worker = _task(300, "notifications", "NotificationWorker.consume", (QUEUE_GET, CONSUME),
                   Wait("queue_get", "Queue.get", OUTBOX, seconds=42.0), None)
    exporter = _task(400, "telemetry-exporter", "BatchingExporter.flush_forever", (SLEEP, FLUSH),
                     Wait("sleep", "sleep", seconds=4.2, time_left=25.8), None)
    tasks = orders + (a, b, worker, exporter)
    return TaskSnapshot(taken_at=1_800_000_000.0, process=ProcessInfo(5151, ("python", "-m", "myapp"), "3.11.7", "0.1.0"),
                        tasks=tasks, loops=(MAIN_LOOP,), total_tasks=len(tasks), wait_clock="sampled every 1.0s")


def _holder(tid: int, site: tuple[Frame, ...], held: float, *, alive: bool = True) -> Holder:
    return Holder(tid, f"order-handler-{tid}", alive, "waiting" if alive else "finished", site, held)


def shop_sync() -> SyncSnapshot:
    """``shop_tasks`` with the primitives' side: three holders of the stock semaphore (one
    gone without releasing), each transfer holding the lock the other waits for."""
    tasks = shop_tasks()
    stock = PrimitiveState(STOCK, (_holder(90, (RESERVE, HANDLE), 700.0, alive=False),
                                   _holder(91, (RESERVE, HANDLE), 650.0), _holder(92, (RESERVE, HANDLE), 640.0)),
                           tuple(range(100, 112)), 311.0, 0.5, True)
    first = PrimitiveState(FIRST, (Holder(201, "transfer-a", True, "waiting", (TRANSFER_A,), 96.0),), (202,),
                           95.0, 96.0, True)
    second = PrimitiveState(SECOND, (Holder(202, "transfer-b", True, "waiting", (TRANSFER_B,), 96.0),), (201,),
                            95.0, 96.0, True)
    outbox = PrimitiveState(OUTBOX, (), (300,), 42.0, 42.0, False)
    return SyncSnapshot(tasks.taken_at, tasks.process, tasks, (stock, first, second, outbox),
                        Reachability(False), holders_tracked=True)

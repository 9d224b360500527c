"""A standby scheduler replica: a lease timer, an hourly batch window and long-polls keep it waiting, and it is healthy.

Modelled on mars-project/mars #2126: "Mars asyncio task hang debugger": a stack dump of
the process told nothing when the loop was idle and tasks waited on RPCs, so the proposal
was to print every task that had not finished within a set duration.  In a service built
around timers, long-polls and standby roles such a rule reports most of its tasks, none of
which is hung.

Here the replica is a standby: the leader (another replica, simulated here) renews its
lease through a local coordinator every second, and each renewal the coordinator pushes
re-arms a ``loop.call_later`` timer 15 s ahead; ``Standby.run`` awaits the "lease lost"
future that only that timer resolves, which never happens while the leader is well.  Four workers idle
on ``Queue.get`` between jobs the leader hands over every 3 s; ``AuditBatcher.run`` waits
in ``wait_for(event.wait(), 3600)`` until 50 results are in or the hour is up; two
``ScheduleWatcher`` tasks long-poll the coordinator, which answers only when the key
changes (the schedule every 8 s, the holiday calendar not during a run).  There is no bug
in either file; the twin uses a 20 s lease, batches of 40 and a schedule edited every 5 s.
"""
import asyncio
import signal

LEASE_TTL = 20.0
BATCH_SIZE = 40
EDIT_EVERY = 5.0
HOLD = 300.0


class Coordinator:
    """The coordination service: leases, job hand-over and long-polled keys."""

    def __init__(self):
        self.keys = {"schedule": 1, "holidays": 1}
        self.changed = asyncio.Event()
        self.subscribers = []

    def publish(self, key):
        self.keys[key] += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def push(self, line):
        for queue in self.subscribers:
            queue.put_nowait(line)

    async def handle(self, reader, writer):
        try:
            while line := await reader.readline():
                verb, *args = line.decode().split()
                if verb == "RENEW":
                    self.push(f"LEASE {args[0]} {LEASE_TTL}\n")
                    writer.write(b"OK\n")
                elif verb == "ASSIGN":
                    self.push(f"JOB {args[0]}\n")
                    writer.write(b"OK\n")
                elif verb == "GET":
                    writer.write(f"{args[0]} {await self.wait_change(args[0], int(args[1]))}\n".encode())
                elif verb == "SUBSCRIBE":
                    await self.stream(writer)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def wait_change(self, key, seen):
        deadline = asyncio.get_running_loop().time() + HOLD
        while self.keys[key] <= seen:
            left = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                break
        return self.keys[key]

    async def stream(self, writer):
        queue = asyncio.Queue()
        self.subscribers.append(queue)
        try:
            while True:
                writer.write((await queue.get()).encode())
                await writer.drain()
        finally:
            self.subscribers.remove(queue)


async def leader_replica(port, name):
    """The current leader, another replica: renews its lease and hands jobs over."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    beat = 0
    while True:
        writer.write(f"RENEW {name}\n".encode())
        await reader.readline()
        beat += 1
        if beat % 3 == 0:
            writer.write(f"ASSIGN report-{beat}\n".encode())
            await reader.readline()
        await asyncio.sleep(1.0)


class Standby:
    """This replica: takes over when the leader's lease runs out."""

    def __init__(self, jobs):
        self.jobs = jobs
        self.loop = asyncio.get_running_loop()
        self.lease_lost = self.loop.create_future()
        self.timer = None
        self.leader = None

    def lease_renewed(self, leader, ttl):
        self.leader = leader
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(ttl, self.expire)

    def expire(self):
        if not self.lease_lost.done():
            self.lease_lost.set_result(self.leader)

    async def watch(self, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"SUBSCRIBE\n")
        while line := await reader.readline():
            kind, *args = line.decode().split()
            if kind == "LEASE":
                self.lease_renewed(args[0], float(args[1]))
            elif kind == "JOB":
                self.jobs.put_nowait(args[0])

    async def run(self):
        while True:
            lost = await self.lease_lost
            print(f"lease of {lost} expired: taking over", flush=True)
            self.lease_lost = self.loop.create_future()


class AuditBatcher:
    def __init__(self):
        self.batch = []
        self.full = asyncio.Event()
        self.shipped = 0

    def add(self, record):
        self.batch.append(record)
        if len(self.batch) >= BATCH_SIZE:
            self.full.set()

    async def run(self):
        while True:
            try:
                await asyncio.wait_for(self.full.wait(), timeout=3600)
            except asyncio.TimeoutError:
                pass
            self.full.clear()
            batch, self.batch = self.batch, []
            await asyncio.sleep(0.05)  # ship to the audit store
            self.shipped += len(batch)


async def worker(jobs, audit):
    while True:
        job = await jobs.get()
        await asyncio.sleep(0.05)  # run the report
        audit.add(job)
        jobs.task_done()


class ScheduleWatcher:
    def __init__(self, port, key, applied):
        self.port, self.key, self.applied = port, key, applied

    async def run(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        version = 1
        while True:
            writer.write(f"GET {self.key} {version}\n".encode())
            version = int((await reader.readline()).split()[1])
            self.applied[self.key] = version


async def edit_schedule(coordinator):
    while True:
        await asyncio.sleep(EDIT_EVERY)
        coordinator.publish("schedule")


async def main():
    coordinator = Coordinator()
    server = await asyncio.start_server(coordinator.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    jobs, audit, applied = asyncio.Queue(), AuditBatcher(), {}
    standby = Standby(jobs)
    tasks = [asyncio.create_task(standby.watch(port)), asyncio.create_task(standby.run()),
             asyncio.create_task(audit.run()), asyncio.create_task(edit_schedule(coordinator))]
    await asyncio.sleep(0.1)
    tasks.append(asyncio.create_task(leader_replica(port, "sched-a")))
    tasks += [asyncio.create_task(worker(jobs, audit)) for _ in range(4)]
    tasks += [asyncio.create_task(ScheduleWatcher(port, key, applied).run()) for key in ("schedule", "holidays")]
    await asyncio.sleep(1.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

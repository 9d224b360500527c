"""A healthy leader-elected scheduler: long timers, a step-down event and followers that wait for hours.

Modelled on suzuke/AgEnD #97: "Hang detector: 15-min silence flags idle instances as
hung (~73% false positives)": a hang detector flagged instances that had simply gone
quiet with no pending work; most of its alarms were idle-but-healthy processes.

The service holds a lease from a coordination server: the leader renews it every few
seconds and between renewals waits on its step-down event with the renewal interval as
deadline; three follower loops wait on a condition for the leadership to become vacant,
which it never does while the leader is well; a config watcher long-polls the
coordination server, which holds each poll up to 20 s; and a batch producer hands
permits of a semaphore to an uploader, which releases them when a batch is uploaded, so
the producer waits on the semaphore while uploads are under way.  There is no bug in
either file; the twin renews more often and uploads faster.
"""
import asyncio
import signal

RENEW_EVERY = 4.0
UPLOAD_SECONDS = 2.5


class Coordinator:
    """The coordination server: grants leases and answers config long-polls."""

    def __init__(self):
        self.config_changed = asyncio.Event()
        self.renewals = 0

    async def handle(self, reader, writer):
        while line := await reader.readline():
            if line.startswith(b"RENEW"):
                self.renewals += 1
                writer.write(b"OK 15\n")
            elif line.startswith(b"WATCH"):
                try:
                    await asyncio.wait_for(self.config_changed.wait(), 20.0)
                    writer.write(b"CHANGED\n")
                except asyncio.TimeoutError:
                    writer.write(b"NOCHANGE\n")
            await writer.drain()
        writer.close()


class Election:
    def __init__(self, port):
        self.port = port
        self.leader = None
        self.vacant = asyncio.Condition()
        self.stepdown = asyncio.Event()

    async def lead(self, me):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        async with self.vacant:
            self.leader = me
        while not self.stepdown.is_set():
            writer.write(b"RENEW %s\n" % me.encode())
            await reader.readline()
            try:
                await asyncio.wait_for(self.stepdown.wait(), RENEW_EVERY)
            except asyncio.TimeoutError:
                pass
        async with self.vacant:
            self.leader = None
            self.vacant.notify_all()

    async def follow(self, me):
        while True:
            async with self.vacant:
                await self.vacant.wait_for(lambda: self.leader is None)
            await self.lead(me)


async def watch_config(port, versions):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"WATCH config\n")
        versions.append(await asyncio.wait_for(reader.readline(), 25.0))


async def produce(slots, batches):
    n = 0
    while True:
        await slots.acquire()  # released by the uploader once the batch is stored
        n += 1
        await batches.put(["row"] * 100 + [n])
        await asyncio.sleep(0.5)


async def upload(slots, batches, stored):
    while True:
        batch = await batches.get()
        await asyncio.sleep(UPLOAD_SECONDS)
        stored.append(batch[-1])
        del stored[:-10]
        slots.release()


async def main():
    coordinator = Coordinator()
    server = await asyncio.start_server(coordinator.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    election = Election(port)
    slots, batches, stored, versions = asyncio.Semaphore(2), asyncio.Queue(), [], []
    tasks = [asyncio.create_task(election.lead("node-1"))]
    await asyncio.sleep(0.1)
    tasks += [asyncio.create_task(election.follow(f"node-{i}")) for i in (2, 3, 4)]
    tasks += [asyncio.create_task(watch_config(port, versions)),
              asyncio.create_task(produce(slots, batches)), asyncio.create_task(upload(slots, batches, stored))]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    election.stepdown.set()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

"""A config agent that long-polls its config server, follows a leader and mirrors bundles: long waits, no hang.

Modelled on lightpanda-io/browser #2896: "feature: add watchdog for JS hangs": the hang
watchdog had to let workers declare that they were "entering a wait" (network polling),
because a worker blocked for its own legitimate reasons looks exactly like a hung one to
a watchdog that only measures how long something has been waiting.

Here nothing is hung.  Four ``watch_key`` clients long-poll a config server on 127.0.0.1:
the server holds each request on a ``Condition`` for up to 25 s and answers only when the
key changes, which for ``feature_flags`` happens every 6 s and for the others not at all
during a run.  ``Follower.run`` waits on the lease ``Condition`` for the leader's heartbeat,
which comes every 5 s.  Five ``mirror_bundle`` tasks share a ``Semaphore(2)``: the two
holders stream a bundle chunk by chunk for about 6 s while the other three wait their turn.
An audit worker idles on ``Queue.get``.  The twin changes only the pace: changes every 4 s,
heartbeats every 3 s and three download permits.
"""
import asyncio
import signal

HOLD = 25.0
CHANGE_EVERY = 4.0
HEARTBEAT_EVERY = 3.0
DOWNLOAD_PERMITS = 3
CHUNKS, CHUNK_EVERY = 60, 0.1
KEYS = ("feature_flags", "db_dsn", "tls_bundle", "rate_limits")


class ConfigServer:
    def __init__(self):
        self.versions = {key: 1 for key in KEYS}
        self.changed = asyncio.Condition()

    async def publish(self, key):
        async with self.changed:
            self.versions[key] += 1
            self.changed.notify_all()

    async def handle(self, reader, writer):
        try:
            while line := await reader.readline():
                _, key, seen = line.decode().split()
                async with self.changed:
                    try:
                        await asyncio.wait_for(
                            self.changed.wait_for(lambda: self.versions[key] > int(seen)), HOLD)
                        answer = f"CHANGED {key} {self.versions[key]}\n"
                    except asyncio.TimeoutError:
                        answer = "NOCHANGE\n"
                writer.write(answer.encode())
                await writer.drain()
        except (OSError, ValueError):
            pass
        finally:
            writer.close()


async def watch_key(port, key, applied):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    version = 1
    while True:
        writer.write(f"WATCH {key} {version}\n".encode())
        answer = (await reader.readline()).decode().split()
        if answer[:1] == ["CHANGED"]:
            version = int(answer[2])
            applied.append((key, version))
            del applied[:-20]


async def publish_changes(config):
    while True:
        await asyncio.sleep(CHANGE_EVERY)
        await config.publish("feature_flags")


class Lease:
    def __init__(self):
        self.term = 0
        self.beat = asyncio.Condition()

    async def lead(self):
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            async with self.beat:
                self.term += 1
                self.beat.notify_all()


class Follower:
    def __init__(self, lease):
        self.lease = lease
        self.last_seen = 0
        self.elections = 0

    async def run(self):
        while True:
            async with self.lease.beat:
                try:
                    await asyncio.wait_for(self.lease.beat.wait_for(lambda: self.lease.term > self.last_seen), 15.0)
                    self.last_seen = self.lease.term
                except asyncio.TimeoutError:
                    self.elections += 1  # the leader is gone: would stand for election here


async def blob_server(reader, writer):
    try:
        await reader.readline()
        for n in range(CHUNKS):
            writer.write(b"%d " % n + b"x" * 1024 + b"\n")
            await writer.drain()
            await asyncio.sleep(CHUNK_EVERY)
        writer.write(b"END\n")
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def mirror_bundle(port, name, permits, done):
    while True:
        async with permits:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /bundles/{name}\n".encode())
            size = 0
            while (chunk := await reader.readline()) not in (b"", b"END\n"):
                size += len(chunk)
            writer.close()
        done.append((name, size))
        del done[:-20]
        await asyncio.sleep(0.5)


async def audit_worker(audit, log):
    while True:
        log.append(await audit.get())


async def main():
    config = ConfigServer()
    config_server = await asyncio.start_server(config.handle, "127.0.0.1", 0)
    blobs = await asyncio.start_server(blob_server, "127.0.0.1", 0)
    config_port = config_server.sockets[0].getsockname()[1]
    blob_port = blobs.sockets[0].getsockname()[1]
    lease, permits = Lease(), asyncio.Semaphore(DOWNLOAD_PERMITS)
    applied, done, audit, log = [], [], asyncio.Queue(), []
    tasks = [asyncio.create_task(watch_key(config_port, key, applied)) for key in KEYS]
    tasks += [asyncio.create_task(publish_changes(config)), asyncio.create_task(lease.lead()),
              asyncio.create_task(Follower(lease).run()), asyncio.create_task(audit_worker(audit, log))]
    tasks += [asyncio.create_task(mirror_bundle(blob_port, f"bundle-{n}", permits, done)) for n in range(5)]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    config_server.close()
    blobs.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

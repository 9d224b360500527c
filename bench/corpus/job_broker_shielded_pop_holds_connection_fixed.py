"""A job dispatcher whose shielded blocking pop outlives its timeout and keeps the broker connection's lock.

Modelled on redis/redis-py #2666: "Fixing cancelled async futures": to keep a cancelled
command from leaving its reply unread on the connection, every command was run under
``asyncio.shield``; as reported in that thread, cancelling a task whose blocking ``BRPOP``
waited on a single-connection client no longer stopped the command: the shielded call kept
the connection's lock, and the next command on that client (a plain ``SET``) deadlocked.

Here the dispatcher shares one broker connection, guarded by an ``asyncio.Lock``, between
a poller for urgent jobs and three bulk workers.  The poller runs a blocking pop with no
server-side limit (``BLPOP jobs:urgent 0``) through ``call``, which wraps the shielded
command in ``wait_for(..., 0.5)``.  Urgent jobs stop arriving about 0.8 s in; the next pop
times out on the caller's side, but the shielded command keeps the lock and waits for a
reply the broker will send only when an urgent job arrives.  From then on the poller's
heartbeat and the bulk workers wait on the lock while bulk jobs pile up.  The fix gives
the broker the deadline (``BLPOP jobs:urgent 0.4``), so the pop always ends.
"""
import asyncio
import collections
import signal
import time


class Broker:
    """A small in-memory list broker speaking a Redis-like line protocol."""

    def __init__(self):
        self.lists = collections.defaultdict(collections.deque)
        self.values = {}
        self.pushed = asyncio.Condition()

    async def handle(self, reader, writer):
        try:
            while line := await reader.readline():
                cmd, *args = line.decode().split()
                writer.write((await self.run(cmd, args) + "\n").encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def run(self, cmd, args):
        if cmd == "LPUSH":
            self.lists[args[0]].append(args[1])
            async with self.pushed:
                self.pushed.notify_all()
            return str(len(self.lists[args[0]]))
        if cmd == "RPOP":
            items = self.lists[args[0]]
            return items.popleft() if items else "nil"
        if cmd == "BLPOP":
            key, limit = args[0], float(args[1])
            async with self.pushed:
                try:
                    await asyncio.wait_for(self.pushed.wait_for(lambda: self.lists[key]), limit or None)
                except asyncio.TimeoutError:
                    return "nil"
            return self.lists[key].popleft()
        if cmd == "INCR":
            self.values[args[0]] = int(self.values.get(args[0], 0)) + 1
            return str(self.values[args[0]])
        if cmd == "SET":
            self.values[args[0]] = args[1]
            return "OK"
        return "ERR unknown command"


class BrokerConnection:
    """One connection to the broker, one command at a time."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.lock = asyncio.Lock()
        self.replies = collections.deque()  # futures of the commands sent, oldest first
        self.reading = asyncio.create_task(self.read_replies())

    @classmethod
    async def open(cls, port):
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def read_replies(self):
        while line := await self.reader.readline():
            reply = self.replies.popleft()
            if not reply.done():
                reply.set_result(line.decode().strip())
        while self.replies:
            self.replies.popleft().set_exception(ConnectionError("broker connection closed"))

    async def execute(self, *args):
        async with self.lock:
            reply = asyncio.get_running_loop().create_future()
            self.replies.append(reply)
            self.writer.write(" ".join(map(str, args)).encode() + b"\n")
            return await reply

    async def call(self, *args, timeout):
        # shielded, so that a timeout cannot cut a command off from its reply
        return await asyncio.wait_for(asyncio.shield(self.execute(*args)), timeout)


class Dispatcher:
    def __init__(self, conn):
        self.conn = conn
        self.done = collections.Counter()

    async def poll_urgent(self):
        while True:
            try:
                job = await self.conn.call("BLPOP", "jobs:urgent", 0.4, timeout=0.5)
            except asyncio.TimeoutError:
                await self.conn.execute("SET", "dispatcher:urgent_idle_since", int(time.time()))
                continue
            if job != "nil":
                await asyncio.sleep(0.01)  # send the password-reset mail
                self.done["urgent"] += 1

    async def run_bulk(self):
        while True:
            job = await self.conn.execute("RPOP", "jobs:bulk")
            if job == "nil":
                await asyncio.sleep(0.2)
                continue
            await asyncio.sleep(0.02)  # render the newsletter
            await self.conn.execute("INCR", "stats:bulk_done")
            self.done["bulk"] += 1


async def web_frontend(port, urgent_jobs):
    conn = await BrokerConnection.open(port)
    n = 0
    while True:
        n += 1
        await conn.execute("LPUSH", "jobs:bulk", f"newsletter-{n}")
        if urgent_jobs:
            await conn.execute("LPUSH", "jobs:urgent", urgent_jobs.pop())
        await asyncio.sleep(0.4)


async def main():
    broker = Broker()
    server = await asyncio.start_server(broker.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dispatcher = Dispatcher(await BrokerConnection.open(port))
    urgent_jobs = [f"reset-{user}" for user in ("carol", "bob", "alice")]
    tasks = [asyncio.create_task(web_frontend(port, urgent_jobs)),
             asyncio.create_task(dispatcher.poll_urgent())]
    tasks += [asyncio.create_task(dispatcher.run_bulk()) for _ in range(3)]
    await asyncio.sleep(2.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

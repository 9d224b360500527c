"""A nightly bucket-sync service whose copiers are left behind when the lister fails inside ``gather``.

Modelled on python/cpython #75633 (bpo-31452): "asyncio.gather does not cancel tasks if one
fails": with ``return_exceptions=False`` the first exception propagates to the caller at
once, while the other awaitables are not cancelled and keep running (or waiting) on their
own, with nobody left to stop them.

Here ``sync_bucket`` mirrors one bucket of an object store (a loopback server) by gathering
``list_objects``, which pages through the listing and puts keys on a bounded queue (then
one ``None`` per copier), with two ``copy_objects`` tasks that take keys off the queue.
The "media" bucket's second listing page is denied (a prefix with a stricter ACL): the
lister raises PermissionError, ``gather`` hands it to ``sync_bucket``, which records the
bucket as failed and the run moves on to the next bucket.  The two media copiers were
never cancelled and wait in ``Queue.get`` forever for keys or end markers that the dead
lister was to send, each keeping its store connection open and its place in the service's
in-flight set (which shutdown waits on).  Healthy: the other buckets
sync, the audit writer idles on ``Queue.get``, the health probe pings every 0.3 s, the
sync loop sleeps until the next night.  The fix cancels the other children on failure.
"""
import asyncio
import json
import signal

BUCKETS = {"invoices": 3, "media": 4, "logs": 2}  # pages of keys in each bucket
DENIED = {("media", 1)}  # listing pages the service account may not read


async def store_handle(reader, writer):
    """The object store: LIST bucket page, COPY bucket/key, PING."""
    try:
        while line := await reader.readline():
            cmd, arg, *rest = line.decode().split()
            if cmd == "LIST":
                bucket, page = arg, int(rest[0])
                if (bucket, page) in DENIED:
                    reply = {"error": "AccessDenied"}
                else:
                    last = page + 1 >= BUCKETS[bucket]
                    reply = {"keys": [f"{bucket}-{page}-{i}" for i in range(5)], "next": None if last else page + 1}
                writer.write(json.dumps(reply).encode() + b"\n")
            elif cmd == "COPY":
                await asyncio.sleep(0.02)
                writer.write(f"ok {arg} {len(arg) * 1024}\n".encode())
            else:
                writer.write(b"pong\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def list_objects(port, bucket, todo, copiers):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        page = 0
        while page is not None:
            writer.write(f"LIST {bucket} {page}\n".encode())
            reply = json.loads(await reader.readline())
            if "error" in reply:
                raise PermissionError(f"{bucket}: {reply['error']} listing page {page}")
            for key in reply["keys"]:
                await todo.put(key)
            page = reply["next"]
        for _ in range(copiers):
            await todo.put(None)
    finally:
        writer.close()


async def copy_objects(port, bucket, todo, copied, inflight):
    inflight.add(asyncio.current_task())  # shutdown waits for copies in flight
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (key := await todo.get()) is not None:
            writer.write(f"COPY {bucket}/{key}\n".encode())
            await reader.readline()
            copied.append(key)
    finally:
        writer.close()
        inflight.discard(asyncio.current_task())


async def sync_bucket(port, bucket, copied, audit, inflight):
    todo = asyncio.Queue(maxsize=8)
    children = [list_objects(port, bucket, todo, 2), copy_objects(port, bucket, todo, copied, inflight),
                copy_objects(port, bucket, todo, copied, inflight)]
    try:
        await asyncio.gather(*children)
        audit.put_nowait((bucket, "ok"))
    except Exception as exc:
        audit.put_nowait((bucket, f"failed: {exc}"))


async def sync_loop(port, copied, audit, finished, inflight):
    while True:
        for bucket in BUCKETS:
            await sync_bucket(port, bucket, copied, audit, inflight)
        finished.set()
        await asyncio.sleep(86400)  # next night


async def audit_writer(audit, lines):
    while True:
        bucket, outcome = await audit.get()
        lines.append(f"sync {bucket}: {outcome}")


async def health_probe(port, samples):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"PING store\n")
        samples.append(await reader.readline())
        del samples[:-20]
        await asyncio.sleep(0.3)


async def main():
    server = await asyncio.start_server(store_handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    copied, audit, lines, samples, finished, inflight = [], asyncio.Queue(), [], [], asyncio.Event(), set()
    tasks = [asyncio.create_task(sync_loop(port, copied, audit, finished, inflight)),
             asyncio.create_task(audit_writer(audit, lines)),
             asyncio.create_task(health_probe(port, samples))]
    await finished.wait()
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    if inflight:
        await asyncio.wait(inflight, timeout=2.0)
    server.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

"""An HTTP protocol resolves the local host name in data_received for Host-less probes, stalling the loop.

Modelled on aio-libs/aiohttp #9308: "Calling BaseRequest.host can do blocking I/O if the
host header is missing": when a request had no Host header the server fell back to
``socket.getfqdn()``, which is not async safe and blocks the loop while the name is
resolved (``/etc/hosts``, then a DNS query).

Here ``HttpProtocol.data_received`` (an ``asyncio.Protocol`` callback, not a task) builds
each answer with the request's host, falling back to ``local_fqdn()`` when the Host
header is missing.  The health prober sends HTTP/1.0 requests without one about once a
second; on this box the resolver answers slowly (0.25-0.7 s, simulated: no real lookup
is made), so the loop stalls in the callback about once a second while the API clients
wait.  No task is stuck.  The fix resolves the name once, in a worker thread, at startup.
"""
import asyncio
import random
import signal
import time


def local_fqdn(rng):
    """What ``socket.getfqdn()`` returns here, after the resolver's slow answer."""
    time.sleep(rng.uniform(0.25, 0.7))
    return "node-7.internal"


def parse(head):
    lines = head.decode("latin-1").split("\r\n")
    method, path, version = lines[0].split(" ")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, path, version, headers


class HttpProtocol(asyncio.Protocol):
    def __init__(self, app):
        self.app = app
        self.buffer = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            method, path, version, headers = parse(head)
            host = headers.get("host") or self.app.host_name()
            body = f"{method} {path} served by {host}\n".encode()
            self.app.served += 1
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            if version == "HTTP/1.0":
                self.transport.close()


class App:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.served = 0

    def host_name(self):
        return local_fqdn(self.rng)


async def api_client(port, name, latencies):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        started = time.monotonic()
        writer.write(f"GET /quotes/{name} HTTP/1.1\r\nHost: api.local\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        await reader.readline()
        latencies.append(time.monotonic() - started)
        del latencies[:-50]
        await asyncio.sleep(0.2)


async def health_probe(port, results):
    while True:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.0\r\n\r\n")
        results.append(await reader.read())
        del results[:-10]
        writer.close()
        await asyncio.sleep(1.0)


async def main():
    app = App(seed=7)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(app), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    latencies, results = [], []
    tasks = [asyncio.create_task(api_client(port, name, latencies)) for name in ("eur", "usd", "jpy")]
    tasks.append(asyncio.create_task(health_probe(port, results)))
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

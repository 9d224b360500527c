"""A coordinator whose blocking HTTP call runs in an executor thread with no timeout.

Modelled on PyTado #23, "Add timeout of 10 seconds to all calls" (Home Assistant issue #30507):
the library's HTTP requests had no timeout, so a cloud endpoint that accepted a connection and never
answered left a SyncWorker executor thread blocked in a socket read forever, and the integration's
update never finished.

Mechanism: a heating service polls three zones of a thermostat cloud API (a plain HTTP server on
127.0.0.1, in a thread, as a remote service would be) through ``run_in_executor`` and ``urlopen``.
The API accepts the request for zone 3 and never answers; the executor thread waits in ``recv``
and the zone coordinator waits on it forever.  A weather poller using the same executor keeps
working.

Fix: pass a timeout to ``urlopen``; the call fails after half a second, the coordinator logs the zone
as unavailable and polls again on its next round.
"""
import asyncio
import json
import signal
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CloudApi(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/api/zones/3/state":
            self.server.closing.wait()  # the backend behind this zone never answers
            return
        body = json.dumps({"path": self.path, "temperature": 20.5}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class ThermostatApi:
    def __init__(self, base):
        self.base = base
        self.requests = 0

    def get(self, path):
        self.requests += 1
        with urllib.request.urlopen(self.base + path) as response:
            return json.load(response)


async def update_zones(api, states):
    loop = asyncio.get_running_loop()
    while True:
        for zone in (1, 2, 3):
            try:
                states[zone] = await loop.run_in_executor(None, api.get, f"/api/zones/{zone}/state")
            except OSError as exc:
                states[zone] = exc
        await asyncio.sleep(1.0)


async def poll_weather(api, states):
    loop = asyncio.get_running_loop()
    while True:
        states["outside"] = await loop.run_in_executor(None, api.get, "/api/weather")
        await asyncio.sleep(0.5)


async def history_writer(history):
    rows = []
    while True:
        zone, state = await history.get()
        rows.append((zone, state))
        del rows[:-1000]
        history.task_done()


async def main():
    loop = asyncio.get_running_loop()
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), CloudApi)
    upstream.daemon_threads = True
    upstream.closing = threading.Event()
    threading.Thread(target=upstream.serve_forever, name="thermostat-cloud", daemon=True).start()
    api = ThermostatApi(f"http://127.0.0.1:{upstream.server_address[1]}")
    states, history = {}, asyncio.Queue()
    tasks = [asyncio.create_task(update_zones(api, states), name="zones"),
             asyncio.create_task(poll_weather(api, states), name="weather"),
             *(asyncio.create_task(history_writer(history), name=f"history-{i}") for i in range(2))]
    while 2 not in states or api.requests < 4:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        upstream.closing.set()
        upstream.server_close()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

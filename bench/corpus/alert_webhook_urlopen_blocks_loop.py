"""An ingest service posts its rejection alerts to a chat webhook with a synchronous HTTP call, stalling the loop.

Modelled on potpie-ai/potpie #631: "[Bug] Synchronous requests.post() blocks async event
loop in Slack notification functions": ``async def`` notification helpers posted to a
Slack webhook with a blocking HTTP client, so the whole event loop (every concurrent
request) stalled for as long as the webhook took to answer.

Here the ingest server rejects a malformed document from a partner feed every second or
two and queues an alert; ``Alerter.run`` sends it with ``Alerter.notify``, an ``async
def`` that calls ``post_json`` (``urllib.request``, blocking) on the loop thread.  The
webhook (a threaded HTTP server in the same process, on 127.0.0.1) takes 0.2-0.6 s to
answer, so the loop stalls that long every time while the upload clients wait.  No task
is stuck.  The fix sends the request from a worker thread with ``asyncio.to_thread``.
"""
import asyncio
import http.server
import json
import random
import signal
import threading
import time
import urllib.request


class SlowWebhook(http.server.BaseHTTPRequestHandler):
    """The chat service's incoming-webhook endpoint: it answers, slowly."""
    rng = random.Random(11)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.rng.uniform(0.2, 0.6))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def post_json(opener, url, payload):
    body = json.dumps(payload).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with opener.open(request, timeout=5) as response:
        return response.status


class Alerter:
    def __init__(self, url):
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the webhook is internal
        self.alerts = asyncio.Queue()
        self.sent = 0

    async def notify(self, text):
        status = post_json(self.opener, self.url, {"text": text})
        if status == 200:
            self.sent += 1

    async def run(self):
        while True:
            text = await self.alerts.get()
            await self.notify(text)


class Ingest:
    def __init__(self, alerter):
        self.alerter = alerter
        self.accepted = 0

    async def handle(self, reader, writer):
        while line := await reader.readline():
            try:
                doc = json.loads(line)
            except ValueError:
                self.alerter.alerts.put_nowait(f"rejected a malformed document: {line[:40]!r}")
                writer.write(b"rejected\n")
            else:
                self.accepted += 1
                writer.write(b"accepted %d\n" % doc["seq"])
            await writer.drain()
        writer.close()


async def upload_client(port, feed, seed, latencies):
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seq = 0
    next_bad = rng.randint(8, 14)
    while True:
        seq += 1
        doc = json.dumps({"feed": feed, "seq": seq, "value": rng.random()})
        if feed == "partner" and seq == next_bad:
            doc, next_bad = doc[:-7], seq + rng.randint(8, 14)  # a truncated record
        started = time.monotonic()
        writer.write(doc.encode() + b"\n")
        await reader.readline()
        latencies.append(time.monotonic() - started)
        del latencies[:-50]
        await asyncio.sleep(0.1)


async def main():
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowWebhook)
    threading.Thread(target=hook.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        alerter = Alerter("http://127.0.0.1:%d/hooks/ingest-alerts" % hook.server_address[1])
        ingest = Ingest(alerter)
        server = await asyncio.start_server(ingest.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        latencies = []
        tasks = [asyncio.create_task(alerter.run())]
        tasks += [asyncio.create_task(upload_client(port, feed, seed, latencies))
                  for seed, feed in enumerate(("partner", "sensors", "billing"))]
        await asyncio.sleep(2.0)
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()
        del tasks
    finally:
        hook.shutdown()
        hook.server_close()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

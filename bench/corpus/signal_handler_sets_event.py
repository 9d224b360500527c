"""A drain-on-SIGUSR1 whose event is set from a plain signal handler.

Modelled on CPython gh-122938: "Asyncio.Event.wait doesn't resume execution when the
event is set if no other tasks are active": ``signal.signal`` installed a handler that
called ``event.set()``; the handler ran, the waiter was scheduled, but the loop went back
to sleep in its selector and the waiter never resumed until something else woke it.

Here an operator sends SIGUSR1 to ask a service to drain its work queue.  The handler,
installed with ``signal.signal``, sets an asyncio Event; ``drain_on_request`` awaits it.
The service is otherwise idle (a server, workers on a queue), so the drain never starts.
The fix installs the handler with ``loop.add_signal_handler``, which wakes the loop.
"""
import asyncio
import os
import signal
import threading


class Service:
    def __init__(self):
        self.drain_requested = asyncio.Event()
        self.jobs = asyncio.Queue()
        self.signalled = False

    def on_sigusr1(self, signum=None, frame=None):
        self.signalled = True
        self.drain_requested.set()


async def drain_on_request(service):
    await service.drain_requested.wait()
    while not service.jobs.empty():
        service.jobs.get_nowait()
        service.jobs.task_done()
    print("drained", flush=True)


async def worker(jobs):
    while True:
        await jobs.get()
        jobs.task_done()


async def serve_client(reader, writer):
    await reader.read()
    writer.close()


def operator(pid, service):
    pause = threading.Event()
    pause.wait(0.3)
    os.kill(pid, signal.SIGUSR1)  # an operator's `kill -USR1`, while the service idles
    while not service.signalled:
        pause.wait(0.05)
    print("ready", flush=True)


async def main():
    loop = asyncio.get_running_loop()
    service = Service()
    signal.signal(signal.SIGUSR1, service.on_sigusr1)
    server = await asyncio.start_server(serve_client, "127.0.0.1", 0)
    workers = [asyncio.create_task(worker(service.jobs), name=f"worker-{i}") for i in range(2)]
    drainer = asyncio.create_task(drain_on_request(service), name="drain")
    threading.Thread(target=operator, args=(os.getpid(), service), daemon=True).start()
    try:
        await asyncio.Event().wait()  # serve until SIGTERM ends the process
    finally:
        server.close()
        del workers, drainer


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

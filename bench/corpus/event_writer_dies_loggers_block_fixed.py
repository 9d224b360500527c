"""A training job's event writer whose background write task dies on a diverged loss; loggers then block.

Modelled on tensorflow/tensorboard #6167: "EventFileWriter can hang on exception in the
background thread": the writer's background thread died of an exception that nobody was
told about, and its callers then blocked for good: adding an event waited on the full
bounded queue, and flush() waited on a join that no worker would ever complete.

Here ``EventWriter._run`` batches the trainers' scalars from a bounded queue into an event
log (in a temporary directory), encoding each as strict JSON.  One trainer was started with
a mistyped learning rate and its loss overflows to infinity; encoding that value raises
ValueError and the write task ends with the exception, which nothing retrieves.  Both
``Trainer.run`` tasks keep logging until the queue is full and then wait in ``put``
forever, and ``checkpoint`` waits forever in ``flush()`` (``Queue.join``) for the events
the dead task had taken and never marked done.  The status server, its dashboard client
and the report worker keep working.  The fix drops (and counts) an event it cannot encode.
"""
import asyncio
import functools
import json
import os
import signal
import tempfile


class EventWriter:
    def __init__(self, path, max_queue=16, batch=8):
        self.path = path
        self.queue = asyncio.Queue(maxsize=max_queue)
        self.batch = batch
        self.written = 0
        self.dropped = 0
        self.task = asyncio.create_task(self._run())

    async def add_scalar(self, tag, value, step):
        await self.queue.put({"tag": tag, "value": value, "step": step})

    async def flush(self):
        await self.queue.join()

    async def _run(self):
        pending = []
        with open(self.path, "a") as log:
            while True:
                event = await self.queue.get()
                try:
                    pending.append(json.dumps(event, allow_nan=False))
                except ValueError:  # a non-finite value: strict JSON cannot carry it
                    self.dropped += 1
                    self.queue.task_done()
                if pending and (len(pending) >= self.batch or self.queue.empty()):
                    log.write("\n".join(pending) + "\n")
                    log.flush()
                    self.written += len(pending)
                    for _ in pending:
                        self.queue.task_done()
                    pending.clear()


class Trainer:
    def __init__(self, name, lr, writer):
        self.name, self.lr, self.writer = name, lr, writer
        self.step = 0
        self.weight = 1.5

    def train_step(self):
        # gradient descent on a toy quadratic: converges for small lr, explodes for a large one
        self.weight -= self.lr * 2 * self.weight
        return self.weight * self.weight

    async def run(self):
        while True:
            await asyncio.sleep(0.02)
            self.step += 1
            loss = self.train_step()
            await self.writer.add_scalar(f"{self.name}/loss", loss, self.step)


async def checkpoint(writer, trainers, directory):
    saved = 0
    while True:
        await asyncio.sleep(0.5)
        await writer.flush()  # the events up to a checkpoint must be on disk before it
        saved += 1
        state = {t.name: {"step": t.step, "weight": t.weight} for t in trainers}
        with open(os.path.join(directory, "ckpt-%d.json" % (saved % 3)), "w") as f:
            json.dump(state, f)


async def report_worker(reports, trainers, done):
    while True:
        reply = await reports.get()
        reply.set_result(" ".join(f"{t.name}:{t.step}" for t in trainers))
        done.append(reply.result())
        del done[:-10]


async def handle(trainers, writer, reports, reader, stream):
    while line := await reader.readline():
        if line.strip() == b"report":
            reply = asyncio.get_running_loop().create_future()
            reports.put_nowait(reply)
            text = await reply
        else:
            text = json.dumps({"steps": {t.name: t.step for t in trainers}, "written": writer.written})
        stream.write(text.encode() + b"\n")
        await stream.drain()
    stream.close()


async def dashboard(port, samples):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    while True:
        n += 1
        writer.write(b"report\n" if n % 15 == 0 else b"status\n")
        samples.append(await reader.readline())
        del samples[:-20]
        await asyncio.sleep(0.2)


async def main():
    with tempfile.TemporaryDirectory() as tmp:
        writer = EventWriter(os.path.join(tmp, "events.log"))
        trainers = [Trainer("resnet-a", 0.05, writer), Trainer("resnet-b", 3e3, writer)]  # meant 3e-3
        reports, done, samples = asyncio.Queue(), [], []
        server = await asyncio.start_server(functools.partial(handle, trainers, writer, reports), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tasks = [asyncio.create_task(t.run()) for t in trainers]
        tasks += [asyncio.create_task(checkpoint(writer, trainers, tmp)),
                  asyncio.create_task(report_worker(reports, trainers, done)),
                  asyncio.create_task(dashboard(port, samples))]
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

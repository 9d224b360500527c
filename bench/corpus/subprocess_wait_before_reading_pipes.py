"""A code runner waits for its child to exit before reading the child's output pipes.

Modelled on bojieli/ai-agent-book #100, "_run_command reads the subprocess pipes only after
wait(), so >256 KB of output deadlocks": the runner awaited ``process.wait()`` and only then read
stdout and stderr.  Nothing drained the pipes while the child ran, so once about 256 KB had
accumulated the parent's reader paused its transport, the OS pipe filled, the child blocked in
``write()`` and ``wait()`` never returned.

Mechanism: an execution service runs snippets in child interpreters.  A small snippet finishes;
a snippet that prints a large report fills the pipe and blocks; its job waits in ``wait()``
forever.  Two request workers idle on the job queue and a metrics ticker keep running and must
stay quiet.

Fix: read both pipes while waiting (``communicate()``).
"""
import asyncio
import signal
import sys


async def run_snippet(code):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await proc.wait()
    out = await proc.stdout.read()
    err = await proc.stderr.read()
    return proc.returncode, out, err


async def execute(job_id, code, results):
    results[job_id] = await run_snippet(code)


async def request_worker(jobs):
    while True:
        job = await jobs.get()
        job.set_result(None)
        jobs.task_done()


async def metrics(beats):
    while True:
        await asyncio.sleep(0.1)
        beats.append(1)


async def main():
    results, jobs, beats = {}, asyncio.Queue(), []
    tasks = [asyncio.create_task(request_worker(jobs), name=f"request-{i}") for i in range(2)]
    tasks.append(asyncio.create_task(metrics(beats), name="metrics"))
    tasks.append(asyncio.create_task(execute("small", "print(sum(range(10)))", results), name="job-small"))
    tasks.append(asyncio.create_task(execute("report", "print('row,' * 500_000)", results), name="job-report"))
    while len(results) < 2 and len(beats) < 20:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

"""The target's memory while many clients ask for distinct full dumps at once:
python bench/dump_memory.py [--tasks 60000] [--clients 30]

A program with ``--tasks`` pending tasks (three coroutines deep, names of 50 characters)
runs under ``diag run`` with a unix-socket agent.  Then, one condition after the other,
``--clients`` threads ask for a full dump at the same moment, each with its own
``limit`` so that no two answers are the same (no answer can be shared):

- ``/1 whole``: ``GET /debug/diag/tasks?debug=2`` over HTTP, the ``diag.tasks/1`` answer
  built whole (what older clients and scripts read);
- ``/2 streamed``: ``diag tasks --debug 2 --format json`` (the CLI asks for the compact
  ``diag.tasks/2`` form, streamed as it is built).

Reported for each: the target's RSS before the clients start, its peak while they run
(read from /proc every 20 ms), what it keeps 3 s after the last answer, and the clients'
outcomes (answers, and 503 refusals: the agent builds one big answer at a time and
refuses a request that waited 20 s for its turn).
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = '''
import asyncio, sys
async def leaf(ev): await ev.wait()
async def mid(ev): await leaf(ev)
async def top(ev): await mid(ev)
async def main():
    ev = asyncio.Event()
    tasks = [asyncio.create_task(top(ev), name=f"worker-{i:07d}-" + "x" * 36) for i in range(int(sys.argv[1]))]
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
'''


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def whole_dump(sock: str, limit: int) -> str:
    conn = _UnixConnection(sock, timeout=120)
    try:
        conn.request("GET", f"/debug/diag/tasks?debug=2&limit={limit}")
        resp = conn.getresponse()
        body = resp.read()
        return "answer" if resp.status == 200 and body else f"HTTP {resp.status}"
    finally:
        conn.close()


def cli_dump(sock: str, limit: int) -> str:
    proc = subprocess.run([sys.executable, "-m", "diag", "tasks", "unix:" + sock, "--debug", "2", "--format", "json",
                           "--limit", str(limit), "--timeout", "120"], cwd=ROOT, capture_output=True, timeout=300)
    if proc.returncode == 0 and proc.stdout:
        return "answer"
    return "HTTP 503" if b"HTTP 503" in proc.stderr else f"exit {proc.returncode}"


def condition(name: str, dump, sock: str, pid: int, clients: int, tasks: int) -> None:
    time.sleep(1.0)  # what the last condition left is freed
    before = rss_mb(pid)
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.02)

    outcomes: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        try:
            outcome = dump(sock, tasks + 10 + i)
        except Exception as err:
            outcome = type(err).__name__
        with lock:
            outcomes.append(outcome)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    time.sleep(3.0)
    done.set()
    watcher.join()
    kept = rss_mb(pid)
    counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    print(f"{name:<12} {before:>7.0f} {peak[0]:>7.0f} {peak[0] - before:>+7.0f} {kept:>7.0f} {took:>7.1f}  "
          + ", ".join(f"{n} {o}" for o, n in counts.items()), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=60_000)
    parser.add_argument("--clients", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / "pending.py"
        program.write_text(PROGRAM)
        sock = f"{tmp}/agent.sock"
        proc = subprocess.Popen([sys.executable, "-m", "diag", "run", "--agent", "unix:" + sock, "--",
                                 sys.executable, str(program), str(args.tasks)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                print("the program did not start", file=sys.stderr)
                return 1
            print(f"{args.tasks} pending tasks, {args.clients} clients at once, each asking for a distinct full dump; "
                  f"Python {sys.version.split()[0]}")
            print(f"{'condition':<12} {'RSS MB':>7} {'peak':>7} {'growth':>7} {'3 s on':>7} {'secs':>7}  outcomes")
            condition("/1 whole", whole_dump, sock, proc.pid, args.clients, args.tasks)
            condition("/2 streamed", cli_dump, sock, proc.pid, args.clients, args.tasks)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

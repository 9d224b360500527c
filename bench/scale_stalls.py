"""How long each command stalls the target's loop at scale: python bench/scale_stalls.py [--tasks N ...]

A real target under ``diag run`` holds N pending tasks, each three coroutines deep on one
Event, and a 1 ms ticker that reports every gap of its loop over 50 ms.  Each command runs
as the CLI over a unix socket, one after the other, with a pause between; the worst gap
seen while it ran is its stall.  The proof of ``diag leaks`` pauses the program on purpose
(it keeps the GIL so the object graph cannot change while it is marked; ``--proof-budget``
bounds it); every other step yields the GIL in slices.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

TARGET = textwrap.dedent("""
    import asyncio, os, time
    N = int(os.environ["N"])
    async def leaf(ev): await ev.wait()
    async def mid(ev): await leaf(ev)
    async def top(ev): await mid(ev)
    async def ticker():
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.001)
            now = time.monotonic()
            if now - last > 0.05:
                print(f"gap {now - last:.3f}", flush=True)
            last = now
    async def main():
        ev = asyncio.Event()
        tasks = [asyncio.create_task(top(ev)) for _ in range(N)]
        await asyncio.sleep(0.5)
        asyncio.create_task(ticker())
        print("ready", flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main())
""")

COMMANDS = (("tasks",), ("tasks", "--debug", "2", "--format", "json"), ("sync",),
            ("leaks", "--min-wait", "1"), ("leaks", "--min-wait", "1", "--proof-budget", "10"),
            ("leaks", "--min-wait", "1", "--no-proof"), ("objects",), ("top", "--once"),
            ("profile", "--mode", "sample", "--seconds", "2"), ("profile", "--seconds", "2"))


def run(n: int) -> list[tuple[str, int, float, float]]:
    diag = str(Path(sys.executable).with_name("diag"))
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "target.py"
        script.write_text(TARGET)
        sock = f"unix:{tmp}/agent.sock"
        proc = subprocess.Popen([diag, "run", "--agent", sock, "--", sys.executable, str(script)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "N": str(n)})
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True).start()
        try:
            deadline = time.monotonic() + 120
            while "ready\n" not in lines:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the target did not start")
                time.sleep(0.1)
            time.sleep(3)  # past the start-up's own stalls (making N tasks)
            rows = []
            for cmd in COMMANDS:
                before = len(lines)
                started = time.monotonic()
                done = subprocess.run([diag, cmd[0], sock, *cmd[1:], "--timeout", "120"], capture_output=True)
                took = time.monotonic() - started
                time.sleep(1.0)  # the ticker reports a gap when it ends
                gaps = [float(m.group(1)) for line in lines[before:] if (m := re.match(r"gap ([\d.]+)", line))]
                rows.append((" ".join(cmd), done.returncode, took, max(gaps, default=0.0)))
            return rows
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[100_000, 200_000])
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}")
    print("| tasks | command | exit | took | worst loop stall |")
    print("| --- | --- | --- | --- | --- |")
    for n in args.tasks:
        for cmd, code, took, stall in run(n):
            print(f"| {n:,} | `diag {cmd}` | {code} | {took:.1f} s | {stall:.2f} s |", flush=True)


if __name__ == "__main__":
    main()

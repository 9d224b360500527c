"""How long ``diag attach`` takes and how long the target stops meanwhile:
python bench/attach_bench.py [--rounds N] [--tasks N] [--gdb]

Each round starts a fresh target (a loop with ``--tasks`` pending tasks and one ticker
that wakes every millisecond and logs every gap over 2 ms with its wall-clock start),
attaches to it, and reports: the attach's own wall time (``diag.attach.attach`` in this
process), the ``diag attach`` command's wall time (a new Python process, imports
included), and the target's longest gap from the start of the attach to 0.5 s after it
answered, next to the longest gap in an equal window just before (the machine's own
noise).  ``--gdb`` also loads the same staged library with gdb's ``call dlopen`` (what a
gdb-based attach would do) to compare the two mechanisms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diag.attach import attach, detach, inject, records  # noqa: E402
from diag.attach.process import read_facts  # noqa: E402

TARGET = """
import asyncio, sys, time

async def idle(event):
    await event.wait()

async def main():
    event = asyncio.Event()
    keep = [asyncio.create_task(idle(event)) for _ in range(int(sys.argv[1]))]
    last = time.perf_counter()
    print("ready", flush=True)
    while True:
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        if now - last > 0.002:
            print(f"gap {time.time() - (now - last):.6f} {now - last:.6f}", flush=True)
        last = now

if sys.argv[2] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


class Target:
    def __init__(self, tasks: int, loop: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="diag-attach-bench-"))
        (self.dir / "app.py").write_text(textwrap.dedent(TARGET))
        self.out = self.dir / "out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "app.py", str(tasks), loop], cwd=self.dir, stdout=out)
        deadline = time.monotonic() + 30
        while "ready" not in self.out.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the target did not start")
            time.sleep(0.02)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest gap (seconds) that overlaps [start, end] in wall-clock time."""
        worst = 0.0
        for line in self.out.read_text().splitlines():
            if line.startswith("gap "):
                _, begin, length = line.split()
                b, n = float(begin), float(length)
                if b <= end and b + n >= start:
                    worst = max(worst, n)
        return worst

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        records.remove_record(self.proc.pid)
        (records.user_dir(os.geteuid()) / f"{self.proc.pid}.sock").unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def one_round(tasks: int, loop: str) -> tuple[float, float, float, float]:
    target = Target(tasks, loop)
    try:
        time.sleep(1.0)  # settle, then an equal quiet window as the baseline
        start = time.time()
        done = attach(target.proc.pid)
        end = time.time()
        time.sleep(0.5)
        paused = target.longest_gap(start, end + 0.5)
        baseline = target.longest_gap(start - (end - start) - 0.5, start - 0.001)
        detach(target.proc.pid)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "diag", "attach", str(target.proc.pid)], check=True,
                       capture_output=True)
        cli = time.monotonic() - t0
        return done.seconds, cli, paused, baseline
    finally:
        target.close()


def gdb_round(tasks: int) -> tuple[float, float, bool]:
    target = Target(tasks, "asyncio")
    try:
        time.sleep(1.0)
        facts = read_facts(target.proc.pid)
        staged = inject.stage({"action": "attach", "address": records.default_address(facts.pid, facts.uid),
                               "paths": []}, facts.uid)
        start = time.time()
        subprocess.run(["gdb", "-p", str(target.proc.pid), "-batch", "-nx", "-ex",
                        f'call (void*)dlopen("{staged.library}", 2)'], capture_output=True)
        end = time.time()
        time.sleep(0.5)
        ran = staged.result() is not None or not staged.order_file.exists()
        staged.remove()
        return end - start, target.longest_gap(start, end + 0.5), ran
    finally:
        target.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--gdb", action="store_true", help="also time gdb's call dlopen of the same library")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {args.tasks} pending tasks in the target, {args.rounds} rounds, "
          f"{os.cpu_count()} cpus")
    for loop in ("asyncio", "uvloop"):
        rows = [one_round(args.tasks, loop) for _ in range(args.rounds)]
        for name, i in (("attach (in process)", 0), ("diag attach (command)", 1),
                        ("target's longest pause", 2), ("longest pause before", 3)):
            values = [r[i] * 1000 for r in rows]
            print(f"{loop:8} {name:24} median {statistics.median(values):7.1f} ms  max {max(values):7.1f} ms")
    if args.gdb and shutil.which("gdb"):
        rows_gdb = [gdb_round(args.tasks) for _ in range(args.rounds)]
        print(f"gdb      call dlopen              median {statistics.median(r[0] for r in rows_gdb) * 1000:7.1f} ms, "
              f"pause median {statistics.median(r[1] for r in rows_gdb) * 1000:7.1f} ms, "
              f"library ran in {sum(r[2] for r in rows_gdb)} of {len(rows_gdb)}")


if __name__ == "__main__":
    main()

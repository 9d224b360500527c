"""Grouped against full task dumps, side by side: python bench/full_dump.py [--tasks N] [--rounds R]

A target holds N pending tasks, each three coroutines deep on one Event, with the agent
(``diag run``) and a 1 ms ticker on its loop.  Rounds alternate between:

- grouped: ``diag tasks URL --format json``;
- full JSON: ``diag tasks URL --format json --debug 2 --limit N+10`` (every task);
- full text: ``diag tasks URL --format text --debug 2 --limit N+10``.

For each: the end-to-end time (CLI start-up included, its output written to a file,
``PYTHONUNBUFFERED=1`` as in many container images), the target loop's worst stall
meanwhile, and the target's memory growth (peak RSS during the dump over RSS before).
Then the bytes on the wire of the full dump: ``diag.tasks/2`` as the CLI asks for it
(gzip), uncompressed, and ``diag.tasks/1`` as older clients get it.  aiomonitor's task
list and py-spy's asyncio dump are not run here: neither is installed in this
environment.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import asyncio, os, signal, sys, time
async def leaf(e): await e.wait()
async def middle(e): await leaf(e)
async def top(e): await middle(e)
worst = 0.0
gc_worst = [0.0, 0.0]  # the longest full collection since the last report, and when the current began
def on_gc(phase, info):
    if info["generation"] == 2:
        if phase == "start":
            gc_worst[1] = time.perf_counter()
        else:
            gc_worst[0] = max(gc_worst[0], time.perf_counter() - gc_worst[1])
import gc
gc.callbacks.append(on_gc)
def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0
def report():  # SIGUSR1: the loop's worst lateness and peak RSS since the last report, RSS now
    global worst
    print(f"{worst:.4f} {rss('VmHWM:')} {rss('VmRSS:')} {gc_worst[0]:.4f}", flush=True)
    worst = 0.0
    gc_worst[0] = 0.0
    try:  # peak RSS starts again from here
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
async def main():
    global worst
    e = asyncio.Event()
    ts = [asyncio.create_task(top(e)) for _ in range(int(sys.argv[1]))]
    await asyncio.sleep(1)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report)
    print("ready", flush=True)
    while True:  # a 1 ms ticker: how late the loop gets to run it
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - t0 - 0.001)
asyncio.run(main())
"""


def wire_bytes(url: str, query: str, gzip: bool) -> tuple[int, int]:
    """(bytes on the wire, HTTP status) of one answer of the agent."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    conn.request("GET", f"/debug/diag/tasks?{query}", headers={"Accept-Encoding": "gzip"} if gzip else {})
    resp = conn.getresponse()
    size = 0
    while chunk := resp.read(1 << 20):
        size += len(chunk)
    conn.close()
    return size, resp.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.tasks
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    variants = {
        "nothing (the target alone for 2 s: the noise floor)": [],
        "grouped (--format json)": ["--format", "json"],
        "full JSON (--debug 2 --format json)": ["--debug", "2", "--format", "json", "--limit", str(n + 10)],
        "full text (--debug 2 --format text)": ["--debug", "2", "--format", "text", "--limit", str(n + 10)],
    }
    results: dict[str, dict[str, list[float]]] = {name: {"time": [], "stall": [], "growth": [], "full_gc": []} for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "holder.py"
        script.write_text(textwrap.dedent(HOLDER))
        addr = Path(tmp) / "addr"
        out_file = Path(tmp) / "out"
        proc = subprocess.Popen([sys.executable, "-m", "diag", "run", "--agent-file", str(addr), "--",
                                 sys.executable, str(script), str(n)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, text=True)

        def report() -> tuple[float, int, int]:
            assert proc.stdout is not None
            os.kill(proc.pid, signal.SIGUSR1)
            stall, peak, now, full_gc = proc.stdout.readline().split()
            gcs.append(float(full_gc))
            return float(stall), int(peak), int(now)

        gcs: list[float] = []
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            url = addr.read_text().strip()
            counts: dict[str, int] = {}
            for _ in range(args.rounds):
                for name, extra in variants.items():
                    time.sleep(0.3)  # past the agent's answer cache
                    _, _, before = report()
                    t0 = time.perf_counter()
                    if not extra:
                        time.sleep(2.0)
                    else:
                        with open(out_file, "w") as out:
                            subprocess.run([sys.executable, "-m", "diag", "tasks", url, *extra], stdout=out,
                                           env=env, check=True)
                    took = time.perf_counter() - t0
                    stall, peak, _ = report()
                    results[name]["time"].append(took)
                    results[name]["stall"].append(stall)
                    results[name]["growth"].append(max(0, peak - before))
                    results[name]["full_gc"].append(gcs[-1])
                    if "JSON" in name:
                        doc = json.loads(out_file.read_text())
                        counts[name] = len(doc["tasks"])
            time.sleep(0.3)
            full = f"debug=2&limit={n + 10}"
            sizes = {
                "diag.tasks/2, gzip (what the CLI gets)": wire_bytes(url, full + "&wire=2", True),
                "diag.tasks/2, uncompressed": wire_bytes(url, full + "&wire=2", False),
                "diag.tasks/1 (older clients; cut at 32 MiB)": wire_bytes(url, full, False),
            }
        finally:
            proc.kill()
            proc.wait()
    grouped = statistics.median(results["grouped (--format json)"]["time"])
    print(f"\n{n:,} pending tasks, three coroutines deep; Python {sys.version.split()[0]}; "
          f"{args.rounds} rounds, alternating\n")
    print("| | median end to end | ratio to grouped | worst target loop stall | target memory growth (worst) |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        median = statistics.median(r["time"])
        what = name if name.startswith("nothing") else f"`diag tasks URL` {name}"
        print(f"| {what} | {median:.2f} s | {median / grouped:.1f}x | "
              f"{max(r['stall']) * 1000:.0f} ms | {max(r['growth']) / 1e6:.0f} MB |")
    print()
    for name, r in results.items():
        print(f"- {name}: stalls of each round " + ", ".join(f"{s * 1000:.0f} ms" for s in r["stall"])
              + "; the target's longest full GC collection meanwhile "
              + ", ".join(f"{g * 1000:.0f} ms" for g in r["full_gc"]))
    for name, count in counts.items():
        print(f"- {name}: {count:,} tasks in the output")
    for name, (size, status) in sizes.items():
        print(f"- full dump on the wire, {name}: {size / 1e6:.2f} MB (HTTP {status})")


if __name__ == "__main__":
    main()

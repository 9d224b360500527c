"""Cost of holder tracking on a semaphore-heavy endpoint: python bench/holders_overhead.py

Two target servers carrying the agent, one with holder tracking off (``DIAG_HOLDERS=0``)
and one with it on, loaded in turn by wrk on ``/work/slow?ms=0`` (one work-pool
semaphore acquire and release per request), rounds interleaved with the order
alternating; the figure is the ratio of the median requests/s, and, steadier here, the server's CPU time per request
(from /proc) with and without. ``--same`` turns holder
tracking off on both servers: an A/A run that shows the bench's own noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402

from tests.support.target import TargetServer  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(server: TargetServer, url: str, seconds: int, connections: int) -> tuple[float, float]:
    """(requests/s, server CPU microseconds per request) of one wrk run."""
    assert server.proc is not None
    before = cpu_seconds(server.proc.pid)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
                         capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(server.proc.pid) - before
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, used / total * 1e6


async def _churn(sem: "asyncio.Semaphore", n: int) -> None:
    for _ in range(n):
        async with sem:
            pass


def micro(rounds: int = 7, n: int = 100_000) -> dict[str, float]:
    """In one process, interleaved: microseconds per ``async with semaphore`` with and
    without holder tracking (no noise from comparing two server processes)."""
    import asyncio

    from diag.collect import holders

    async def run() -> dict[str, float]:
        off, on = [], []
        for _ in range(rounds):
            for tracked, out in ((False, off), (True, on)):
                if tracked:
                    holders.install()
                sem = asyncio.Semaphore(10)
                start = time.perf_counter()
                await _churn(sem, n)
                out.append((time.perf_counter() - start) / n * 1e6)
                holders.uninstall()
        return {"acquire_release_us_off": round(min(off), 3), "acquire_release_us_on": round(min(on), 3),
                "added_us": round(min(on) - min(off), 3)}

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--same", action="store_true", help="A/A run: holder tracking off on both servers")
    parser.add_argument("--micro", action="store_true", help="only the in-process cost per acquire/release")
    args = parser.parse_args()
    if args.micro:
        print(json.dumps({"python": sys.version.split()[0], **micro()}, indent=2))
        return
    flags = ("--rate", "1000000", "--burst", "1000000", "--log-level", "WARNING", "--max-concurrency", "1000")
    path = "/work/slow?ms=0"
    second = {"DIAG_HOLDERS": "0"} if args.same else {}
    with TargetServer(*flags, env={"DIAG_HOLDERS": "0"}) as off, TargetServer(*flags, env=second) as on:
        a, b, cpu_a, cpu_b = [], [], [], []
        for i in range(args.rounds):
            # Alternate which server goes first: the second of two back-to-back runs is
            # measurably slower here even when both servers are identical (see --same).
            order = [(off, a, cpu_a), (on, b, cpu_b)]
            for server, rps_list, cpu_list in (order if i % 2 == 0 else order[::-1]):
                rps, cpu = measure(server, server.url + path, args.seconds, args.connections)
                rps_list.append(rps)
                cpu_list.append(cpu)
    print(json.dumps({
        "python": sys.version.split()[0], "path": path, "rounds": args.rounds, "seconds": args.seconds,
        "rps_holders_off": round(statistics.median(a)), "rps_holders_on": round(statistics.median(b)),
        "ratio": round(statistics.median(b) / statistics.median(a), 4),
        "cpu_us_per_request_off": round(statistics.median(cpu_a), 2),
        "cpu_us_per_request_on": round(statistics.median(cpu_b), 2),
        "cpu_ratio": round(statistics.median(cpu_b) / statistics.median(cpu_a), 4),
        "runs_off": [round(x) for x in a], "runs_on": [round(x) for x in b],
    }, indent=2))


if __name__ == "__main__":
    main()

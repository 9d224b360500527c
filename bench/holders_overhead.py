"""Cost of holder tracking on a semaphore-heavy endpoint: python bench/holders_overhead.py

Two target servers carrying the agent, one with holder tracking off (``DIAG_HOLDERS=0``)
and one with it on, loaded in turn by wrk on ``/work/slow?ms=0`` (one work-pool
semaphore acquire and release per request), rounds interleaved; the figure is the
ratio of the median requests/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.agent_overhead import wrk  # noqa: E402
from tests.support.target import TargetServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    flags = ("--rate", "1000000", "--burst", "1000000", "--log-level", "WARNING", "--max-concurrency", "1000")
    path = "/work/slow?ms=0"
    with TargetServer(*flags, env={"DIAG_HOLDERS": "0"}) as off, TargetServer(*flags) as on:
        a, b = [], []
        for _ in range(args.rounds):
            a.append(wrk(off.url + path, args.seconds, args.connections))
            b.append(wrk(on.url + path, args.seconds, args.connections))
    print(json.dumps({
        "python": sys.version.split()[0], "path": path, "rounds": args.rounds, "seconds": args.seconds,
        "rps_holders_off": round(statistics.median(a)), "rps_holders_on": round(statistics.median(b)),
        "ratio": round(statistics.median(b) / statistics.median(a), 4),
        "runs_off": [round(x) for x in a], "runs_on": [round(x) for x in b],
    }, indent=2))


if __name__ == "__main__":
    main()

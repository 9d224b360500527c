"""Requests/s of the target server with and without the diag agent: python bench/agent_overhead.py

Three target servers run side by side: one with ``--no-diag``, one carrying the agent
without its task factory (``DIAG_CREATORS=0``: heartbeat, wait sampler, routes), and one
with the full agent. wrk (Debian package ``wrk``)
loads one at a time over loopback, alternating A and B for several rounds so machine
noise hits both; the figure is the ratio of the medians. Optional ``--dump-clients N``
adds N clients dumping tasks in a loop (``--dump-interval`` apart) from the full
agent during its rounds; they run in this process, on the same two cores.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.target import TargetServer, get_json  # noqa: E402


def wrk(url: str, seconds: float, connections: int) -> float:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", url],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(match.group(1))


def dumper(url: str, stop: threading.Event, counts: list[int], interval: float) -> None:
    from diag.source import AgentSource
    from diag.analysis.task_groups import TaskQuery

    source = AgentSource(url, timeout=10)
    while not stop.is_set():
        source.tasks(TaskQuery(debug=1))
        counts[0] += 1
        stop.wait(interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--path", default="/")
    parser.add_argument("--dump-clients", type=int, default=0)
    parser.add_argument("--dump-interval", type=float, default=0.1, help="pause of each dumping client")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    flags = ("--rate", "1000000", "--burst", "1000000", "--log-level", "WARNING")
    with TargetServer(*flags, "--no-diag") as plain, \
            TargetServer(*flags, env={"DIAG_CREATORS": "0"}) as lean, TargetServer(*flags) as agent:
        agent_url = get_json(agent.url + "/healthz")["diag_agent"]
        a, b, c, dumps = [], [], [], [0]
        for _ in range(args.rounds):
            a.append(wrk(plain.url + args.path, args.seconds, args.connections))
            b.append(wrk(lean.url + args.path, args.seconds, args.connections))
            stop = threading.Event()
            threads = [threading.Thread(target=dumper, args=(agent_url, stop, dumps, args.dump_interval))
                       for _ in range(args.dump_clients)]
            for t in threads:
                t.start()
            c.append(wrk(agent.url + args.path, args.seconds, args.connections))
            stop.set()
            for t in threads:
                t.join()
    base = statistics.median(a)
    result = {
        "python": sys.version.split()[0], "path": args.path, "rounds": args.rounds, "seconds": args.seconds,
        "rps_without_agent": round(base),
        "rps_agent_without_task_factory": round(statistics.median(b)),
        "rps_agent_full": round(statistics.median(c)),
        "ratio_agent_without_task_factory": round(statistics.median(b) / base, 4),
        "ratio_agent_full": round(statistics.median(c) / base, 4),
        "runs": {"without": [round(x) for x in a], "no_factory": [round(x) for x in b],
                 "full": [round(x) for x in c]},
    }
    if args.dump_clients:
        result["dump_clients"] = args.dump_clients
        result["dump_interval"] = args.dump_interval
        result["dumps_taken"] = dumps[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

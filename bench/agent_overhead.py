"""Requests/s of the target server with and without the diag agent: python bench/agent_overhead.py

Four target servers run side by side: one with ``--no-diag``, one carrying the agent
without its task factory (``DIAG_CREATORS=0``: heartbeat, wait sampler, routes), one
without the request counter of ``diag.aiohttp.setup`` (``DIAG_COUNT_REQUESTS=0``), and
one with the full agent.  Besides requests/s, the server's CPU time per request (from
/proc) is reported: it does not depend on how the kernel shares two cores between the
server and wrk, so it is the steadier figure. wrk (Debian package ``wrk``)
loads one at a time over loopback for several rounds, the order rotating every round so
no configuration always runs first; the figures are the medians of each round's ratio
to the server without diag (paired within a round, so slow drifts of the machine
cancel).  ``--same`` runs two identical servers without diag instead, to show how far
apart two processes land on this machine with nothing to tell them apart. Optional ``--dump-clients N``
adds N clients dumping tasks in a loop (``--dump-interval`` apart) from the full
agent during its rounds; they run in this process, on the same two cores.
"""

from __future__ import annotations

import argparse
import json
import os
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dumper(url: str, stop: threading.Event, counts: list[int], interval: float) -> None:
    from diag.sources.source import AgentSource
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
    parser.add_argument("--same", action="store_true", help="A/A control: two servers without diag")
    parser.add_argument("--dump-interval", type=float, default=0.1, help="pause of each dumping client")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    flags = ("--rate", "1000000", "--burst", "1000000", "--log-level", "WARNING")
    names = ("without", "no_factory", "no_request_count", "full")
    envs: tuple[dict[str, str], ...] = ({}, {"DIAG_CREATORS": "0"}, {"DIAG_COUNT_REQUESTS": "0"}, {})
    extra: tuple[tuple[str, ...], ...] = (("--no-diag",), (), (), ())
    if args.same:
        names, envs, extra = ("without", "without_again"), ({}, {}), (("--no-diag",), ("--no-diag",))
    runs: dict[str, list[float]] = {n: [] for n in names}
    cpu_us: dict[str, list[float]] = {n: [] for n in names}  # server CPU per request
    dumps = [0]
    servers = [TargetServer(*flags, *x, env=e) for x, e in zip(extra, envs)]
    try:
        for server in servers:
            server.__enter__()
        agent_url = None if args.same else get_json(servers[-1].url + "/healthz")["diag_agent"]
        for r in range(args.rounds):
            order = [(i + r) % len(names) for i in range(len(names))]
            for i in order:
                stop = threading.Event()
                threads = [threading.Thread(target=dumper, args=(agent_url, stop, dumps, args.dump_interval))
                           for _ in range(args.dump_clients if names[i] == "full" else 0)]
                for t in threads:
                    t.start()
                pid = servers[i].proc.pid  # type: ignore[union-attr]
                before = cpu_seconds(pid)
                rps = wrk(servers[i].url + args.path, args.seconds, args.connections)
                runs[names[i]].append(rps)
                cpu_us[names[i]].append((cpu_seconds(pid) - before) / (rps * args.seconds) * 1e6)
                stop.set()
                for t in threads:
                    t.join()
    finally:
        for server in servers:
            server.__exit__(None, None, None)
    base = runs["without"]
    result: dict[str, object] = {
        "python": sys.version.split()[0], "path": args.path, "rounds": args.rounds, "seconds": args.seconds}
    for name in names:
        result[f"rps_{name}"] = round(statistics.median(runs[name]))
        result[f"server_cpu_us_per_request_{name}"] = round(statistics.median(cpu_us[name]), 1)
        if name != "without":
            ratios = [x / b for x, b in zip(runs[name], base)]
            result[f"ratio_{name}"] = round(statistics.median(ratios), 4)
            result[f"ratio_{name}_range"] = [round(min(ratios), 4), round(max(ratios), 4)]
    result["runs"] = {n: [round(x) for x in v] for n, v in runs.items()}
    if args.dump_clients:
        result["dump_clients"] = args.dump_clients
        result["dump_interval"] = args.dump_interval
        result["dumps_taken"] = dumps[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Requests/s of the target server while diag profiles it: python bench/profile_overhead.py

One target server with the agent. wrk (Debian package ``wrk``) loads it over loopback
in three interleaved conditions per round, so machine noise hits all of them: no
profile, a wall-clock yappi profile running, and the 100 Hz sampler running.  Each
profile is started through the agent just before wrk and covers the whole wrk run.
The figures are the medians and their ratios to the unprofiled median.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.agent_overhead import wrk  # noqa: E402
from tests.support.target import TargetServer, get_json  # noqa: E402


def profiled(agent_url: str, url: str, seconds: int, connections: int, mode: str, clock: str) -> tuple[float, int]:
    """wrk's requests/s while a profile covers the run; also the profile's sample or function count."""
    from diag.sources.source import AgentSource

    source = AgentSource(agent_url, timeout=10)
    result: dict[str, object] = {}

    def take() -> None:
        result["data"] = source.post("profile", {"seconds": str(seconds + 1), "mode": mode, "clock": clock},
                                     extra=seconds + 50, extra_why="the profile window and a margin", probe=False)

    thread = threading.Thread(target=take)
    thread.start()
    time.sleep(0.5)  # the profile is running before the load starts and after it ends
    rps = wrk(url, seconds, connections)
    thread.join()
    data = result["data"]
    assert isinstance(data, dict)
    return rps, int(data.get("samples") or len(data.get("functions") or ()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--path", default="/")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    flags = ("--rate", "1000000", "--burst", "1000000", "--log-level", "WARNING")
    with TargetServer(*flags) as server:
        agent_url = get_json(server.url + "/healthz")["diag_agent"]
        url = server.url + args.path
        wrk(url, 1, args.connections)  # warm up
        plain, wall, cpu, sample, samples = [], [], [], [], []
        for _ in range(args.rounds):
            plain.append(wrk(url, args.seconds, args.connections))
            wall.append(profiled(agent_url, url, args.seconds, args.connections, "yappi", "wall")[0])
            cpu.append(profiled(agent_url, url, args.seconds, args.connections, "yappi", "cpu")[0])
            rps, n = profiled(agent_url, url, args.seconds, args.connections, "sample", "wall")
            sample.append(rps)
            samples.append(n)
    base = statistics.median(plain)
    result = {
        "python": sys.version.split()[0], "path": args.path, "rounds": args.rounds, "seconds": args.seconds,
        "rps_without_profile": round(base),
        "rps_yappi_wall": round(statistics.median(wall)),
        "rps_yappi_cpu": round(statistics.median(cpu)),
        "rps_sampler": round(statistics.median(sample)),
        "ratio_yappi_wall": round(statistics.median(wall) / base, 4),
        "ratio_yappi_cpu": round(statistics.median(cpu) / base, 4),
        "ratio_sampler": round(statistics.median(sample) / base, 4),
        "samples_per_profile": samples,
        "runs": {"without": [round(x) for x in plain], "yappi_wall": [round(x) for x in wall],
                 "yappi_cpu": [round(x) for x in cpu], "sampler": [round(x) for x in sample]},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

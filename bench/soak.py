"""A 60-second soak of the target server: python bench/soak.py

One target server with the agent, under bounded loopback load for ``--seconds``: wrk
(Debian package ``wrk``, ``--connections`` connections) cycling through ``/`` and
fixed endpoints, while a leaker creates leaks through every leaky endpoint (tasks,
permits, the lock, and cache entries of ``--entry-kb`` KB each) and releases them with
``POST /admin/release`` every ``--cycle`` seconds.  A sampler records the server's RSS
(VmRSS from /proc) and its task count (from the agent's dump) every half second.

Memory: the baseline is taken after a warm-up (load and one leak/release cycle), the
peak during the soak, and the final figure after the last release (which also runs a
gc) has settled.  The run passes when the final RSS is within ``--tolerance-mb`` of the
baseline and the task count is back to the baseline's.

Shutdown: with the load stopped, ``--in-flight`` slow requests are in flight and a few
clients keep sending fast ones (a new connection each) when SIGTERM arrives.  Every
request is accounted for on the client side: sent, completed (by status), refused
(connect failed: the listener was closed; never sent), or lost (sent, no complete
response), by kind.  The server must exit 0 and lose none.
"""

from __future__ import annotations

import argparse
from http import client as httpclient
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.concurrent_dumps import parse_wrk  # noqa: E402
from tests.support.target import TargetServer, get_json, http  # noqa: E402

LOAD_PATHS = ("/", "/fixed/forgotten-task", "/fixed/orphan-future", "/fixed/deadlock", "/fixed/blocked-put",
              "/fixed/cache", "/work/slow?ms=5")
# Leaks created per cycle, by endpoint; deadlock leaks two tasks per call.
LEAK_BATCH = {"forgotten-task": 40, "orphan-future": 40, "blocked-put": 40, "deadlock": 10, "silent-peer": 10,
              "semaphore": 4, "lock": 1}
SLOW_MS = 1500


def vm_rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def task_count(server: TargetServer, agent_url: str | None) -> int:
    """Pending tasks of the target: from the agent's own thread (limit=1 keeps the answer small), or
    without an agent from /healthz (less the health check's own task)."""
    if agent_url is None:
        return int(get_json(server.url + "/healthz")["tasks"]) - 1
    return int(get_json(agent_url + "/debug/diag/tasks?limit=1")["total_tasks"])


def leaked_total(server: TargetServer) -> int:
    return sum(get_json(server.url + "/healthz")["leaked"].values())


def release(server: TargetServer) -> dict[str, int]:
    status, _, body = http("POST", server.url + "/admin/release")
    if status != 200:
        raise RuntimeError(f"/admin/release answered {status}: {body[:200]!r}")
    return json.loads(body)["released"]  # type: ignore[no-any-return]


def leak_once(server: TargetServer, cache_entries: int, entry_kb: int, errors: dict[str, int]) -> int:
    """One batch of leaks through every leaky endpoint; returns how many requests it took."""
    sent = 0
    for name, count in LEAK_BATCH.items():
        for _ in range(count):
            status, _, _ = http("GET", f"{server.url}/leak/{name}")
            sent += 1
            # 202 leaked, 502 the permit or lock leaked on the error path, as designed.
            if status not in (202, 502):
                errors[f"/leak/{name} {status}"] = errors.get(f"/leak/{name} {status}", 0) + 1
    for _ in range(cache_entries):
        status, _, _ = http("GET", f"{server.url}/leak/cache?kb={entry_kb}")
        sent += 1
        if status != 202:
            errors[f"/leak/cache {status}"] = errors.get(f"/leak/cache {status}", 0) + 1
    return sent


class Sampler(threading.Thread):
    """Every ``interval`` seconds: (seconds since start, RSS MiB, tasks from the agent)."""

    def __init__(self, server: TargetServer, pid: int, agent_url: str | None, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.server, self.pid, self.agent_url, self.interval = server, pid, agent_url, interval
        self.samples: list[tuple[float, float, int]] = []
        self.stop = threading.Event()
        self.started = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((round(time.monotonic() - self.started, 2), round(vm_rss_mb(self.pid), 1),
                                 task_count(self.server, self.agent_url)))
            self.stop.wait(self.interval)


def wrk_script(directory: str) -> str:
    """A wrk Lua script that cycles through LOAD_PATHS."""
    path = Path(directory) / "paths.lua"
    paths = ", ".join(f'"{p}"' for p in LOAD_PATHS)
    path.write_text(f"local paths = {{{paths}}}\nlocal i = 0\n"
                    "request = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n")
    return str(path)


def settle(server: TargetServer, pid: int, agent_url: str | None, seconds: float = 2.0) -> tuple[float, int]:
    """Release, then wait ``seconds`` for memory to settle; (RSS MiB, tasks) after."""
    release(server)
    time.sleep(seconds)
    return vm_rss_mb(pid), task_count(server, agent_url)


# -- the shutdown check -------------------------------------------------------------------------------------

def one_request(port: int, path: str, timeout: float = 30.0) -> tuple[str, int | str, float]:
    """A request on a new connection: ("completed", status), ("refused", error) when the connect failed,
    so nothing was sent, or ("lost", error) when it was sent and no complete response came; and the
    monotonic time the request was written (or the connect failed)."""
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        try:
            conn.connect()
        except OSError as err:
            return "refused", type(err).__name__, time.monotonic()
        sent = time.monotonic()
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            sent = time.monotonic()
            resp = conn.getresponse()
            resp.read()
            return "completed", resp.status, sent
        except (OSError, httpclient.HTTPException) as err:
            return "lost", type(err).__name__, sent
    finally:
        conn.close()


def shutdown_under_load(server: TargetServer, in_flight: int, fast_clients: int) -> dict[str, Any]:
    """SIGTERM with ``in_flight`` slow requests in flight and ``fast_clients`` clients still sending."""
    assert server.proc is not None
    outcomes: list[tuple[str, str, int | str, float]] = []
    lock = threading.Lock()
    refused = threading.Event()

    def slow() -> None:
        kind, detail, sent = one_request(server.port, f"/work/slow?ms={SLOW_MS}")
        with lock:
            outcomes.append(("slow", kind, detail, sent))

    def fast() -> None:
        while True:
            kind, detail, sent = one_request(server.port, "/fixed/forgotten-task")
            with lock:
                outcomes.append(("fast", kind, detail, sent))
            if kind == "refused":  # the listener is closed: nothing more can be sent
                refused.set()
                return

    with ThreadPoolExecutor(in_flight + fast_clients) as pool:
        futures = [pool.submit(slow) for _ in range(in_flight)]
        deadline = time.monotonic() + 10
        seen = 0
        while seen < in_flight + 1:  # + the health check itself
            if time.monotonic() > deadline:
                raise RuntimeError(f"the slow requests did not all reach the server: at most {seen - 1} seen")
            seen = max(seen, get_json(server.url + "/healthz")["in_flight"])
            time.sleep(0.02)
        futures += [pool.submit(fast) for _ in range(fast_clients)]
        time.sleep(0.2)
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        exit_code = server.proc.wait(timeout=30)
        stopped_after = time.monotonic() - signalled
        for f in futures:
            f.result(timeout=60)
    summary: dict[str, Any] = {"exit_code": exit_code, "stopped_after_s": round(stopped_after, 2)}
    for group in ("slow", "fast"):
        mine = [o for o in outcomes if o[0] == group]
        by_kind: dict[str, int] = {}
        for _, kind, detail, _ in mine:
            key = f"{kind} {detail}"
            by_kind[key] = by_kind.get(key, 0) + 1
        summary[group] = {"attempted": len(mine), "sent": sum(1 for o in mine if o[1] != "refused"),
                          "completed": sum(1 for o in mine if o[1] == "completed"), "by_kind": by_kind}
    lost = [o for o in outcomes if o[1] == "lost"]
    summary["lost"] = len(lost)
    # A request written before SIGTERM was in flight when it came; one written after reached a server
    # that was already shutting down.
    summary["lost_sent_before_sigterm"] = sum(1 for o in lost if o[3] < signalled)
    summary["lost_sent_after_sigterm_ms"] = sorted(round((o[3] - signalled) * 1000, 1) for o in lost
                                                   if o[3] >= signalled)
    return summary


# -- the soak -----------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--cycle", type=float, default=5.0, help="seconds between releases")
    parser.add_argument("--connections", type=int, default=4, help="wrk's connections (the load's bound)")
    parser.add_argument("--cache-entries", type=int, default=20, help="cache entries leaked per cycle")
    parser.add_argument("--entry-kb", type=int, default=1024, help="size of each leaked cache entry")
    parser.add_argument("--tolerance-mb", type=float, default=10.0,
                        help="how far above the baseline the final RSS may be")
    parser.add_argument("--in-flight", type=int, default=40, help="slow requests in flight at SIGTERM")
    parser.add_argument("--fast-clients", type=int, default=4, help="clients still sending at SIGTERM")
    parser.add_argument("--no-diag", action="store_true", help="the server without the agent (tasks from /healthz)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the server, e.g. DIAG_HOLDERS=0 (repeatable)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    leak_cap = max(LEAK_BATCH.values()) + 10
    flags = ("--rate", "1000000", "--burst", "1000000", "--log-level", "WARNING", "--leak-cap", str(leak_cap),
             "--max-concurrency", str(args.in_flight + 24), "--shutdown-timeout", "10",
             *(["--no-diag"] if args.no_diag else []))
    result: dict[str, Any] = {"python": sys.version.split()[0], "seconds": args.seconds, "cycle_s": args.cycle,
                              "connections": args.connections, "cache_entries_per_cycle": args.cache_entries,
                              "entry_kb": args.entry_kb, "tolerance_mb": args.tolerance_mb,
                              "diag_agent": not args.no_diag, "server_env": args.env}
    wrk_proc: subprocess.Popen[str] | None = None
    env = dict(item.split("=", 1) for item in args.env)
    with TargetServer(*flags, env=env) as server, tempfile.TemporaryDirectory(prefix="diag-soak-") as tmp:
        assert server.proc is not None
        pid = server.proc.pid
        agent_url = get_json(server.url + "/healthz")["diag_agent"]
        script = wrk_script(tmp)
        leak_errors: dict[str, int] = {}
        try:
            # Warm-up: load and one full leak/release cycle, so lazily built state (imports, caches,
            # connection pools) exists before the baseline is taken.
            subprocess.run(["wrk", "-t1", f"-c{args.connections}", "-d3s", "-s", script, server.url],
                           capture_output=True, check=True)
            leak_once(server, args.cache_entries, args.entry_kb, leak_errors)
            base_rss, base_tasks = settle(server, pid, agent_url)
            result["baseline"] = {"rss_mb": round(base_rss, 1), "tasks": base_tasks}

            sampler = Sampler(server, pid, agent_url)
            sampler.start()
            wrk_proc = subprocess.Popen(
                ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--timeout", "5s", "-s", script,
                 server.url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            cycles, leak_requests, released_per_cycle, after_release = 0, 0, [], []
            end = time.monotonic() + args.seconds
            while time.monotonic() + args.cycle <= end + 0.5:
                started = time.monotonic()
                leak_requests += leak_once(server, args.cache_entries, args.entry_kb, leak_errors)
                time.sleep(max(0.0, args.cycle - (time.monotonic() - started) - 0.5))
                released_per_cycle.append(sum(release(server).values()))
                time.sleep(0.5)
                after_release.append(f"{vm_rss_mb(pid):.1f}:{leaked_total(server)}")
                cycles += 1
            wrk_out, _ = wrk_proc.communicate(timeout=args.seconds + 30)
            wrk_proc = None
            sampler.stop.set()
            sampler.join(5)
            final_rss, final_tasks = settle(server, pid, agent_url)
            samples = sampler.samples
            peak_rss = max(s[1] for s in samples)
            result["load"] = parse_wrk(wrk_out)
            result["leak_requests"] = leak_requests
            result["leak_request_errors"] = leak_errors
            result["cycles"] = cycles
            result["released_per_cycle"] = " ".join(map(str, released_per_cycle))
            result["rss_mb_and_leaked_after_each_release"] = " ".join(after_release)
            result["peak"] = {"rss_mb": peak_rss, "tasks": max(s[2] for s in samples)}
            result["final"] = {"rss_mb": round(final_rss, 1), "tasks": final_tasks}
            result["rss_over_baseline_mb"] = round(final_rss - base_rss, 1)
            result["memory_back_to_baseline"] = final_rss - base_rss <= args.tolerance_mb
            result["tasks_back_to_baseline"] = final_tasks <= base_tasks
            result["rss_median_during_soak_mb"] = round(statistics.median(s[1] for s in samples), 1)
            # One sample in four (every 2 s), as "seconds:RSS MiB:tasks", to keep the output short.
            result["samples"] = " ".join(f"{t:g}:{rss:g}:{n}" for t, rss, n in samples[::4])
        finally:
            if wrk_proc is not None:
                wrk_proc.kill()
                wrk_proc.wait()
        result["shutdown"] = shutdown_under_load(server, args.in_flight, args.fast_clients)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

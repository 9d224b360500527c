"""The target server under full load while 20 clients dump its tasks: python bench/concurrent_dumps.py

One target server with the agent and a few hundred pending (leaked) tasks, so every
dump has work.  wrk (Debian package ``wrk``) loads ``--path`` over loopback in every
round; the conditions, interleaved with the order rotating each round, are:

A. wrk alone;
B. wrk while ``--dumpers`` threads (in a separate process) each GET the agent's
   ``/debug/diag/tasks`` in a loop, a new connection per dump, with no pause;
C. wrk while as many clients each run ``python -m diag tasks AGENT --format json`` in
   a loop (the CLI path: interpreter start-up, HTTP, grouping, rendering); ``--no-cli``
   skips it.

Reported: errors on both sides (wrk socket errors and non-2xx answers, dump failures by
kind; all must be zero), requests/s of each condition and the per-round ratio to A
(median and range), dumps/s, dump latency p50/p99, and the server's CPU time per wrk
request from /proc, which separates the agent's own cost from the clients' share of the
two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.target import TargetServer, get_json, http  # noqa: E402

# Leaked tasks created before the rounds start, by endpoint; deadlock leaks two per call.
PENDING_MIX = (("forgotten-task", 0.4), ("orphan-future", 0.3), ("blocked-put", 0.2), ("deadlock", 0.1))


# -- the dumping clients (run in a process of their own) ------------------------------------------------

def _http_dump(agent_url: str, pending: int) -> None:
    with urllib.request.urlopen(agent_url + "/debug/diag/tasks", timeout=30) as resp:
        body = resp.read()
    data = json.loads(body)
    if int(data.get("total_tasks") or 0) < pending:
        raise ValueError(f"dump has {data.get('total_tasks')} tasks, expected at least {pending}")


def _cli_dump(agent_url: str, pending: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "diag", "tasks", agent_url, "--format", "json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"diag tasks exited {proc.returncode}: {proc.stderr.strip()[:200]}")
    data = json.loads(proc.stdout)
    if int(data.get("total_tasks") or 0) < pending:
        raise ValueError(f"dump has {data.get('total_tasks')} tasks, expected at least {pending}")


def _error_kind(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"http_{err.code}"
    return type(err).__name__


def run_dumpers(agent_url: str, threads: int, mode: str, pending: int, pause: float) -> None:
    """Dump in a loop from ``threads`` threads, ``pause`` seconds apart, until stdin closes; print one
    JSON line of results."""
    dump = _http_dump if mode == "http" else _cli_dump
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: dict[str, int] = {}
    first_error: dict[str, str] = {}
    errors_lock = threading.Lock()

    def client(mine: list[float]) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                dump(agent_url, pending)
            except Exception as err:  # counted, never fatal: the figure is how many fail
                with errors_lock:
                    kind = _error_kind(err)
                    errors[kind] = errors.get(kind, 0) + 1
                    first_error.setdefault(kind, str(err)[:200])
                continue
            mine.append(time.perf_counter() - t0)
            if pause:
                stop.wait(pause)

    workers = [threading.Thread(target=client, args=(latencies[i],), daemon=True) for i in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    print("ready", flush=True)
    sys.stdin.read()  # the parent closes our stdin when the wrk run is over
    stop.set()
    for w in workers:
        w.join(90)
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
    print(json.dumps({"latencies": [x for per in latencies for x in per], "errors": errors,
                      "first_error": first_error,
                      "seconds": elapsed, "cpu_seconds": cpu}), flush=True)


# -- the bench ------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listen_overflows() -> int:
    """Connections the kernel dropped because a listen queue was full (system-wide, from /proc)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split()))["ListenOverflows"])
    return 0


def parse_wrk(out: str) -> dict[str, float]:
    """wrk's summary: requests/s, requests, and its errors (socket errors by kind, non-2xx/3xx answers)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    result = {"rps": float(rps.group(1)), "requests": int(total.group(1)), "non_2xx": 0,
              "connect": 0, "read": 0, "write": 0, "timeout": 0}
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        for key, value in zip(("connect", "read", "write", "timeout"), socket_errors.groups()):
            result[key] = int(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        result["non_2xx"] = int(non_2xx.group(1))
    return result


def wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    """One wrk run over loopback, parsed."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", url],
                         capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def make_pending(server: TargetServer, pending: int) -> int:
    """Leak about ``pending`` tasks through the leaky endpoints; returns how many are pending now."""
    for name, share in PENDING_MIX:
        calls = round(pending * share / (2 if name == "deadlock" else 1))
        for _ in range(calls):
            status, _, body = http("GET", f"{server.url}/leak/{name}")
            if status != 202:
                raise RuntimeError(f"/leak/{name} answered {status}: {body[:200]!r}")
    leaked = get_json(server.url + "/healthz")["leaked"]
    return sum(int(leaked[name]) for name, _ in PENDING_MIX)


def one_round(server: TargetServer, mode: str | None, args: argparse.Namespace, agent_url: str,
              pending: int) -> dict[str, Any]:
    """wrk for ``args.seconds`` with dumpers of ``mode`` (None: no dumpers) running alongside."""
    assert server.proc is not None
    dumpers = None
    if mode is not None:
        dumpers = subprocess.Popen(
            [sys.executable, __file__, "--run-dumpers", agent_url,
             "--dumpers", str(args.dumpers if mode == "http" else args.cli_dumpers),
             "--mode", mode, "--pending", str(pending), "--pause", str(args.pause)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if dumpers is not None:
            assert dumpers.stdout is not None and dumpers.stdin is not None
            if dumpers.stdout.readline().strip() != "ready":
                raise RuntimeError("the dumping clients did not start")
            time.sleep(0.5)  # every client is dumping before the load starts
        cpu_before = cpu_seconds(server.proc.pid)
        overflows_before = listen_overflows()
        result: dict[str, Any] = wrk(server.url + args.path, args.seconds, args.connections)
        result["server_cpu_s"] = cpu_seconds(server.proc.pid) - cpu_before
        result["server_cpu_us_per_request"] = result["server_cpu_s"] / result["requests"] * 1e6
        result["listen_overflows"] = listen_overflows() - overflows_before
        if dumpers is not None:
            out, _ = dumpers.communicate(timeout=120)
            result["dumps"] = json.loads(out.strip().splitlines()[-1])
    finally:
        if dumpers is not None and dumpers.poll() is None:
            dumpers.kill()
            dumpers.wait()
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarise(rounds: list[dict[str, dict[str, Any]]], modes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    wrk_errors = {m: {k: sum(r[m][k] for r in rounds) for k in ("non_2xx", "connect", "read", "write", "timeout")}
                  for m in modes}
    out["wrk_errors"] = wrk_errors
    for m in modes:
        out[f"rps_{m}"] = round(statistics.median(r[m]["rps"] for r in rounds))
        out[f"server_cpu_us_per_request_{m}"] = round(statistics.median(
            r[m]["server_cpu_us_per_request"] for r in rounds), 1)
    for m in modes[1:]:
        ratios = [r[m]["rps"] / r["alone"]["rps"] for r in rounds]
        out[f"ratio_{m}"] = {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                             "max": round(max(ratios), 3), "per_round": [round(x, 3) for x in ratios]}
        latencies = [x for r in rounds for x in r[m]["dumps"]["latencies"]]
        errors: dict[str, int] = {}
        messages: dict[str, str] = {}
        for r in rounds:
            for kind, n in r[m]["dumps"]["errors"].items():
                errors[kind] = errors.get(kind, 0) + n
            for kind, text in r[m]["dumps"].get("first_error", {}).items():
                messages.setdefault(kind, text)
        rates = [len(r[m]["dumps"]["latencies"]) / r[m]["dumps"]["seconds"] for r in rounds]
        # The server's CPU beyond what its wrk requests cost in the same round's A run, per dump taken.
        per_dump = [(r[m]["server_cpu_s"] - r[m]["requests"] * r["alone"]["server_cpu_us_per_request"] / 1e6)
                    / max(1, len(r[m]["dumps"]["latencies"])) for r in rounds]
        out[f"dumps_{m}"] = {
            "dumps": len(latencies), "errors": errors, "first_error": messages,
            "dumps_per_s_median": round(statistics.median(rates), 1),
            "latency_p50_s": round(percentile(latencies, 0.5), 4),
            "latency_p99_s": round(percentile(latencies, 0.99), 4),
            "latency_over_0_9_s": sum(1 for x in latencies if x > 0.9),
            "listen_overflows": sum(r[m]["listen_overflows"] for r in rounds),
            "server_cpu_ms_per_dump": round(statistics.median(per_dump) * 1000, 2),
            "client_cpu_share_of_2_cores": round(statistics.median(
                r[m]["dumps"]["cpu_seconds"] / r[m]["dumps"]["seconds"] for r in rounds) / 2, 3),
        }
    out["runs"] = {m: [round(r[m]["rps"]) for r in rounds] for m in modes}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--path", default="/")
    parser.add_argument("--dumpers", type=int, default=20)
    parser.add_argument("--cli-dumpers", type=int, help="clients of the CLI rounds (default: --dumpers)")
    parser.add_argument("--pending", type=int, default=200, help="leaked tasks each dump walks")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds each client waits between dumps")
    parser.add_argument("--no-cli", action="store_true", help="skip the rounds dumping through the diag CLI")
    parser.add_argument("--run-dumpers", metavar="AGENT_URL", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("http", "cli"), default="http", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cli_dumpers is None:
        args.cli_dumpers = args.dumpers
    if args.run_dumpers:
        run_dumpers(args.run_dumpers, args.dumpers, args.mode, args.pending, args.pause)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    modes = ["alone", "http_dumpers"] + ([] if args.no_cli else ["cli_dumpers"])
    dumper_mode = {"alone": None, "http_dumpers": "http", "cli_dumpers": "cli"}
    flags = ("--rate", "1000000", "--burst", "1000000", "--log-level", "WARNING",
             "--leak-cap", str(max(100, args.pending)))
    with TargetServer(*flags) as server:
        agent_url = get_json(server.url + "/healthz")["diag_agent"]
        leaked = make_pending(server, args.pending)
        wrk(server.url + args.path, 1, args.connections)  # warm up
        rounds: list[dict[str, dict[str, Any]]] = []
        for i in range(args.rounds):
            order = modes[i % len(modes):] + modes[:i % len(modes)]  # rotate, so no condition always runs first
            this: dict[str, dict[str, Any]] = {}
            for m in order:
                this[m] = one_round(server, dumper_mode[m], args, agent_url, leaked)
            rounds.append(this)
            print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{m} {this[m]['rps']:.0f} req/s" for m in modes),
                  file=sys.stderr, flush=True)
    result = {"python": sys.version.split()[0], "path": args.path, "connections": args.connections,
              "rounds": args.rounds, "seconds": args.seconds, "dumpers": args.dumpers, "pause_s": args.pause, "cli_dumpers": 0 if args.no_cli else args.cli_dumpers,
              "leaked_tasks": leaked, "cpus": os.cpu_count(),
              "loadavg_1m_at_end": round(os.getloadavg()[0], 2), **summarise(rounds, modes)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

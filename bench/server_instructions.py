"""What the agent costs a serving target, in instructions: python bench/server_instructions.py

Requests/s on this 2-core machine swing by 10 % between two identical server processes
(see ``bench/agent_overhead.py --same``), so an overhead of 1-3 % cannot be seen that
way.  This bench counts instructions instead, with valgrind's callgrind (Debian package
``valgrind``), which repeat exactly whatever else the machine does:

* the target server runs under callgrind, once per configuration;
* once it is ready, its counters are zeroed and it sits idle for ``--idle`` seconds:
  what it executes then (all threads) is its background work per second of wall time:
  the agent's heartbeat and wait sampler, or a running sampling profile;
* then ``--requests`` GETs of ``--path`` are sent one after another on one keep-alive
  connection; the instructions of that window, less the background for its duration,
  divided by the requests, are the cost of one request.

The overhead at a real request rate R (requests/s measured with wrk against the server
without diag, outside valgrind) is then ``(per-request extra * R + background extra per
second) / (per-request cost without diag * R)``.  Background work runs per second of
wall time, which callgrind does not stretch, so it is counted at its real rate.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (server flags, environment, what it shows)
CONFIGS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "without diag": (("--no-diag",), {}),
    "agent, no task factory": ((), {"DIAG_CREATORS": "0"}),
    "agent, no holder tracking": ((), {"DIAG_HOLDERS": "0"}),
    "agent, no request counter": ((), {"DIAG_COUNT_REQUESTS": "0"}),
    "agent, neither": ((), {"DIAG_HOLDERS": "0", "DIAG_COUNT_REQUESTS": "0"}),
    "agent": ((), {}),
    "agent + sampling profile": ((), {}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def control(pid: int, what: str) -> None:
    subprocess.run(["callgrind_control", what, str(pid)], capture_output=True, check=True, timeout=120)


def dumped_total(out_dir: str, pid: int, before: set[str]) -> int:
    """The instruction total of the dump just written (callgrind_control -d)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = sorted(set(glob.glob(f"{out_dir}/cg.{pid}.*")) - before)
        for path in new:
            found = re.search(r"^summary:\s+(\d+)", Path(path).read_text(errors="replace"), re.M)
            if found:
                return int(found.group(1))
        time.sleep(0.2)
    raise SystemExit(f"no callgrind dump for pid {pid}")


def measure(name: str, args: argparse.Namespace, out_dir: str) -> dict[str, float]:
    flags, env = CONFIGS[name]
    port = free_port()
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p", sys.executable, "-m",
           "target_server", "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING",
           "--rate", "1000000", "--burst", "1000000", *flags]
    log = open(f"{out_dir}/{port}.log", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0", **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        deadline = time.monotonic() + 300
        while True:
            try:
                if get(conn, "/healthz") == 200:
                    break
            except OSError:
                conn.close()
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{name}: the server did not start under valgrind")
            time.sleep(1)
        for _ in range(50):  # warm the paths (imports, caches) before counting
            get(conn, args.path)
        profile = None
        if name == "agent + sampling profile":
            agent = json.loads(_body(conn, "/healthz"))["diag_agent"]
            window = args.idle + 600.0
            profile = subprocess.Popen(
                [sys.executable, "-c",
                 "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request("
                 "sys.argv[1], method='POST'), timeout=900).read()",
                 f"{agent}/debug/diag/profile?mode=sample&seconds={min(window, 60):g}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(3)  # the sampler is running
        before = set(glob.glob(f"{out_dir}/cg.{proc.pid}.*"))
        control(proc.pid, "-z")
        t0 = time.monotonic()
        time.sleep(args.idle)
        control(proc.pid, "-d")
        idle_wall = time.monotonic() - t0
        idle = dumped_total(out_dir, proc.pid, before)
        before = set(glob.glob(f"{out_dir}/cg.{proc.pid}.*"))
        control(proc.pid, "-z")
        t0 = time.monotonic()
        for _ in range(args.requests):
            if get(conn, args.path) != 200:
                raise SystemExit(f"{name}: {args.path} did not answer 200")
        control(proc.pid, "-d")
        busy_wall = time.monotonic() - t0
        busy = dumped_total(out_dir, proc.pid, before)
        if profile is not None:
            profile.kill()
        background = idle / idle_wall
        return {"background_per_s": background,
                "per_request": (busy - background * busy_wall) / args.requests,
                "window_s": busy_wall}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _body(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    return conn.getresponse().read()


def real_rate(path: str) -> float:
    """Requests/s of the server without diag under wrk, outside valgrind."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "target_server", "--host", "127.0.0.1", "--port", str(port),
                             "--no-diag", "--log-level", "WARNING", "--rate", "1000000", "--burst", "1000000"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        out = subprocess.run(["wrk", "-t1", "-c32", "-d4s", f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, text=True, check=True).stdout
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if found is None:
            raise SystemExit(f"unexpected wrk output:\n{out}")
        return float(found.group(1))
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="/", help="the endpoint the requests go to")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle counting per configuration")
    parser.add_argument("--config", action="append", choices=list(CONFIGS),
                        help="configurations to run (repeat; default all)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (Debian: apt-get install valgrind wrk)")
    names = args.config or list(CONFIGS)
    if "without diag" not in names:
        names.insert(0, "without diag")
    with tempfile.TemporaryDirectory(prefix="server-instr-") as out_dir:
        results = {name: measure(name, args, out_dir) for name in names}
    rate = real_rate(args.path)
    base = results["without diag"]
    report: dict[str, object] = {"python": sys.version.split()[0], "path": args.path, "requests": args.requests,
                                 "idle_seconds": args.idle, "real_rps_without_diag": round(rate)}
    for name, r in results.items():
        extra_req = r["per_request"] - base["per_request"]
        extra_bg = r["background_per_s"] - base["background_per_s"]
        report[name] = {
            "instructions_per_request": round(r["per_request"]),
            "background_instructions_per_s": round(r["background_per_s"]),
            "extra_per_request_pct": round(100 * extra_req / base["per_request"], 2),
            "overhead_at_real_rate_pct": round(100 * (extra_req * rate + extra_bg) / (base["per_request"] * rate), 2),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

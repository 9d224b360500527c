"""Grouped against full task dumps, side by side: python bench/full_dump.py [--tasks N] [--rounds R]

A target holds N pending tasks, each three coroutines deep on one Event, with the agent
(``diag run``) and a 1 ms ticker on its loop.  Rounds alternate between:

- grouped: ``diag tasks URL --format json``;
- full JSON: ``diag tasks URL --format json --debug 2 --limit N+10`` (every task);
- full text: ``diag tasks URL --format text --debug 2 --limit N+10``;
- aiomonitor's list of live tasks (``POST /api/live-tasks`` on its web UI, read with
  curl), where aiomonitor is importable by the target's Python;
- ``py-spy dump --asyncio --pid PID`` (the py-spy-asyncio package's ``py-spy-asyncio``
  binary), or plain ``py-spy dump --pid PID`` (thread stacks, no tasks) where the
  installed py-spy has no ``--asyncio``, where one is found.

For each: the end-to-end time (CLI start-up included, its output written to a file,
``PYTHONUNBUFFERED=1`` as in many container images), the target loop's worst stall
meanwhile, and the target's memory growth (peak RSS during the dump over RSS before).
Then the bytes on the wire of the full dump: ``diag.tasks/2`` as the CLI asks for it
(gzip), uncompressed, and ``diag.tasks/1`` as older clients get it.

The peers are no dependency of diag; keep them in a venv of their own, with diag's own
dependencies beside them so the agent can run in the target (diag itself comes from this
tree through ``PYTHONPATH``)::

    python3.11 -m venv /work/bench-peers
    /work/bench-peers/bin/pip install aiomonitor py-spy-asyncio aiohttp typer rich yappi objgraph prometheus-client
    python bench/full_dump.py --peers-python /work/bench-peers/bin/python

``--peers-python`` runs the target with that Python (the same version as the one running
this script) and starts aiomonitor in it; ``--py-spy PATH`` names the py-spy binary.
Without them the target runs with this Python, aiomonitor is used if it imports there,
and py-spy is looked for on PATH and beside ``--peers-python`` (``py-spy-asyncio`` first).
``--no-peers`` leaves both out.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
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
    if len(sys.argv) > 2:  # aiomonitor's ports: terminal UI, web UI (its task factory left alone)
        import aiomonitor
        monitor = aiomonitor.start_monitor(asyncio.get_running_loop(), port=int(sys.argv[2]),
                                           webui_port=int(sys.argv[3]), console_enabled=False)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_info(python: str) -> tuple[str, str | None]:
    """(Python version, aiomonitor's version or None) of an interpreter."""
    code = ("import sys, importlib.util, importlib.metadata as m\n"
            "have = importlib.util.find_spec('aiomonitor') is not None\n"
            "print(sys.version.split()[0], m.version('aiomonitor') if have else '-')")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return out[0], (None if out[1] == "-" else out[1])


def find_py_spy(given: str | None, peers_python: str | None) -> str | None:
    if given:
        return given
    places = [str(Path(peers_python).parent)] if peers_python else []
    for name in ("py-spy-asyncio", "py-spy"):
        for where in [*places, None]:
            if found := shutil.which(name, path=where):
                return found
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers-python", metavar="PATH",
                        help="run the target with this Python, which has aiomonitor and diag's dependencies")
    parser.add_argument("--py-spy", metavar="PATH", help="the py-spy binary (py-spy-asyncio's for --asyncio)")
    parser.add_argument("--no-peers", action="store_true", help="leave aiomonitor and py-spy out")
    args = parser.parse_args()
    n = args.tasks
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    # The CLI starts from bytecode, as an installed diag does (pip compiles a package as it
    # installs it), whether or not this machine sets PYTHONDONTWRITEBYTECODE.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "diag")], check=True,
                   stdout=subprocess.DEVNULL)
    target_python = args.peers_python or sys.executable
    target_version, aiomonitor_version = python_info(target_python)
    py_spy = None if args.no_peers else find_py_spy(args.py_spy, args.peers_python)
    if args.no_peers:
        aiomonitor_version = None
    if target_version != sys.version.split()[0]:
        sys.exit(f"--peers-python is Python {target_version}, this script runs on {sys.version.split()[0]}: "
                 "run it with the same version")
    if args.peers_python and aiomonitor_version is None and not args.no_peers:
        sys.exit(f"aiomonitor does not import in {args.peers_python}")
    versions = [f"diag {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip() or '?'}"]
    variants: dict[str, list[str]] = {
        "nothing (the target alone for 2 s: the noise floor)": [],
        "grouped (--format json)": ["--format", "json"],
        "full JSON (--debug 2 --format json)": ["--debug", "2", "--format", "json", "--limit", str(n + 10)],
        "full text (--debug 2 --format text)": ["--debug", "2", "--format", "text", "--limit", str(n + 10)],
    }
    monitor_ports: list[str] = []
    AIOMONITOR = "aiomonitor's live-task list (POST /api/live-tasks)"
    if aiomonitor_version:
        monitor_ports = [str(free_port()), str(free_port())]
        variants[AIOMONITOR] = []
        versions.append(f"aiomonitor {aiomonitor_version}")
    PY_SPY = ""
    if py_spy:
        spy_help = subprocess.run([py_spy, "dump", "--help"], capture_output=True, text=True).stdout
        asyncio_mode = "--asyncio" in spy_help
        PY_SPY = f"`{Path(py_spy).name} dump {'--asyncio ' if asyncio_mode else ''}--pid PID`"
        variants[PY_SPY] = []
        versions.append(subprocess.run([py_spy, "--version"], capture_output=True, text=True).stdout.strip())
    results: dict[str, dict[str, list[float]]] = {name: {"time": [], "stall": [], "growth": [], "full_gc": []} for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "holder.py"
        script.write_text(textwrap.dedent(HOLDER))
        addr = Path(tmp) / "addr"
        out_file = Path(tmp) / "out"
        proc = subprocess.Popen([sys.executable, "-m", "diag", "run", "--agent-file", str(addr), "--",
                                 target_python, str(script), str(n), *monitor_ports], stdout=subprocess.PIPE,
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
            failed: dict[str, str] = {}
            curl = shutil.which("curl")
            commands: dict[str, list[str]] = {}
            for name, extra in variants.items():
                if extra:
                    # a streamed million-task dump takes longer than the default --timeout of 10 s
                    commands[name] = [sys.executable, "-m", "diag", "tasks", url, *extra, "--timeout", "600"]
            if monitor_ports:
                live = f"http://127.0.0.1:{monitor_ports[1]}/api/live-tasks"
                commands[AIOMONITOR] = ([curl, "-sS", "--fail", "-X", "POST", live] if curl else
                                        [sys.executable, "-c", "import sys, urllib.request as u; "
                                         "sys.stdout.buffer.write(u.urlopen(u.Request(sys.argv[1], b'', "
                                         "method='POST'), timeout=600).read())", live])
            if PY_SPY:
                assert py_spy is not None
                check = subprocess.run([py_spy, "dump", "--pid", str(proc.pid)], capture_output=True, text=True)
                if check.returncode != 0:  # no ptrace permission, or an interpreter it cannot read
                    print(f"{PY_SPY} left out: {check.stderr.strip().splitlines()[:1]}", file=sys.stderr)
                    del variants[PY_SPY]
                else:
                    commands[PY_SPY] = [py_spy, "dump", *(["--asyncio"] if "--asyncio" in PY_SPY else []),
                                        "--pid", str(proc.pid)]
            for _ in range(args.rounds):
                for name, extra in variants.items():
                    time.sleep(0.3)  # past the agent's answer cache
                    _, _, before = report()
                    t0 = time.perf_counter()
                    if name not in commands:
                        time.sleep(2.0)
                    else:
                        with open(out_file, "w") as out:
                            done = subprocess.run(commands[name], stdout=out, stderr=subprocess.PIPE, text=True,
                                                  env=env, check=name not in (AIOMONITOR, PY_SPY))
                        if done.returncode != 0:  # a peer that gives up: timed all the same, its reason kept
                            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
                            failed[name] = " ".join(lines[:3]) or f"exit status {done.returncode}"
                    took = time.perf_counter() - t0
                    stall, peak, _ = report()
                    results[name]["time"].append(took)
                    results[name]["stall"].append(stall)
                    results[name]["growth"].append(max(0, peak - before))
                    results[name]["full_gc"].append(gcs[-1])
                    if name in failed:
                        counts[name] = 0
                    elif "JSON" in name or name == AIOMONITOR:
                        doc = json.loads(out_file.read_text())
                        counts[name] = len(doc["tasks"])
                    elif name == PY_SPY and "--asyncio" in name:
                        heads = [line for line in out_file.read_text().splitlines()
                                 if line.startswith("Asyncio Tasks (")]
                        counts[name] = int(heads[0].split("(")[1].rstrip(")")) if heads else 0
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
    results = {name: r for name, r in results.items() if name in variants}
    GROUPED = "grouped (--format json)"
    grouped = statistics.median(results[GROUPED]["time"])
    print(f"\n{n:,} pending tasks, three coroutines deep; Python {sys.version.split()[0]}; "
          f"{args.rounds} rounds, alternating; {', '.join(versions)}\n")
    print("| | median end to end | ratio to grouped | worst target loop stall | target memory growth (worst) |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        median = statistics.median(r["time"])
        what = name if name.startswith("nothing") or name in (AIOMONITOR, PY_SPY) else f"`diag tasks URL` {name}"
        print(f"| {what} | {median:.2f} s | {median / grouped:.1f}x | "
              f"{max(r['stall']) * 1000:.0f} ms | {max(r['growth']) / 1e6:.0f} MB |")
    print()
    for name, r in results.items():
        print(f"- {name}: stalls of each round " + ", ".join(f"{s * 1000:.0f} ms" for s in r["stall"])
              + "; the target's longest full GC collection meanwhile "
              + ", ".join(f"{g * 1000:.0f} ms" for g in r["full_gc"]))
    for name, count in counts.items():
        print(f"- {name}: {count:,} tasks in the output")
    for name, why in failed.items():
        print(f"- {name} failed (in the last round that did): {why}")
    for name, (size, status) in sizes.items():
        print(f"- full dump on the wire, {name}: {size / 1e6:.2f} MB (HTTP {status})")
    full_json = statistics.median(results["full JSON (--debug 2 --format json)"]["time"]) / grouped
    print(f"- aim: full JSON at most 2x grouped: {full_json:.2f}x, {'met' if full_json <= 2 else 'missed'}")
    if AIOMONITOR in results:
        monitor = statistics.median(results[AIOMONITOR]["time"])
        stall, monitor_stall = max(results[GROUPED]["stall"]), max(results[AIOMONITOR]["stall"])
        print(f"- aim: grouped no slower than aiomonitor's list: {grouped:.2f} s against {monitor:.2f} s, "
              f"{'met' if grouped <= monitor else 'missed'}")
        print(f"- aim: grouped's worst stall at most a quarter of aiomonitor's: {stall * 1000:.0f} ms against "
              f"{monitor_stall * 1000:.0f} ms ({stall / monitor_stall:.2f}), "
              f"{'met' if stall <= monitor_stall / 4 else 'missed'}")


if __name__ == "__main__":
    main()

"""What the stall history costs per heartbeat, in instructions.

    python bench/stall_history_instructions.py               # needs valgrind and git
    python bench/stall_history_instructions.py --rev c1db18d --per-request 331791 --rate 12590

The stall history adds work to every heartbeat (the loop thread's scheduler counters
and the process's CPU time are read as the beat is sent, a few checks when it runs) and
none to a request.  The program sends N heartbeats to a running loop and lets each run,
with this tree's ``LoopWatch`` and with the one of git revision ``--rev`` (before the
history), under callgrind, N and 3N times; the difference over 2N is one heartbeat,
start-up excluded.  The agent sends 10 heartbeats a second per loop, so ten times the
extra is its cost per second; ``--per-request`` and ``--rate`` (the instructions of one
``GET /`` without diag and the requests/s wrk measured, see
``bench/server_instructions.py``) give it as a share of a server at that rate.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from callgrind import ROOT, instructions, per_round, require_valgrind

PROGRAM = """
import asyncio, importlib.util, sys

path, n = sys.argv[1], int(sys.argv[2])
if path == "current":
    from diag.collect import loop_watch
else:
    spec = importlib.util.spec_from_file_location("loop_watch_before", path)
    loop_watch = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loop_watch  # its dataclasses look their module up
    spec.loader.exec_module(loop_watch)


async def main():
    loop = asyncio.get_running_loop()
    watch = loop_watch.LoopWatch(install_factories=False)
    watch.add_loop(loop)
    for _ in range(n):
        watch._send_beats()      # what the watchdog does every 100 ms
        await asyncio.sleep(0)   # the loop turns and runs the beat
        await asyncio.sleep(0)

asyncio.run(main())
"""

HEARTBEATS_PER_SECOND = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="N (the second run makes 3N)")
    parser.add_argument("--rev", default="", help="the git revision whose loop_watch.py has no history "
                        "(default: where this branch left main)")
    parser.add_argument("--per-request", type=float, default=None, help="instructions of one GET / without diag")
    parser.add_argument("--rate", type=float, default=None, help="requests/s of that server without diag")
    args = parser.parse_args()
    require_valgrind()
    rev = args.rev or subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True,
                                     text=True, check=True).stdout.strip()
    before = subprocess.run(["git", "show", f"{rev}:diag/collect/loop_watch.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        old = os.path.join(tmp, "loop_watch_before.py")
        with open(old, "w") as f:
            f.write(before)
        costs = {name: per_round(lambda n, p=path: instructions(PROGRAM, p, str(n)), args.rounds)
                 for name, path in (("before", old), ("with history", "current"))}
    extra = costs["with history"] - costs["before"]
    print(f"python {sys.version.split()[0]}, {args.rounds} and {3 * args.rounds} heartbeats")
    for name, cost in costs.items():
        print(f"  {name}: {cost:,.0f} instructions per heartbeat")
    print(f"  extra: {extra:,.0f} per heartbeat, {extra * HEARTBEATS_PER_SECOND:,.0f} per second and loop")
    if args.per_request and args.rate:
        server = args.per_request * args.rate
        print(f"  share of a server doing {args.rate:,.0f} requests/s of {args.per_request:,.0f} instructions: "
              f"{100 * extra * HEARTBEATS_PER_SECOND / server:.4f} %")
    if args.per_request:
        print(f"  one heartbeat's extra is {100 * extra / args.per_request:.2f} % of one request "
              f"(a server that gets one request per heartbeat, 10/s)")


if __name__ == "__main__":
    main()

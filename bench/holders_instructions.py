"""What holder tracking costs per acquire and release, in instructions.

    python bench/holders_instructions.py            # needs valgrind (Debian: valgrind)
    python bench/holders_instructions.py --per-request 468697   # also as a share of a request

Wall-clock figures of an uncontended acquire swing by several per cent here; valgrind's
callgrind counts the instructions the interpreter executes, which repeat exactly for the
same interpreter and input.  The program takes and gives back a semaphore N times
through the target server's own ``holding()`` helper (an ``async with`` around an
acquire under a timeout, three coroutines deep, as ``GET /work/slow`` does), once with
N and once with 3N rounds; the difference divided by 2N is the cost of one round,
start-up excluded.  Configurations, in one run: tracking off, tracking by the C
accelerator (when built), tracking by the Python wrappers (``DIAG_ORIGINS=python``).

``--per-request`` takes the instructions of one ``GET /work/slow?ms=0`` without diag,
as ``bench/server_instructions.py --path "/work/slow?ms=0"`` reports them, and gives
each configuration's extra as a share of that request (one acquire and release each).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from callgrind import ROOT, instructions, per_round, require_valgrind

PROGRAM = """
import asyncio, sys
from diag.collect import holders
from target_server.work import holding

async def handler(sem):
    async with holding(sem, 5.0, "work pool"):
        pass

async def main(mode, n):
    if mode != "off":
        holders.install()
    sem = asyncio.Semaphore(8)
    for _ in range(n):
        await handler(sem)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def count(mode: str, n: int) -> int:
    env = {k: v for k, v in os.environ.items() if k != "DIAG_ORIGINS"}
    if mode == "python":
        env["DIAG_ORIGINS"] = "python"
    return instructions(PROGRAM, mode, str(n), env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000, help="N (the second run makes 3N)")
    parser.add_argument("--per-request", type=float, default=None,
                        help="instructions of one GET /work/slow?ms=0 without diag, to give shares of it")
    args = parser.parse_args()
    require_valgrind()
    sys.path.insert(0, ROOT)
    from diag.collect import holders

    costs = {}
    for mode in ("off", "c", "python"):
        if mode == "c" and not holders.accelerated():
            continue
        costs[mode] = per_round(lambda n: count(mode, n), args.rounds)
    base = costs["off"]
    out: dict[str, object] = {"python": sys.version.split()[0], "rounds": args.rounds}
    for mode, cost in costs.items():
        out[f"{mode}_instructions_per_round"] = round(cost)
        if mode != "off":
            out[f"{mode}_extra_per_round"] = round(cost - base)
            if args.per_request:
                out[f"{mode}_share_of_request_pct"] = round(100 * (cost - base) / args.per_request, 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

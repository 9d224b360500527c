"""What the agent spends on a full and a grouped task dump, in instructions.

    python bench/full_dump_instructions.py                      # needs valgrind (Debian: valgrind)
    python bench/full_dump_instructions.py --against /tmp/old   # and another checkout, side by side

The end-to-end figures of ``bench/full_dump.py`` swing by 10-20 % between runs on this
machine, more than most changes to the agent's describing.  This counts what the agent
itself executes: a program holds N pending tasks (three coroutines deep on one Event, as
``full_dump.py``'s target), starts the agent in-process, and has its endpoint make the
answer ``diag tasks`` asks for, R times, from a thread of its own as the agent's server
would:

- full: ``--debug 2`` every task, compact and laid out in slices (streamed past 20,000 tasks);
- grouped: the default query, one task described a group.

Each is run with R and 3R dumps under callgrind; the difference divided by 2R is one
dump, start-up and the tasks' creation excluded.  The agent's watchdog runs meanwhile (it
keeps itself to about 1 % of a core), so the figures repeat to about that.

``--against PATH`` runs the same against another checkout (a ``git worktree`` of an older
commit, its C accelerator built or copied in), so that a change is measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from callgrind import ROOT, instructions, per_round, require_valgrind

PROGRAM = """
import asyncio, os, sys, threading
import diag.agent

async def leaf(e): await e.wait()
async def middle(e): await leaf(e)
async def top(e): await middle(e)

QUERIES = {"full": {"wire": "2", "debug": "2", "limit": "1000000000", "layout": "slices"},
           "grouped": {"wire": "2"}}

def dumps(kind, rounds, sizes):
    endpoints = diag.agent.current().endpoints
    for _ in range(rounds):
        answer = endpoints.tasks(QUERIES[kind], frozenset())
        assert answer.status == 200, answer.body
        sizes.append(len(answer.whole()))

async def main(kind, tasks, rounds):
    diag.agent.start()
    e = asyncio.Event()
    held = [asyncio.create_task(top(e)) for _ in range(tasks)]
    await asyncio.sleep(0.2)  # the tasks reach their wait, the watchdog its first turn
    sizes = []
    worker = threading.Thread(target=dumps, args=(kind, rounds, sizes))
    worker.start()
    while worker.is_alive():
        await asyncio.sleep(0.01)
    assert len(sizes) == rounds and min(sizes) > 0
    sys.stdout.flush()
    os._exit(0)  # cancelling the tasks on the way out would cost more than the dumps

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def count(tree: str, kind: str, tasks: int, rounds: int) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("DIAG_ORIGINS", "PYTHONPATH")}
    return instructions(PROGRAM, kind, str(tasks), str(rounds), env=env, cwd=tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30_000, help="N pending tasks (default 30,000: streamed)")
    parser.add_argument("--rounds", type=int, default=1, help="R (the second run makes 3R)")
    parser.add_argument("--against", metavar="PATH", help="another checkout to measure the same way")
    parser.add_argument("--kind", choices=("both", "full", "grouped"), default="both",
                        help="the dumps to count (each kind takes a few minutes a tree)")
    args = parser.parse_args()
    require_valgrind()
    trees = {"this tree": ROOT}
    if args.against:
        trees["against"] = os.path.abspath(args.against)
    out: dict[str, object] = {"python": sys.version.split()[0], "tasks": args.tasks, "rounds": args.rounds}
    kinds = ("full", "grouped") if args.kind == "both" else (args.kind,)
    for name, tree in trees.items():
        costs = {kind: per_round(lambda n, kind=kind: count(tree, kind, args.tasks, n), args.rounds)
                 for kind in kinds}
        figures: dict[str, object] = {"tree": tree}
        for kind in kinds:
            figures[f"{kind}_instructions_per_task"] = round(costs[kind] / args.tasks)
        if len(kinds) == 2:
            figures["full_to_grouped"] = round(costs["full"] / costs["grouped"], 2)
        out[name] = figures
    if args.against:
        mine, theirs = out["this tree"], out["against"]
        assert isinstance(mine, dict) and isinstance(theirs, dict)
        for kind in kinds:
            key = f"{kind}_instructions_per_task"
            out[f"{kind}_this_to_against"] = round(mine[key] / theirs[key], 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

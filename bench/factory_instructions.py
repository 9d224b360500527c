"""What the "created by" task factory costs per create_task, in instructions.

    python bench/factory_instructions.py            # needs valgrind (Debian: valgrind)

Wall-clock ratios of a do-nothing create_task swing by several per cent on a busy
machine; valgrind's callgrind counts the instructions the interpreter executes, which
repeat exactly for the same interpreter and input whatever else the machine does.  Each
configuration runs a program that creates and runs N do-nothing tasks (in batches of
1,000) twice, with N and 3N tasks; the difference divided by 2N is the cost of one
create_task + run, start-up excluded.  Configurations: no factory, the agent's factory
(the C accelerator when built), and the pure-Python factory.
"""

from __future__ import annotations

import argparse
import json
import sys

from callgrind import ROOT, instructions, per_round, require_valgrind

PROGRAM = """
import asyncio, sys
from diag.collect import task_origins

async def nothing():
    pass

async def main(mode, n):
    loop = asyncio.get_running_loop()
    if mode == "c":
        loop.set_task_factory(task_origins.new_factory(None))
    elif mode == "python":
        loop.set_task_factory(task_origins.OriginFactory(None))
    for _ in range(n // 1000):
        await asyncio.gather(*[asyncio.create_task(nothing()) for _ in range(1000)])

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000, help="N (the second run makes 3N)")
    args = parser.parse_args()
    require_valgrind()
    sys.path.insert(0, ROOT)
    from diag.collect import task_origins

    per_task = {}
    for mode in ("none", "c", "python"):
        if mode == "c" and not task_origins.accelerated():
            continue
        per_task[mode] = per_round(lambda n: instructions(PROGRAM, mode, str(n)), args.tasks)
    base = per_task["none"]
    out: dict[str, object] = {"python": sys.version.split()[0], "tasks": args.tasks}
    for mode, cost in per_task.items():
        out[f"{mode}_instructions_per_task"] = round(cost)
        out[f"{mode}_ratio"] = round(cost / base, 4)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""What one ``diag`` run costs to start, for two source trees side by side.

    python bench/cli_startup.py --rounds 20 [--target URL] OLD_TREE[@PYTHON] NEW_TREE[@PYTHON]

Runs ``PY -m diag ARGS`` with each tree as the working directory (so ``-m`` imports that
tree's ``diag``, with the same interpreter and dependencies), the trees alternating run by
run, for each command line below, and prints the median and the maximum of the wall time
and of the CPU time (user + system of the child) per tree.  With ``--target`` (a running
``python -m target_server``, say), ``diag tasks`` and ``diag leaks`` against it too.
``TREE@PYTHON`` runs that tree with another interpreter (a virtualenv with other versions
of the dependencies, say); without it, with this one.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = (
    ("diag --help", ["--help"]),
    ("diag tasks --help", ["tasks", "--help"]),
    ("diag tasks --limit 0 unix:/nonexistent (usage, exit 2)", ["tasks", "--limit", "0", "unix:/nonexistent"]),
    ("diag leaks unix:/nonexistent (unreachable, exit 3)", ["leaks", "unix:/nonexistent"]),
    ("diag tasks unix:/nonexistent (unreachable, exit 3)", ["tasks", "unix:/nonexistent"]),
)


def one_run(spec: str, args: list[str]) -> tuple[float, float, int]:
    """(wall, CPU, exit code) of one ``python -m diag ARGS`` in the tree of ``spec`` (``TREE[@PYTHON]``)."""
    tree, _, python = spec.partition("@")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([python or sys.executable, "-m", "diag", *args], cwd=tree, capture_output=True,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100"})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--target", metavar="URL", help="also dump this live target")
    parser.add_argument("trees", nargs=2, metavar="TREE[@PYTHON]")
    options = parser.parse_args()
    commands = list(COMMANDS)
    if options.target:
        commands += [(f"diag tasks {options.target} --format text", ["tasks", options.target, "--format", "text"]),
                     (f"diag leaks {options.target} --format text", ["leaks", options.target, "--format", "text"])]
    for title, args in commands:
        walls: dict[str, list[float]] = {t: [] for t in options.trees}
        cpus: dict[str, list[float]] = {t: [] for t in options.trees}
        codes: dict[str, set[int]] = {t: set() for t in options.trees}
        for n in range(options.rounds):
            order = options.trees if n % 2 == 0 else options.trees[::-1]
            for tree in order:
                wall, cpu, code = one_run(tree, args)
                walls[tree].append(wall)
                cpus[tree].append(cpu)
                codes[tree].add(code)
        print(title)
        for tree in options.trees:
            print(f"  {tree:<40} exit {sorted(codes[tree])}  wall median {statistics.median(walls[tree]):.3f} s "
                  f"max {max(walls[tree]):.3f} s  CPU median {statistics.median(cpus[tree]):.3f} s "
                  f"max {max(cpus[tree]):.3f} s")


if __name__ == "__main__":
    main()

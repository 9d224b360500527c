"""Instruction counts by valgrind's callgrind, for the benches named *_instructions.py.

Callgrind counts the instructions the interpreter executes, which repeat exactly for the
same interpreter and input whatever else the machine does; wall-clock figures of a few
per cent drown in this machine's noise.  A cost per round is the difference between a
run of 3N rounds and one of N, divided by 2N: start-up and imports cancel out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def require_valgrind() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found (Debian: apt-get install valgrind)")


def instructions(program: str, *args: str, env: dict[str, str] | None = None, cwd: str = ROOT) -> int:
    """Instructions of ``python -c program args...`` from start to exit, run from the
    project's root (or ``cwd``: another checkout's, whose ``diag`` is then the one imported)."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", program, *args],
        capture_output=True, text=True, timeout=1800, cwd=cwd, env=env)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"callgrind failed for {args}: {proc.stderr[-500:]}")
    return int(found.group(1))


def per_round(count: Callable[[int], int], rounds: int) -> float:
    """Instructions of one round, from ``count(n)``: the instructions of a run of n rounds."""
    return (count(3 * rounds) - count(rounds)) / (2 * rounds)

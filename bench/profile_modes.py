"""What each profile mode says about a blocking call and short CPU bursts:
python bench/profile_modes.py [--seconds 5] [--rounds 2] [--hogs 0] [--uvloop] [--c-bursts]

One program under ``diag run``: ``OrderService.metrics_flusher`` blocks the loop in
``time.sleep(0.3)`` once a second, ``OrderService.burner`` spins 20, 35 or 50 ms (in
Python, wall clock) every 0.4 s, 40 tasks sleep in ``asyncio.sleep`` in between.  The
program writes down when each block and burst happened, so every profile is compared
with what really happened in its own window.  Each round takes one profile of each
mode: the sampler, yappi's wall clock and yappi's cpu clock (both forced: the yappi
installed here keeps the coroutines it sees).  ``--hogs N`` runs N busy processes
beside it, for a loaded machine.  ``--c-bursts`` makes each burst one C call that
keeps the GIL (``sum`` over a range, sized when the program starts).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diag.analysis.profile_stats import function_stats, has_share  # noqa: E402
from diag.model.profile_snapshot import ProfileSnapshot  # noqa: E402
from tests.support.order_service import order_service  # noqa: E402
from tests.support.programs import DiagRun  # noqa: E402


MODES = {"sample": ("--mode", "sample"), "yappi wall": ("--mode", "yappi", "--force"),
         "yappi cpu": ("--mode", "yappi", "--clock", "cpu", "--force")}


def overlap(spans: list[list[float]], start: float, end: float) -> float:
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)


def profile(url: str, seconds: float, args: tuple[str, ...], out: Path) -> ProfileSnapshot:
    proc = subprocess.run([sys.executable, "-m", "diag", "profile", url, "--seconds", str(seconds), *args,
                           "--format", "json", "-o", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return ProfileSnapshot.from_json(out.read_text())


def row(snap: ProfileSnapshot, name: str) -> tuple[float, float]:
    found = [f for f in function_stats(snap) if f.name == name]
    return (sum(f.own_seconds for f in found), sum(f.total_seconds for f in found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hogs", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--c-bursts", action="store_true")
    opts = parser.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(opts.hogs)]
    try:
        source = order_service(uvloop=opts.uvloop, c_bursts=opts.c_bursts, idle_tasks=40)
        with DiagRun(source) as run, \
                tempfile.TemporaryDirectory() as tmp:
            spans_file = Path(run.dir.name) / "spans.json"
            while not spans_file.exists():
                time.sleep(0.1)
            time.sleep(2)
            print(f"python {sys.version.split()[0]}, {opts.hogs} hogs, {'uvloop' if opts.uvloop else 'asyncio'}, "
                  f"{'C' if opts.c_bursts else 'Python'} bursts, "
                  f"{opts.seconds:g} s windows")
            print("| mode | blocked in time.sleep | metrics_flusher own / total | burst share | crunch total share "
                  "| top row by own (own %) |")
            print("| --- | --- | --- | --- | --- | --- |")
            for _ in range(opts.rounds):
                for mode, args in MODES.items():
                    snap = profile(run.url, opts.seconds, args, Path(tmp) / "p.json")
                    window = (snap.taken_at, snap.taken_at + snap.duration)
                    time.sleep(1.5)  # the block and burst under way at the window's end are written
                    spans: dict[str, Any] = json.loads(spans_file.read_text())
                    blocked = overlap(spans["flush"], *window)
                    burned = overlap(spans["burn"], *window) / snap.duration
                    own, total = row(snap, "OrderService.metrics_flusher")
                    crunch_total = row(snap, "crunch")[1] / snap.duration
                    top = max(function_stats(snap), key=lambda f: f.own_seconds)
                    share = (f"{100 * top.own_seconds / snap.duration:.0f} %" if has_share(snap, top)
                             else f"{top.own_seconds:.1f} s, no share")
                    print(f"| {mode} | {blocked:.2f} s | {own:.2f} / {total:.2f} s | {100 * burned:.1f} % "
                          f"| {100 * crunch_total:.1f} % | {top.name} ({share}) |")
    finally:
        for hog in hogs:
            hog.kill()


if __name__ == "__main__":
    main()

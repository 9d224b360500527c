"""What ``--diag-leaks`` costs a real test suite, and whether it adds a failure.

    python bench/suite_overhead.py --rounds 7 --cwd DIR [--python PY] -- PYTEST_ARGS...

Runs ``PY -m pytest PYTEST_ARGS`` in DIR (an unpacked sdist, say) ``--rounds`` times with
the plugin off and as many times with ``--diag-leaks``, alternating which goes first, and
prints for each mode the outcomes (from JUnit XML), the median wall time and the median
CPU time (user + system of pytest and its children), then the tests that failed in one
mode only.  The plugin is installed in both modes; off means off, as a user has it.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path


def outcomes(report: Path) -> dict[str, str]:
    """Each test's outcome: failed, error (a failure at setup or teardown), skipped or passed."""
    out = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        tags = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        name = f"{case.get('classname')}::{case.get('name')}"
        out[name] = "failed" if "failure" in tags else "error" if "error" in tags else \
            "skipped" if "skipped" in tags else "passed"
    return out


def run_once(python: str, cwd: str, args: list[str], on: bool, report: Path,
             timeout: float) -> tuple[float, float, dict[str, str]]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run([python, "-m", "pytest", *args, "-p", "no:cacheprovider", "-q", f"--junitxml={report}",
                    *(["--diag-leaks"] if on else [])], cwd=cwd, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=timeout)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, outcomes(report)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cwd", required=True)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for one run of the suite")
    parser.add_argument("pytest_args", nargs="*")
    opts = parser.parse_args()
    runs: dict[str, list[tuple[float, float, dict[str, str]]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(opts.rounds):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                report = Path(tmp) / f"{mode}-{r}.xml"
                runs[mode].append(run_once(opts.python, opts.cwd, opts.pytest_args, mode == "on", report,
                                           opts.timeout))
    for mode, results in runs.items():
        counts = [{k: sum(v == k for v in res.values()) for k in ("passed", "failed", "error", "skipped")}
                  for _, _, res in results]
        walls, cpus = [w for w, _, _ in results], [c for _, c, _ in results]
        print(f"{mode:>3}: {len(results[0][2])} tests; outcomes per run {counts}")
        print(f"     wall median {statistics.median(walls):.2f} s (runs: {', '.join(f'{w:.2f}' for w in walls)}); "
              f"cpu median {statistics.median(cpus):.2f} s (runs: {', '.join(f'{c:.2f}' for c in cpus)})")
    n = len(runs["off"][0][2])
    for what, key in (("wall", 0), ("cpu", 1)):
        delta = statistics.median(x[key] for x in runs["on"]) - statistics.median(x[key] for x in runs["off"])
        print(f"{what}: {delta:+.2f} s, {delta / n * 1000:+.2f} ms per test")
    bad = {"failed", "error"}
    for mode, other in (("on", "off"), ("off", "on")):
        only = sorted({t for _, _, res in runs[mode] for t, o in res.items() if o in bad}
                      - {t for _, _, res in runs[other] for t, o in res.items() if o in bad})
        print(f"failing only {mode}: {only or 'none'}")


if __name__ == "__main__":
    main()

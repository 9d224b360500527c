"""What the pytest plugin (``--diag-leaks``) adds to each test, and what it catches.

Generates a few hundred small async tests in a temp dir and runs them with pytest in
a subprocess, rounds interleaved: plugin off, ``--diag-leaks``, and (if ``pyleak`` can
be imported from ``--pyleak-path``) pyleak's ``no_leaks`` marker (tasks only) on
every test.  Each test's time is taken from ``pytest_runtest_logstart`` to
``logfinish`` (setup, call and teardown), and the per-test median overhead is printed.
Two more suites show what excusing costs, off and on: tests that each leave a task an
ignore excuses (``--diag-leaks-ignore name=^bg-``), and tests run by anyio's pytest
plugin, whose runner task diag excuses by default.  ``--heap N`` keeps N more objects
alive in the test process, as a big suite does (a check that scanned the heap would
show it).  Then a handful of leaky and clean tests run under both checkers: what each
detects.

    python bench/plugin_overhead.py --tests 300 --rounds 5 [--heap 1000000] [--pyleak-path DIR]

(``pip install --target DIR pyleak`` keeps pyleak's own pytest plugin out of the
environment the rest of the suite runs in.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"

CONFTEST = '''
import json, os, time
import pytest

_times = {}
_start = {}
BALLAST = [[] for _ in range(int(os.environ.get("BENCH_HEAP", "0")))]

def pytest_collection_modifyitems(items):
    if os.environ.get("BENCH_PYLEAK"):
        for item in items:
            item.add_marker(pytest.mark.no_leaks(tasks=True, threads=False, blocking=False))

def pytest_runtest_logstart(nodeid, location):
    _start[nodeid] = time.perf_counter()

def pytest_runtest_logfinish(nodeid, location):
    _times[nodeid] = time.perf_counter() - _start.pop(nodeid)

def pytest_sessionfinish(session):
    out = os.environ.get("BENCH_TIMES")
    if out:
        with open(out, "w") as f:
            json.dump(_times, f)
'''

CLEAN_TEST = '''
async def test_{i}():
    task = asyncio.create_task(asyncio.sleep(0))
    await asyncio.gather(task, asyncio.sleep(0))
'''

EXCUSED_TEST = '''
async def test_{i}():
    asyncio.create_task(asyncio.Event().wait(), name="bg-{i}")
    await asyncio.sleep(0)
'''

ANYIO_HEAD = '''
import anyio
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"
'''

ANYIO_TEST = '''
async def test_{i}():
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0)
'''

#: name -> (test file, pytest arguments); each suite runs with the plugin off and on.
SUITES = {
    "": ("test_clean.py", ["--diag-leaks"]),
    "excused": ("test_excused.py", ["--diag-leaks", "--diag-leaks-ignore", "name=^bg-"]),
    "anyio": ("test_anyio.py", ["--diag-leaks"]),
}

SCENARIOS = '''
import asyncio

LOCK = asyncio.Lock()

async def waiter(event):
    await event.wait()

async def finisher():
    await asyncio.sleep(0.05)

async def forgets_to_release():
    await LOCK.acquire()

async def test_fire_and_forget_waiter():
    asyncio.create_task(waiter(asyncio.Event()))
    await asyncio.sleep(0)

async def test_task_finishing_after_return():
    asyncio.create_task(finisher())

async def test_permit_left_held():
    await asyncio.create_task(forgets_to_release())

def test_asyncio_run_leak():
    async def main():
        asyncio.create_task(waiter(asyncio.Event()))
        await asyncio.sleep(0)
    asyncio.run(main())

async def test_clean():
    await asyncio.create_task(finisher())
'''


def run_pytest(directory: Path, args: list[str], *, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra}
    env.pop("DIAG_LEAKS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=directory,
                          env=env, capture_output=True, text=True, timeout=600)


def mode_env(mode: str, pyleak_path: str | None, times: Path, heap: int = 0) -> tuple[list[str], dict[str, str]]:
    """A mode is ``off``, ``diag`` or ``pyleak``, with `` SUITE`` after it for another suite."""
    check, _, suite = mode.partition(" ")
    env = {"BENCH_TIMES": str(times), "BENCH_HEAP": str(heap)}
    if check == "diag":
        return SUITES[suite][1], env
    if check == "pyleak":
        assert pyleak_path is not None
        return [], {**env, "BENCH_PYLEAK": "1", "PYTHONPATH": pyleak_path}
    return [], env


def has_pyleak(path: str | None) -> bool:
    if path is None:
        return False
    proc = subprocess.run([sys.executable, "-c", "import pyleak"], env={**os.environ, "PYTHONPATH": path},
                          capture_output=True)
    return proc.returncode == 0


def overhead(directory: Path, modes: list[str], rounds: int, pyleak_path: str | None,
             heap: int) -> dict[str, list[float]]:
    per_test: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode in modes:
            times = directory / f"times-{mode.replace(' ', '-')}.json"
            args, env = mode_env(mode, pyleak_path, times, heap)
            test_file = SUITES[mode.partition(" ")[2]][0]
            proc = run_pytest(directory, [test_file, *args], env_extra=env)
            if proc.returncode != 0:
                raise SystemExit(f"{mode}: pytest failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            per_test[mode].extend(json.loads(times.read_text()).values())
    return per_test


def detection(directory: Path, mode: str, pyleak_path: str | None) -> dict[str, tuple[str, str]]:
    xml = directory / f"junit-{mode}.xml"
    args, env = mode_env(mode, pyleak_path, directory / "unused.json")
    run_pytest(directory, ["test_scenarios.py", "--junitxml", str(xml), *args], env_extra=env)
    out: dict[str, tuple[str, str]] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        text = "" if bad is None else (bad.get("message") or "") + "\n" + (bad.text or "")
        out[str(case.get("name"))] = ("fails" if bad is not None else "passes", text)
    return out


def explains(text: str) -> str:
    facts = []
    if "created by" in text or "Creation Stack" in text or "created at" in text.lower():
        facts.append("creator")
    if "Event.wait" in text or "await event.wait()" in text:
        facts.append("wait")
    if "verdict:" in text:
        facts.append("proof verdict")
    if "permit" in text:
        facts.append("permit site")
    return ", ".join(facts) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--heap", type=int, default=0, help="objects kept alive in the test process")
    parser.add_argument("--suites", default="clean,excused,anyio", help="comma-separated: clean, excused, anyio")
    parser.add_argument("--pyleak-path", default=None, help="a directory where `import pyleak` works")
    opts = parser.parse_args()
    pyleak = has_pyleak(opts.pyleak_path)
    suites = ["" if s.strip() in ("", "clean") else s.strip() for s in opts.suites.split(",")]
    modes = (["off", "diag"] + (["pyleak"] if pyleak else []) if "" in suites else []) + [
        f"{check} {suite}" for suite in SUITES if suite and suite in suites for check in ("off", "diag")]
    with tempfile.TemporaryDirectory(prefix="diag-plugin-bench-") as tmp:
        directory = Path(tmp)
        (directory / "pytest.ini").write_text(INI)
        (directory / "conftest.py").write_text(textwrap.dedent(CONFTEST))
        (directory / "test_clean.py").write_text(
            "import asyncio\n" + "".join(CLEAN_TEST.format(i=i) for i in range(opts.tests)))
        (directory / "test_excused.py").write_text(
            "import asyncio\n" + "".join(EXCUSED_TEST.format(i=i) for i in range(opts.tests)))
        (directory / "test_anyio.py").write_text(
            textwrap.dedent(ANYIO_HEAD) + "".join(ANYIO_TEST.format(i=i) for i in range(opts.tests)))
        (directory / "test_scenarios.py").write_text(textwrap.dedent(SCENARIOS))
        per_test = overhead(directory, modes, opts.rounds, opts.pyleak_path, opts.heap)
        print(f"python {sys.version.split()[0]}, {opts.tests} tests x {opts.rounds} rounds, interleaved, "
              f"{opts.heap} more objects alive")
        print("| mode | median per test | overhead (median) | p90 per test |")
        print("| --- | --- | --- | --- |")
        for mode in modes:
            base = statistics.median(per_test[" ".join(["off", *mode.split(" ")[1:]])])
            times = sorted(per_test[mode])
            median = statistics.median(times)
            p90 = times[int(len(times) * 0.9)]
            print(f"| {mode} | {median * 1000:.2f} ms | {(median - base) * 1000:+.2f} ms | {p90 * 1000:.2f} ms |")
        print()
        results = {mode: detection(directory, mode, opts.pyleak_path) for mode in modes if mode in ("diag", "pyleak")}
        if not results:
            return
        print("| test | " + " | ".join(results) + " |")
        print("| --- | " + " | ".join("---" for _ in results) + " |")
        for name in results["diag"]:
            cells = []
            for mode in results:
                outcome, text = results[mode].get(name, ("?", ""))
                cells.append(outcome + (f" ({explains(text)})" if outcome == "fails" else ""))
            print(f"| {name} | " + " | ".join(cells) + " |")
        if not pyleak:
            print("\npyleak: not importable (pass --pyleak-path DIR after `pip install --target DIR pyleak`)")


if __name__ == "__main__":
    main()

"""What the pytest plugin (``--diag-leaks``) adds to each test, and what it catches.

Generates a few hundred small async tests in a temp dir and runs them with pytest in
a subprocess, rounds interleaved: plugin off, ``--diag-leaks``, and (if ``pyleak`` can
be imported from ``--pyleak-path``) pyleak's ``no_leaks`` marker (tasks only) on
every test.  Each test's time is taken from ``pytest_runtest_logstart`` to
``logfinish`` (setup, call and teardown), and the per-test median overhead is printed.
Then a handful of leaky and clean tests run under both checkers: what each detects.

    python bench/plugin_overhead.py --tests 300 --rounds 5 [--pyleak-path DIR]

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


def mode_env(mode: str, pyleak_path: str | None, times: Path) -> tuple[list[str], dict[str, str]]:
    env = {"BENCH_TIMES": str(times)}
    if mode == "diag":
        return ["--diag-leaks"], env
    if mode == "pyleak":
        assert pyleak_path is not None
        return [], {**env, "BENCH_PYLEAK": "1", "PYTHONPATH": pyleak_path}
    return [], env


def has_pyleak(path: str | None) -> bool:
    if path is None:
        return False
    proc = subprocess.run([sys.executable, "-c", "import pyleak"], env={**os.environ, "PYTHONPATH": path},
                          capture_output=True)
    return proc.returncode == 0


def overhead(directory: Path, modes: list[str], rounds: int, pyleak_path: str | None) -> dict[str, list[float]]:
    per_test: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode in modes:
            times = directory / f"times-{mode}.json"
            args, env = mode_env(mode, pyleak_path, times)
            proc = run_pytest(directory, ["test_clean.py", *args], env_extra=env)
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
    parser.add_argument("--pyleak-path", default=None, help="a directory where `import pyleak` works")
    opts = parser.parse_args()
    pyleak = has_pyleak(opts.pyleak_path)
    modes = ["off", "diag"] + (["pyleak"] if pyleak else [])
    with tempfile.TemporaryDirectory(prefix="diag-plugin-bench-") as tmp:
        directory = Path(tmp)
        (directory / "pytest.ini").write_text(INI)
        (directory / "conftest.py").write_text(textwrap.dedent(CONFTEST))
        (directory / "test_clean.py").write_text(
            "import asyncio\n" + "".join(CLEAN_TEST.format(i=i) for i in range(opts.tests)))
        (directory / "test_scenarios.py").write_text(textwrap.dedent(SCENARIOS))
        per_test = overhead(directory, modes, opts.rounds, opts.pyleak_path)
        base = statistics.median(per_test["off"])
        print(f"python {sys.version.split()[0]}, {opts.tests} tests x {opts.rounds} rounds, interleaved")
        print("| mode | median per test | overhead (median) | p90 per test |")
        print("| --- | --- | --- | --- |")
        for mode in modes:
            times = sorted(per_test[mode])
            median = statistics.median(times)
            p90 = times[int(len(times) * 0.9)]
            print(f"| {mode} | {median * 1000:.2f} ms | {(median - base) * 1000:+.2f} ms | {p90 * 1000:.2f} ms |")
        print()
        results = {mode: detection(directory, mode, opts.pyleak_path) for mode in modes if mode != "off"}
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

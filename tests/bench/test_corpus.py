"""The corpus of real-world hangs behaves as labelled, and the scorer's mechanics work.

Detection quality is not asserted here: that is what ``bench/corpus_score.py`` reports.
These tests check the corpus itself: every program has a fixed twin that differs in a few
lines and a label naming a public bug; a program run under ``diag run`` reaches ``ready``
and shows its stuck tasks waiting the labelled way, and its twin shows none of them.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from diag.model.task_snapshot import WAIT_KINDS

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "bench" / "corpus"
MECHANISMS = {"lost_wakeup", "swallowed_cancel", "dead_consumer", "dead_producer", "closed_connection",
              "unresolved_future", "intermittent_blocking", "executor_stuck", "lock_across_exception",
              "task_cycle", "gather_stuck_child", "idle_healthy", "permit_leak", "other"}
#: "tracker-or-repo #N: title", "CPython gh-N: title", "bpo-N: title".
BUG = re.compile(r"^[\w./-]+ (?:#|gh-|bpo-)(\d+): \S")
FOOTER = 'if __name__ == "__main__":\n    from _corpus_runner import run\n    run(main)\n'


def load_scorer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("corpus_score", ROOT / "bench" / "corpus_score.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scorer = load_scorer()
LABELS = scorer.load_expected()


def program_names() -> list[str]:
    files = {p.stem for p in CORPUS.glob("*.py") if not p.name.startswith("_")}
    return sorted(f for f in files if not f.endswith("_fixed"))


def changed_lines(a: str, b: str) -> int:
    return sum(1 for line in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---")))


def test_every_program_has_a_twin_and_a_label_naming_a_public_bug() -> None:
    names = program_names()
    assert len(names) >= 11
    files = {p.stem for p in CORPUS.glob("*.py") if not p.name.startswith("_")}
    assert files == set(names) | {f"{n}_fixed" for n in names}, "every program needs exactly one _fixed twin"
    assert sorted(LABELS) == names, "expected*.json labels exactly the programs there are"
    for name in names:
        label = LABELS[name]
        bug = BUG.match(label["bug"])
        assert bug, f"{name}: bug {label['bug']!r} does not name a tracker and a number"
        source = (CORPUS / f"{name}.py").read_text()
        twin = (CORPUS / f"{name}_fixed.py").read_text()
        docstring = source.split('"""')[1]
        assert bug.group(1) in docstring, f"{name}: the docstring does not name the bug it is modelled on"
        assert label["mechanism"] in MECHANISMS, name
        assert set(label.get("loops", scorer.LOOPS)) <= set(scorer.LOOPS) and label.get("loops", scorer.LOOPS), name
        assert source.endswith(FOOTER) and twin.endswith(FOOTER), f"{name}: does not end with the runner"
        assert not re.search(r"\bdiag\b", source + twin, re.I), f"{name} mentions diag"
        assert 0 < changed_lines(source, twin) < 15, f"{name}: the twin should differ only in the fix's lines"
        for group in label["stuck"]:
            assert group["wait_kind"] in WAIT_KINDS, (name, group)
            assert group["coro"] and group.get("count", 1) >= 1, (name, group)
        if label["loop_blocked"] or label["mechanism"] == "idle_healthy":
            assert label["stuck"] == [], name
        else:
            assert label["stuck"], f"{name}: a hang needs at least one stuck group"
    healthy = [n for n in names if LABELS[n]["mechanism"] == "idle_healthy"]
    assert healthy, "the corpus needs healthy programs to measure precision on"


@pytest.mark.parametrize(("name", "loop"), [("token_lock_not_released", "asyncio"),
                                          ("taskgroup_shard_never_ready", "asyncio"),
                                          ("producer_dies_consumers_wait", "uvloop")])
def test_program_is_stuck_as_labelled_and_its_twin_is_not(name: str, loop: str) -> None:
    label = LABELS[name]
    started = time.monotonic()
    bug = scorer.observe(f"{name}.py", loop=loop, settle=0.5, min_wait=0.5)
    twin = scorer.observe(f"{name}_fixed.py", loop=loop, settle=0.5, min_wait=0.5)
    assert bug.ready and twin.ready, (bug.error, twin.error)
    assert not bug.error and not twin.error, (bug.error, twin.error)
    assert bug.leaks_exit in (0, 1) and twin.leaks_exit in (0, 1)
    for group in label["stuck"]:
        seen = scorer.group_state(bug, group)
        assert seen["kind_right"], seen
        assert seen["stuck"] == group.get("count", 1), seen
        in_twin = scorer.group_state(twin, group)
        assert in_twin["seen"] == 0, in_twin
    for obs in (bug, twin):
        assert any(t["coro"] in scorer.MAIN_COROS for t in obs.tasks), "the program's main task is waiting"
    assert time.monotonic() - started < 60


def test_scoring_counts_a_covering_finding_and_the_twin_s_fail_on_verdicts() -> None:
    label = {"mechanism": "permit_leak", "decidable": True, "loop_blocked": False,
             "stuck": [{"coro": "request", "wait_kind": "semaphore", "count": 2}]}
    waiting = {"coro": "request", "wait": {"kind": "semaphore", "seconds": 5.0}}
    bug = scorer.Observation("p.py", ready=True, leaks_exit=1, tasks=[waiting, waiting, {"coro": "main",
                                                                                         "wait": {"kind": "event"}}],
                             findings=[{"kind": "leaked_permit", "tasks": [waiting]}])
    twin = scorer.Observation("p_fixed.py", ready=True, leaks_exit=1,
                              findings=[{"kind": "proven_leak", "tasks": [{"coro": "main"}]},
                                        {"kind": "suspect", "tasks": [{"coro": "worker"}]}])
    row = scorer.score_program("p", label, bug, twin, frozenset({"leaked_permit", "proven_leak"}))
    assert (row["flagged"], row["sound"], row["wait_kind_right"]) == (True, True, True)
    assert (row["twin_fail_on"], row["twin_suspects"], row["main_flagged"]) == (1, 1, 1)
    summary = scorer.summarise([row])
    assert (summary["flagged"], summary["sound"], summary["twin_fail_on"]) == (1, 1, 1)
    suspect_only = scorer.score_program("p", label, scorer.Observation(
        "p.py", tasks=bug.tasks, findings=[{"kind": "suspect", "tasks": [waiting]}]), scorer.Observation("q"),
        frozenset({"leaked_permit"}))
    assert (suspect_only["flagged"], suspect_only["sound"]) == (True, False)
    # a twin whose tasks wait the labelled way only briefly is not "still stuck"; a long wait is
    brief = scorer.Observation("q.py", tasks=[{"coro": "request", "wait": {"kind": "semaphore", "seconds": 0.3}}])
    assert scorer.score_program("p", label, bug, brief, frozenset())["twin_still_stuck"] == []
    long = scorer.Observation("q.py", tasks=[waiting])
    assert scorer.score_program("p", label, bug, long, frozenset())["twin_still_stuck"] == ["request"]


def test_poller_blocks_its_loop_and_its_twin_does_not() -> None:
    """asyncio's debug mode logs every callback that holds the loop over 0.1 s: an independent check
    that the program labelled loop_blocked really stalls its loop, and that its fix does not."""
    def slow_callbacks(file: str) -> list[float]:
        env = {**os.environ, "PYTHONASYNCIODEBUG": "1", "CORPUS_SECONDS": "4"}
        env.pop("CORPUS_LOOP", None)
        proc = subprocess.run([sys.executable, str(CORPUS / file)], cwd=CORPUS, env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.splitlines()[:1] == ["ready"], proc.stdout
        return [float(s) for s in re.findall(r"took (\d+\.\d+) seconds", proc.stderr)]

    assert [s for s in slow_callbacks("poller_blocks_loop.py") if s >= 0.2], "no stall of 0.2 s or more"
    assert not [s for s in slow_callbacks("poller_blocks_loop_fixed.py") if s >= 0.2]


def test_a_program_whose_bug_keeps_the_cancel_from_ending_it_still_ends_on_time(tmp_path: Path) -> None:
    """``CORPUS_SECONDS`` bounds every program, even one that swallows the cancel meant to end
    it: none outlives its scorer."""
    program = tmp_path / "stubborn.py"
    program.write_text(
        "import asyncio\n\nasync def main():\n    while True:\n        try:\n"
        "            await asyncio.sleep(3600)\n        except asyncio.CancelledError:\n            pass\n\n" + FOOTER)
    env = {**os.environ, "CORPUS_SECONDS": "1", "PYTHONPATH": str(CORPUS)}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(program)], env=env, timeout=60, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30  # 1 s, then the runner's grace of 5 s (generous for a loaded machine)


@pytest.mark.skipif(not os.path.exists("/proc/self/cmdline"), reason="finds the programs through /proc")
def test_the_scorer_stopped_stops_the_programs_it_runs(tmp_path: Path) -> None:
    """SIGTERM to ``corpus_score.py`` stops the programs it started in sessions of their own."""
    import signal

    scorer = subprocess.Popen([sys.executable, str(ROOT / "bench" / "corpus_score.py"), "--only", "event_pulse_missed",
                               "--jobs", "2"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not _corpus_pids("event_pulse_missed", scorer.pid):
            assert time.monotonic() < deadline and scorer.poll() is None, "the programs never started"
            time.sleep(0.1)
        started = _corpus_pids("event_pulse_missed", scorer.pid)
        scorer.send_signal(signal.SIGTERM)
        assert scorer.wait(60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in started):
            assert time.monotonic() < deadline, "a program outlived its scorer"
            time.sleep(0.1)
    finally:
        if scorer.poll() is None:
            scorer.kill()
            scorer.wait(10)
        for pid in _corpus_pids("event_pulse_missed", scorer.pid):
            os.kill(pid, 9)


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _corpus_pids(name: str, scorer: int) -> list[int]:
    """The processes running ``bench/corpus/<name>.py`` or its twin that descend from
    ``scorer`` (a scorer run beside this test has its own)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if not any(a.endswith(f"corpus/{name}.py".encode()) or a.endswith(f"corpus/{name}_fixed.py".encode())
                   for a in args):
            continue
        ancestor = int(entry)
        for _ in range(8):
            ancestor = _parent(ancestor)
            if ancestor == scorer:
                out.append(int(entry))
                break
            if ancestor in (0, 1):
                break
    return out


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs still (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False

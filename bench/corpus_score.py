"""Score ``diag leaks`` on the corpus of real-world hangs in bench/corpus/.

    python bench/corpus_score.py [--only NAME] [--loop asyncio|uvloop] [--min-wait 2] [--jobs 2] [--json FILE]

Each program (``<name>.py``, the bug) and its fixed twin (``<name>_fixed.py``) runs under
``diag run`` with the agent on a unix socket.  Once the program prints ``ready`` and its
``settle_seconds`` (plus ``--min-wait``) have passed, ``diag leaks --format json`` and
``diag tasks --format json --debug 2`` are taken as subprocesses and scored against
``expected.json`` (and any ``expected-*.json`` next to it):

- flagged: a finding of any kind covers a task of an expected stuck group (matched by
  coroutine qualname), or, for a program whose bug blocks the loop, a ``loop_blocked`` finding;
- sound: the covering finding is of a kind in ``diag.analysis.leak_verdicts.DEFAULT_FAIL_ON``;
- wait kind right: every expected group is in the tasks dump with the expected ``wait.kind``;
- on the twin (and on both files of an ``idle_healthy`` pair): fail-on findings (must be 0)
  and suspects.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "bench" / "corpus"
SCHEMA = "diag.corpus/1"
#: The loops a program runs on; a label's ``loops`` narrows them (a bug only one loop has).
LOOPS = ("asyncio", "uvloop")
READY_TIMEOUT = 20.0
COMMAND_TIMEOUT = 60.0
#: The program's entry coroutine and the runner's wrappers around it (asyncio's, uvloop's): a finding
#: naming them is always wrong.
MAIN_COROS = frozenset({"main", "run.<locals>.bounded", "run.<locals>.wrapper"})


def fail_on_kinds() -> frozenset[str]:
    """The kinds ``diag leaks`` fails on by default: what counts as a sound verdict."""
    sys.path.insert(0, str(ROOT))
    from diag.analysis.leak_verdicts import DEFAULT_FAIL_ON, KINDS

    return frozenset(DEFAULT_FAIL_ON) & frozenset(KINDS)


def load_expected(corpus: Path = CORPUS) -> dict[str, dict[str, Any]]:
    """Every program's labels, from ``expected.json`` and any ``expected-*.json``."""
    programs: dict[str, dict[str, Any]] = {}
    for path in sorted(corpus.glob("expected*.json")):
        doc = json.loads(path.read_text())
        if doc.get("schema") != SCHEMA:
            raise SystemExit(f"{path}: schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
        for name, entry in doc["programs"].items():
            if name in programs:
                raise SystemExit(f"{path}: {name} is labelled twice")
            programs[name] = entry
    return programs


@dataclass
class Observation:
    """What one run of one file gave: the program's readiness, the leaks report and the tasks dump."""

    file: str
    ready: bool = False
    error: str = ""
    leaks_exit: int | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    loops: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _lines(stream: Any, out: "queue.Queue[str | None]") -> None:
    """The program's stdout, line by line, then None at its end."""
    for raw in iter(stream.readline, b""):
        out.put(raw.decode(errors="replace").strip())
    out.put(None)


def _diag(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diag", *args], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT, env=env, cwd=ROOT)


def observe(file: str, *, loop: str = "asyncio", settle: float = 3.0, min_wait: float = 2.0,
            corpus: Path = CORPUS) -> Observation:
    """Run ``corpus/file`` under ``diag run``, wait for ``ready`` and the settle time, then take
    ``diag leaks`` and ``diag tasks``; the program is stopped and its temp dir removed after."""
    obs = Observation(file)
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="diag-corpus-")
    sock = os.path.join(tmp, "agent.sock")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DIAG_AGENT", "DIAG_AGENT_DIR")}
    env.update(CORPUS_LOOP=loop, CORPUS_SECONDS=str(int(settle + min_wait + COMMAND_TIMEOUT * 2 + 60)),
               PYTHONUNBUFFERED="1", NO_COLOR="1", COLUMNS="160")
    cmd = [sys.executable, "-m", "diag", "run", "--agent", f"unix:{sock}", "--",
           sys.executable, str(corpus / file)]
    with open(os.path.join(tmp, "stderr.log"), "wb") as err:
        proc = subprocess.Popen(cmd, cwd=corpus, env=env, stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True)
    RUNNING.add(proc)
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        obs.ready = _wait_ready(lines, sock)
        if not obs.ready:
            obs.error = "no 'ready' line within %gs: %s" % (READY_TIMEOUT, _tail(tmp))
            return obs
        time.sleep(settle + min_wait)
        if proc.poll() is not None:
            obs.error = f"the program exited ({proc.returncode}) before it was looked at: {_tail(tmp)}"
            return obs
        target = f"unix:{sock}"
        leaks = _diag(["leaks", target, "--format", "json", "--min-wait", f"{min_wait:g}"], env)
        obs.leaks_exit = leaks.returncode
        if leaks.returncode in (0, 1):
            obs.findings = json.loads(leaks.stdout).get("findings") or []
        else:
            obs.error = f"diag leaks exited {leaks.returncode}: {leaks.stderr.strip()[-300:]}"
        tasks = _diag(["tasks", target, "--format", "json", "--debug", "2"], env)
        if tasks.returncode == 0:
            doc = json.loads(tasks.stdout)
            obs.tasks, obs.loops = doc.get("tasks") or [], doc.get("loops") or []
        else:
            obs.error = obs.error or f"diag tasks exited {tasks.returncode}: {tasks.stderr.strip()[-300:]}"
    except (subprocess.TimeoutExpired, ValueError) as exc:
        obs.error = f"{type(exc).__name__}: {exc}"
    finally:
        _stop(proc)
        RUNNING.discard(proc)
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(tmp, ignore_errors=True)
        obs.seconds = round(time.monotonic() - started, 1)
    return obs


def _wait_ready(lines: "queue.Queue[str | None]", sock: str) -> bool:
    """Whether the program printed ``ready`` and its agent's socket exists, within READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    seen = False
    while time.monotonic() < deadline and not seen:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            return False
        seen = line == "ready"
    while seen and time.monotonic() < deadline and not os.path.exists(sock):
        time.sleep(0.05)
    return seen and os.path.exists(sock)


#: The programs running now (each in a session of its own, so a signal to the scorer does not
#: reach them): stopped by ``run_corpus`` when the scorer is itself stopped.
RUNNING: set[subprocess.Popen[bytes]] = set()


def _leave(signum: int, frame: object) -> None:
    """The scorer's SIGTERM: leave as on Ctrl-C, through ``run_corpus``'s clean-up."""
    raise SystemExit(128 + signum)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the programs stop on it), then SIGKILL; to the program's whole process group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            continue


def _tail(tmp: str) -> str:
    try:
        text = Path(tmp, "stderr.log").read_text(errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-3:])[-400:]


# -- scoring ---------------------------------------------------------------------------------------

def tasks_of(tasks: list[dict[str, Any]], coro: str) -> list[dict[str, Any]]:
    return [t for t in tasks if t.get("coro") == coro]


#: A task counts as stuck the expected way once it has waited this long (every run settles longer).
STUCK_SECONDS = 1.0


def covering(findings: list[dict[str, Any]], coro: str) -> list[dict[str, Any]]:
    """Findings that name a task of ``coro``."""
    return [f for f in findings if any(t.get("coro") == coro for t in f.get("tasks") or ())]


def group_state(obs: Observation, group: dict[str, Any]) -> dict[str, Any]:
    """How one expected stuck group shows in a run: its tasks, their wait kinds, the findings on it."""
    found = tasks_of(obs.tasks, group["coro"])
    kinds = sorted({t.get("wait", {}).get("kind", "?") for t in found})
    # stuck: waiting the expected way, and for a while (a twin's short executor calls are not)
    stuck = [t for t in found if t.get("wait", {}).get("kind") == group["wait_kind"]
             and (t.get("wait", {}).get("seconds") or 0.0) >= STUCK_SECONDS]
    return {"coro": group["coro"], "expected_kind": group["wait_kind"], "expected_count": group.get("count", 1),
            "seen": len(found), "seen_kinds": kinds, "stuck": len(stuck),
            "kind_right": len(stuck) >= group.get("count", 1),
            "finding_kinds": sorted({f["kind"] for f in covering(obs.findings, group["coro"])})}


def finding_rows(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A finding as the JSON output keeps it: kind, title, evidence and the coroutines it names."""
    return [{"kind": f["kind"], "title": f.get("title", ""), "evidence": f.get("evidence", ""),
             "coros": sorted({t.get("coro", "?") for t in f.get("tasks") or ()})} for f in findings]


def main_flagged(findings: list[dict[str, Any]]) -> int:
    return sum(1 for f in findings if any(t.get("coro") in MAIN_COROS for t in f.get("tasks") or ()))


def score_program(name: str, label: dict[str, Any], bug: Observation, twin: Observation,
                  sound_kinds: frozenset[str]) -> dict[str, Any]:
    """One row: did diag flag the bug, soundly, with the right wait kind; what did it say on the twin."""
    healthy = label.get("mechanism") == "idle_healthy"
    groups = [group_state(bug, g) for g in label.get("stuck") or ()]
    twin_groups = [group_state(twin, g) for g in label.get("stuck") or ()]
    kinds_seen = sorted({f["kind"] for f in bug.findings})
    if label.get("loop_blocked"):
        flagged = "loop_blocked" in kinds_seen
        sound = flagged and "loop_blocked" in sound_kinds
    else:
        flagged = any(g["finding_kinds"] for g in groups)
        sound = any(set(g["finding_kinds"]) & sound_kinds for g in groups)
    precision_runs = [twin] + ([bug] if healthy else [])
    return {
        "name": name, "mechanism": label.get("mechanism", "other"), "decidable": bool(label.get("decidable")),
        "loop_blocked": bool(label.get("loop_blocked")), "healthy": healthy,
        "flagged": None if healthy else flagged, "sound": None if healthy else sound,
        "wait_kind_right": all(g["kind_right"] for g in groups) if groups else None,
        "leaks_exit": bug.leaks_exit, "finding_kinds": kinds_seen,
        "twin_fail_on": sum(1 for r in precision_runs for f in r.findings if f["kind"] in sound_kinds),
        "twin_suspects": sum(1 for r in precision_runs for f in r.findings if f["kind"] == "suspect"),
        "twin_other": sum(1 for r in precision_runs for f in r.findings
                          if f["kind"] not in sound_kinds and f["kind"] != "suspect"),
        "twin_finding_kinds": sorted({f["kind"] for r in precision_runs for f in r.findings}),
        "twin_leaks_exit": twin.leaks_exit,
        "twin_still_stuck": [g["coro"] for g in twin_groups if g["stuck"]],
        "main_flagged": sum(main_flagged(r.findings) for r in (bug, twin)),
        "groups": groups, "findings": finding_rows(bug.findings), "twin_findings": finding_rows(twin.findings),
        "errors": [e for e in (bug.error, twin.error) if e],
        "seconds": round(bug.seconds + twin.seconds, 1),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    leaky = [r for r in rows if not r["healthy"]]
    decidable = [r for r in leaky if r["decidable"]]
    with_groups = [r for r in rows if r["wait_kind_right"] is not None]
    precision = len(rows) + sum(1 for r in rows if r["healthy"])
    suspects = sum(r["twin_suspects"] for r in rows)
    return {
        "programs": len(rows), "leaky": len(leaky), "decidable": len(decidable),
        "flagged": sum(1 for r in leaky if r["flagged"]),
        "sound": sum(1 for r in leaky if r["sound"]),
        "sound_decidable": sum(1 for r in decidable if r["sound"]),
        "wait_kind_right": sum(1 for r in with_groups if r["wait_kind_right"]), "with_stuck_groups": len(with_groups),
        "twin_fail_on": sum(r["twin_fail_on"] for r in rows),
        "twin_suspects": suspects, "healthy_runs": precision,
        "twin_other": sum(r["twin_other"] for r in rows),
        "twin_suspects_mean": round(suspects / precision, 2) if precision else 0.0,
        "main_flagged": sum(r["main_flagged"] for r in rows),
        "corpus_errors": sum(1 for r in rows if r["errors"] or r["twin_still_stuck"]),
    }


def render(rows: list[dict[str, Any]], summary: dict[str, Any], out: Any = sys.stdout) -> None:
    def mark(v: Any) -> str:
        return "-" if v is None else ("yes" if v else "no")

    width = max([len("program")] + [len(r["name"]) for r in rows])
    kinds_width = max([len("kinds")] + [len(",".join(r["finding_kinds"])) for r in rows])
    print(f"{'program':{width}} {'mechanism':22} {'flagged':7} {'sound':5} {'wait':4} {'twin-fail':9} "
          f"{'twin-susp':9} {'kinds':{kinds_width}} twin-kinds", file=out)
    for r in rows:
        print(f"{r['name']:{width}} {r['mechanism']:22} {mark(r['flagged']):7} {mark(r['sound']):5} "
              f"{mark(r['wait_kind_right']):4} {r['twin_fail_on']:<9} {r['twin_suspects']:<9} "
              f"{','.join(r['finding_kinds']) or '-':{kinds_width}} {','.join(r['twin_finding_kinds']) or '-'}",
              file=out)
        for err in r["errors"]:
            print(f"    error: {err}", file=out)
        if r["twin_still_stuck"]:
            print(f"    corpus: the twin still shows {', '.join(r['twin_still_stuck'])} stuck", file=out)
    s = summary
    print(file=out)
    print(f"leaks flagged at all:          {s['flagged']}/{s['leaky']}", file=out)
    print(f"with a sound verdict:          {s['sound']}/{s['leaky']} "
          f"({s['sound_decidable']}/{s['decidable']} decidable)", file=out)
    print(f"wait kind right:               {s['wait_kind_right']}/{s['with_stuck_groups']}", file=out)
    print(f"fail-on verdicts on twins:     {s['twin_fail_on']} (must be 0)", file=out)
    print(f"suspects on twins:             {s['twin_suspects']} (mean {s['twin_suspects_mean']} per healthy run)",
          file=out)
    print(f"other findings on twins:       {s['twin_other']} (exhausted and kinds not failed on)", file=out)
    print(f"findings naming main:          {s['main_flagged']}", file=out)
    if s["corpus_errors"]:
        print(f"programs with corpus problems: {s['corpus_errors']} (run errors, or a twin stuck as labelled)",
              file=out)


def run_corpus(names: list[str], labels: dict[str, dict[str, Any]], *, loop: str, min_wait: float,
               jobs: int, corpus: Path = CORPUS) -> list[dict[str, Any]]:
    sound_kinds = fail_on_kinds()
    units = [(name, file) for name in names for file in (f"{name}.py", f"{name}_fixed.py")]

    def one(unit: tuple[str, str]) -> Observation:
        name, file = unit
        return observe(file, loop=loop, settle=float(labels[name].get("settle_seconds", 3)),
                       min_wait=min_wait, corpus=corpus)

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        seen = dict(zip(units, pool.map(one, units)))
    except BaseException:  # stopped (SIGTERM, Ctrl-C): start no more, stop those running
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(RUNNING):
            _stop(proc)
        raise
    pool.shutdown()
    return [score_program(name, labels[name], seen[(name, f"{name}.py")], seen[(name, f"{name}_fixed.py")],
                          sound_kinds) for name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="score only this program (repeatable)")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("--min-wait", type=float, default=2.0, help="diag leaks --min-wait (seconds)")
    parser.add_argument("--jobs", type=int, default=2, help="programs run at once")
    parser.add_argument("--json", type=Path, help="also write every row and the summary here")
    args = parser.parse_args(argv)
    labels = load_expected()
    names = sorted(labels)
    if args.only:
        unknown = sorted(set(args.only) - set(labels))
        if unknown:
            print(f"corpus_score: unknown program {unknown[0]!r}", file=sys.stderr)
            return 2
        names = [n for n in names if n in args.only]
    # a bug that only one kind of loop has (``loops`` in its label) is scored on that loop only
    skipped = [n for n in names if args.loop not in labels[n].get("loops", LOOPS)]
    names = [n for n in names if n not in skipped]
    if skipped:
        print(f"not on {args.loop} (their bug needs another loop): {', '.join(skipped)}", file=sys.stderr)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _leave)
    rows = run_corpus(names, labels, loop=args.loop, min_wait=args.min_wait, jobs=args.jobs)
    summary = summarise(rows)
    render(rows, summary)
    print(f"\n{len(rows)} programs on {args.loop}, python {sys.version.split()[0]}, "
          f"{time.monotonic() - started:.0f}s", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps({"schema": "diag.corpus-score/1", "loop": args.loop,
                                         "python": sys.version.split()[0], "min_wait": args.min_wait,
                                         "summary": summary, "programs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

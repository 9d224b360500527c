"""``diag profile`` against the real target server: the hot path of each endpoint shows up
under the right clock, the profiler never outlives its window, and bad requests fail cleanly."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import pstats
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import ROOT, assert_one_line_error, diag_env, run_diag
from tests.support.target import TargetServer, free_port, get_json, http
from tests.target.helpers import get, release, wait_until

CPU_FUNCS = {"crunch", "_mix", "_hash_round"}
SLOW_FUNCS = {"fetch_remote", "_simulated_io"}


@pytest.fixture(scope="module")
def server() -> Iterator[TargetServer]:
    with TargetServer("--rate", "1000000", "--burst", "1000000", "--leak-cap", "200",
                      "--log-level", "WARNING") as srv:
        yield srv


@pytest.fixture(scope="module")
def agent(server: TargetServer) -> str:
    url = get_json(server.url + "/healthz")["diag_agent"]
    assert url and url.startswith("http://127.0.0.1:")
    return str(url)


class Load:
    """Requests to one path from a few threads until stopped (bounded by ``limit`` each)."""

    def __init__(self, url: str, threads: int = 2, limit: int = 400) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(url, limit), daemon=True) for _ in range(threads)]

    def _run(self, url: str, limit: int) -> None:
        for _ in range(limit):
            if self.stop.is_set():
                return
            http("GET", url, timeout=10)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def post_json(url: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def profile_json(*args: str) -> dict[str, Any]:
    # --force: the yappi installed here keeps every coroutine it sees (test_profile_leftovers.py)
    proc = run_diag("profile", *args, "--format", "json", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "fewer requests/s" in proc.stderr  # the overhead is said before the window
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def top_names(snap: dict[str, Any], key: str, n: int, *, user_only: bool = True) -> list[str]:
    funcs = [f for f in snap["functions"] if not user_only or "target_server" in f["file"]]
    return [f["name"] for f in sorted(funcs, key=lambda f: -f[key])[:n]]


def seconds_of(snap: dict[str, Any], names: set[str], key: str) -> float:
    return sum(f[key] for f in snap["functions"] if f["name"] in names and "target_server" in f["file"])


@pytest.mark.serial
def test_cpu_endpoint_dominates_a_cpu_clock_profile(server: TargetServer, agent: str, tmp_path: Path) -> None:
    # Short requests, many to a window: with 100,000 rounds only two or three requests fell
    # in 3 s on a busy machine, and crunch's own time, in calls cut by the window's edges,
    # all but vanished from yappi's figures (0.003 s) while _mix's and _hash_round's stayed.
    with Load(server.url + "/work/cpu?n=20000"):  # 3 s: _hash_round and crunch are close in own time
        snap = profile_json(agent, "--seconds", "3", "--clock", "cpu", "-o", str(tmp_path / "cpu.pstat"))
    assert (snap["mode"], snap["clock"]) == ("yappi", "cpu")
    # The hot chain leads by own time: _mix, the heaviest leaf, first (about twice the
    # others), then _hash_round and crunch's own loop, which measure within a few per cent
    # of each other (0.74-0.75 s and 0.71-0.75 s of 3 s here, 0.44 s and 0.36-0.43 s with
    # both cores kept busy), far above any middleware (0.001-0.002 s).
    top = top_names(snap, "own_seconds", 3)
    assert top[0] == "_mix" and set(top) == CPU_FUNCS, top
    by_name = {f["name"]: f for f in snap["functions"] if "target_server" in f["file"]}
    assert by_name["crunch"]["calls"] > 0
    everything = sum(f["own_seconds"] for f in snap["functions"])
    assert seconds_of(snap, CPU_FUNCS, "own_seconds") > 0.5 * everything
    stats = pstats.Stats(str(tmp_path / "cpu.pstat"))
    assert any(name == "crunch" for (_, _, name) in stats.stats)  # type: ignore[attr-defined]


@pytest.mark.serial
def test_slow_await_dominates_wall_clock_and_not_cpu(server: TargetServer, agent: str, tmp_path: Path) -> None:
    with Load(server.url + "/work/slow?ms=100", threads=4):
        wall = profile_json(agent, "--mode", "yappi", "--seconds", "1.5", "--clock", "wall", "-o",
                            str(tmp_path / "wall.json"))
        cpu = profile_json(agent, "--seconds", "1.5", "--clock", "cpu")
    # the middlewares wrap every request; below them, the simulated I/O is where the time goes
    busiest = max(f["total_seconds"] for f in wall["functions"] if "target_server" in f["file"])
    for name in SLOW_FUNCS:
        assert seconds_of(wall, {name}, "total_seconds") > 0.8 * busiest, (name, busiest)
    assert seconds_of(wall, {"_simulated_io"}, "total_seconds") > 1.0  # 4 requests waiting at any time
    assert seconds_of(cpu, {"_simulated_io"}, "total_seconds") < 0.1
    # the saved profile renders again, and against itself as a base it shows no difference
    again = run_diag("profile", str(tmp_path / "wall.json"), "--format", "text", "--filter", "target_server/work",
                     "--sort", "total")
    assert again.returncode == 0, again.stderr
    assert "fetch_remote" in again.stdout and "yappi, wall clock" in again.stdout
    diff = run_diag("profile", str(tmp_path / "wall.json"), "--base", str(tmp_path / "wall.json"),
                    "--format", "text", "--top", "3")
    assert diff.returncode == 0 and "difference" in diff.stdout
    assert " 0.0000" in diff.stdout
    by_task = run_diag("profile", str(tmp_path / "wall.json"), "--by", "task", "--format", "text")
    assert "slow_handler" in by_task.stdout


@pytest.mark.serial
def test_sample_mode_stacks_hold_the_cpu_chain(server: TargetServer, agent: str, tmp_path: Path) -> None:
    folded = tmp_path / "cpu.collapsed"
    with Load(server.url + "/work/cpu?n=100000"):
        proc = run_diag("profile", agent, "--mode", "sample", "--seconds", "1.5", "-o", str(folded),
                        "--by", "task", "--format", "text")
    assert proc.returncode == 0, proc.stderr
    assert "sampling" in proc.stdout and "RequestHandler._handle_request" in proc.stdout  # the request task
    lines = folded.read_text().splitlines()
    chains = [line for line in lines if "crunch (" in line and "_mix (" in line]
    assert chains, lines[:5]
    assert any(line.index("crunch (") < line.index("_mix (") for line in chains)  # outermost first
    assert all(line.startswith("task ") for line in lines)
    speed = run_diag("profile", agent, "--mode", "sample", "--seconds", "0.5", "-o", str(tmp_path / "s.speedscope.json"))
    assert speed.returncode == 0, speed.stderr
    doc = json.loads((tmp_path / "s.speedscope.json").read_text())
    assert doc["profiles"][0]["type"] == "sampled"


def test_killed_client_leaves_no_profiler_running(agent: str) -> None:
    cmd = [sys.executable, "-m", "diag", "profile", agent, "--mode", "yappi", "--seconds", "2.5", "--format", "json",
           "--force"]
    client = subprocess.Popen(cmd, cwd=ROOT, env=diag_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # killed mid-profile, once the profile runs (a loaded machine starts the CLI slowly)
        wait_until(lambda: get_json(agent + "/debug/diag/profile/status")["yappi_running"], timeout=20, interval=0.05)
    finally:
        client.kill()
        client.wait(5)
    status = wait_until(lambda: (s := get_json(agent + "/debug/diag/profile/status"))["busy"] is False and s,
                        timeout=10, interval=0.1)
    assert status["yappi_running"] is False and status["sampler_running"] is False
    again = run_diag("profile", agent, "--mode", "yappi", "--seconds", "0.3", "--format", "text", "--force")
    assert again.returncode == 0, again.stderr


def test_second_profile_is_refused_as_busy(agent: str) -> None:
    # long enough for a second CLI to start and ask while it runs, on a loaded machine too
    cmd = [sys.executable, "-m", "diag", "profile", agent, "--mode", "yappi", "--seconds", "4", "--format", "json",
           "--force"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=diag_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: get_json(agent + "/debug/diag/profile/status")["busy"], timeout=20, interval=0.05)
        second = run_diag("profile", agent, "--seconds", "1", "--mode", "sample")
        assert second.returncode == 3 and second.stdout == ""
        assert second.stderr.strip().splitlines()[-1].startswith("diag: error: ")
        assert "busy" in second.stderr and "Traceback" not in second.stderr
    finally:
        out, err = first.communicate(timeout=20)
    assert first.returncode == 0, err
    assert json.loads(out)["mode"] == "yappi"


def test_wall_clock_yappi_is_refused_with_too_many_tasks(server: TargetServer, agent: str) -> None:
    try:
        for _ in range(30):
            assert get(server, "/leak/forgotten-task")[0] == 202
        refused = run_diag("profile", agent, "--mode", "yappi", "--seconds", "0.3", "--max-tasks", "20")
        assert refused.returncode == 3, refused.stderr
        last = refused.stderr.strip().splitlines()[-1]
        assert "live tasks" in last and "--mode sample" in last and refused.stdout == ""
        cpu = run_diag("profile", agent, "--seconds", "0.3", "--max-tasks", "20", "--clock", "cpu")
        if cpu.returncode != 0:  # refused only for yappi's own leak (test_profile_leftovers.py)
            assert "sumerc/yappi#217" in cpu.stderr, cpu.stderr
        assert "live tasks" not in cpu.stderr  # the cpu clock does not have the slowdown
        forced = profile_json(agent, "--mode", "yappi", "--seconds", "0.3", "--max-tasks", "20", "--force")
        assert any("forced" in n for n in forced["notes"])
    finally:
        release(server)


def test_profile_on_the_apps_own_port_runs_through_its_agent(server: TargetServer, agent: str) -> None:
    proc = run_diag("profile", server.url, "--seconds", "0.3", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert f"profiling through its agent at {agent}" in proc.stderr
    assert json.loads(proc.stdout)["mode"] == "sample"
    # the app's route itself still refuses a window on its own loop, naming the agent
    status, body = post_json(server.url + "/debug/diag/profile?seconds=0.1")
    assert status == 409 and agent in body["error"] and "block this event loop" in body["error"]


@pytest.mark.parametrize(("args", "code", "expected"), [
    (("--clock", "sundial"), 2, "--clock must be one of wall, cpu"),
    (("--mode", "guess"), 2, "--mode must be one of"),
    (("--mode", "yappi", "-o", "out.collapsed"), 2, "use --mode sample"),
    (("--mode", "yappi", "-o", "out.speedscope.json"), 2, "use --mode sample"),
    (("-o", "out.pstat"), 2, "use --mode yappi"),  # the default is the sampler
    (("--mode", "sample", "-o", "out.pstat"), 2, "use --mode yappi"),
    (("--mode", "sample", "--clock", "cpu"), 2, "--clock cpu needs --mode yappi"),
    (("--seconds", "61"), 2, "at most 60"),
    (("--sort", "size"), 2, "--sort must be one of"),
    (("--filter", "(("), 2, "bad --filter regex"),
    (("-o", "out.txt"), 2, "cannot tell the format"),
])
def test_bad_options_fail_before_touching_the_target(args: tuple[str, ...], code: int, expected: str,
                                                     tmp_path: Path) -> None:
    target = f"http://127.0.0.1:{free_port()}"  # nothing listens: options are checked first
    line = assert_one_line_error(run_diag("profile", target, *args, cwd=tmp_path), code)
    assert expected in line


def test_unreachable_target() -> None:
    proc = run_diag("profile", f"http://127.0.0.1:{free_port()}", "--seconds", "0.2")
    assert proc.returncode == 3 and "connection refused" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("content", [b"\x00\xffgarbage", b'{"schema": "diag.tasks/1"}', b'{"schema": "diag.profile/9"}',
                                     b'{"schema": "diag.profile/1", "functions": [{"name": "f"}], '
                                     b'"edges": [{"caller": 0, "callee": 7}]}'])
def test_garbage_profile_file(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    line = assert_one_line_error(run_diag("profile", str(path)), 3)
    assert str(path) in line


def test_stack_format_from_a_saved_yappi_profile_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"schema": "diag.profile/1", "taken_at": 1.0, "mode": "yappi", "functions": []}))
    line = assert_one_line_error(run_diag("profile", str(path), "-o", str(tmp_path / "x.collapsed")), 2)
    assert "--mode sample" in line


@pytest.mark.serial
def test_samples_delayed_by_a_busy_loop_count_for_their_delay() -> None:
    # The sampler thread needs the GIL to read a stack; while the loop thread runs Python,
    # it gets it only at the next switch interval (raised to 50 ms here, 5 sampling
    # periods). A late sample must count for the time it stood for, or busy code would
    # read as a small share of the window: unweighted, `busy` below gets about 40 %.
    import asyncio

    from diag.collect import profiler
    from diag.collect.profiler import LoopThread, ProfileOptions

    def busy(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    async def main() -> tuple[Any, float]:
        target = LoopThread(threading.get_ident(), "MainThread", asyncio.get_running_loop())
        result: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: result.update(
            snap=profiler.take_profile(ProfileOptions(mode="sample", seconds=2.0), target)))
        thread.start()
        busy_s = total_s = 0.0
        while thread.is_alive():
            t0 = time.perf_counter()
            busy(0.12)
            busy_s += time.perf_counter() - t0
            await asyncio.sleep(0.04)
            total_s += time.perf_counter() - t0
        thread.join()
        return result["snap"], busy_s / total_s

    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    try:
        snap, true_share = asyncio.run(main())
    finally:
        sys.setswitchinterval(previous)
    in_busy = sum(s.count for s in snap.stacks if any(snap.frames[i].name.endswith("busy") for i in s.frames))
    share = in_busy / snap.samples
    assert true_share > 0.6
    assert share > true_share - 0.15, (share, true_share, snap.notes)
    assert any("late" in note for note in snap.notes)  # says its samples were weighted

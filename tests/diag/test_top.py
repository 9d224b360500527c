"""``diag top``: the summary on hand-built samples, the frame at a fixed width, and the
command against the real target server, in a pipe and under a pseudo-terminal."""

from __future__ import annotations

import datetime
import fcntl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import io
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from typing import Any
from dataclasses import replace

import pytest
from rich.console import Console

from diag.analysis.top_summary import Outage, TopOptions, primitive_line, request_rate, summarize
from diag.cli.app import main
from diag.cli.top_cmd import Frames, Keys, failure_reason, run_view
from diag.errors import TargetError
from diag.render import top_view
from diag.model.sync_snapshot import Holder, PrimitiveState, SyncSnapshot
from diag.model.task_snapshot import Frame, LoopInfo, Primitive, ProcessInfo, TaskSnapshot, Wait, count_totals
from diag.model.top_sample import MetricsSample, TopSample
from diag.sources.top_source import parse_requests
from tests.support.cli import ROOT, assert_one_line_error, diag_env, run_diag
from tests.support.target import TargetServer, free_port, get_json, http

from .snapshots import ACQUIRE, FETCH, POOL, SLEEP, WORKER, snapshot, task

UTC = datetime.timezone.utc
T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
SITE = (ACQUIRE, FETCH)


# --- hand-built samples ----------------------------------------------------------------------------------------

def sample(*, at: float = 100.0, requests: tuple[tuple[str, float], ...] | None = (("2xx", 90.0), ("5xx", 10.0)),
           pid: int = 4242, total: int | None = None, note: str = "", loops: tuple[LoopInfo, ...] = ()) -> TopSample:
    """Three fetchers on an exhausted pool (one holder leaked), a sleeping worker and a queue consumer."""
    worker = task(9, name="worker", stack=(SLEEP, WORKER), coro="Worker.run",
                  wait=Wait("sleep", "sleep", seconds=5.0, time_left=55.0), created=None)
    queue = Primitive("queue", "0x7f00b0", "jobs", size=0, maxsize=8, getters=1, putters=0, waiters=1)
    consumer = task(10, coro="consume", stack=(Frame("/srv/app/jobs.py", 5, "consume", "await jobs.get()"),),
                    wait=Wait("queue_get", "Queue.get", queue, seconds=40.0))
    runner = task(11, coro="tick", state="running", wait=Wait("running"))
    tasks = snapshot(task(42, name="fetch"), task(43), task(44), worker, consumer, runner, loops=loops)
    tasks = TaskSnapshot(tasks.taken_at + at, ProcessInfo(pid, ("app.py",), "3.11.7", "0.1.0"), tasks.tasks,
                         tasks.loops, total if total is not None else len(tasks.tasks), False, tasks.wait_clock)
    pool = PrimitiveState(POOL, holders=(
        Holder(7, "old", False, "finished", SITE, 310.0),
        Holder(8, "slow", True, "waiting", SITE, 2.5),
    ), waiting_tasks=(42, 43, 44), longest_wait=347.0, tracked=True)
    idle_lock = PrimitiveState(Primitive("lock", "0x7f00c0", "Cache.lock", locked=False, waiters=0), tracked=True)
    jobs = PrimitiveState(queue, waiting_tasks=(10,), longest_wait=40.0)
    sync = SyncSnapshot(tasks.taken_at, tasks.process, tasks, (idle_lock, jobs, pool), holders_tracked=True)
    return TopSample(at, T0 + at, sync, MetricsSample(at, requests, note))


def test_counts_stay_totals_when_the_agent_cut_its_answer() -> None:
    full = sample()
    every = full.sync.tasks.tasks
    totals = count_totals(every + tuple(replace(t, id=t.id + 1000) for t in every if t.state == "waiting") * 9)
    cut = replace(full.sync.tasks, tasks=every[:2], total_tasks=51, totals=totals)
    summary = summarize("app:1", replace(full, sync=replace(full.sync, tasks=cut)))
    assert summary.total_tasks == 51
    assert dict(summary.states) == {"running": 1, "ready": 0, "waiting": 50}
    assert summary.waits == (("semaphore", 30), ("queue_get", 10), ("sleep", 10))
    assert TaskSnapshot.from_dict(cut.to_dict()).totals == totals  # kept in saved files


def test_summary_counts_states_and_waits_and_groups_only_stuck_tasks() -> None:
    summary = summarize("app:1", sample())
    assert summary.pid == 4242 and summary.total_tasks == 6
    assert dict(summary.states) == {"running": 1, "ready": 0, "waiting": 5}
    assert summary.waits == (("semaphore", 3), ("queue_get", 1), ("sleep", 1))
    # the sleeper and the idle consumer are counted above but are not "stuck"
    assert [(g.count, g.coro, g.wait.seconds) for g in summary.groups] == [(3, "fetch", 347.0)]
    assert summary.groups_total == 1
    idle = summarize("app:1", sample(), options=TopOptions(idle=True))
    assert sorted(g.coro for g in idle.groups) == ["Worker.run", "consume", "fetch"]
    assert summarize("app:1", sample(), options=TopOptions(min_wait=400)).groups == ()
    assert summary.tasks_delta is None and summary.outage is None


def test_summary_lists_primitives_with_waiters_most_waited_first() -> None:
    summary = summarize("app:1", sample(), options=TopOptions(limit=1))
    assert summary.primitives_total == 2
    (pool,) = summary.primitives
    assert pool.state.primitive.label == "Client.pool"
    # a plain Semaphore at 0: its size is what is held (tracked), all of it in use
    assert (pool.waiters, pool.in_use, pool.capacity, pool.leaked) == (3, 2, 2, 1)


@pytest.mark.parametrize(("prim", "tracked", "holders", "expected"), [
    (Primitive("bounded_semaphore", "1", value=1, capacity=4, waiters=0), False, 0, (3, 4)),
    (Primitive("semaphore", "1", value=2, waiters=0), True, 3, (3, 5)),
    (Primitive("semaphore", "1", value=0, waiters=2), False, 0, (None, None)),
    (Primitive("lock", "1", locked=True, waiters=1), True, 1, (1, 1)),
    (Primitive("queue", "1", size=3, maxsize=0, putters=0, getters=0), False, 0, (3, None)),
    (Primitive("event", "1", is_set=False, waiters=5), False, 0, (None, None)),
])
def test_permits_in_use(prim: Primitive, tracked: bool, holders: int, expected: tuple[int | None, int | None]) -> None:
    state = PrimitiveState(prim, holders=tuple(Holder(i, None, True, "waiting", SITE, 1.0) for i in range(holders)),
                           tracked=tracked)
    line = primitive_line(state)
    assert (line.in_use, line.capacity) == expected


def test_a_live_holder_whose_taker_left_past_its_release_counts_as_leaked() -> None:
    lock = Primitive("lock", "1", locked=True, waiters=2)
    left = Holder(7, None, True, "waiting", SITE, 40.0, skipped_release=(21,))
    line = primitive_line(PrimitiveState(lock, holders=(left,), tracked=True))
    assert line.leaked == 1 and top_view.holders_text(line) == "task 7 waiting LEAKED 40s (1 leaked)"
    handed = primitive_line(PrimitiveState(lock, holders=(left,), tracked=True, handoff_seconds=1.0))
    assert handed.leaked == 0 and top_view.holders_text(handed) == "task 7 waiting 40s"


def test_request_rate_from_two_samples() -> None:
    first = sample(at=100.0)
    second = sample(at=102.0, requests=(("2xx", 110.0), ("5xx", 14.0)))
    rate = request_rate(second, first)
    assert rate.per_second == pytest.approx(12.0) and rate.total == 124.0
    assert dict(rate.by_series) == pytest.approx({"2xx": 10.0, "5xx": 2.0})
    summary = summarize("app:1", second, first)
    assert summary.requests == rate and summary.tasks_delta == 0


@pytest.mark.parametrize(("previous", "current", "note"), [
    (None, sample(), "needs two samples"),
    (sample(at=100.0), sample(at=101.0, requests=(("2xx", 5.0),)), "the counter went back (reset)"),
    (sample(at=100.0), sample(at=101.0, pid=9), "the target restarted"),
    (sample(at=100.0, requests=None), sample(at=101.0), "needs two samples"),
    (sample(at=100.0), sample(at=101.0, requests=None, note="the target serves no metrics endpoint"),
     "the target serves no metrics endpoint"),
])
def test_no_rate_says_why(previous: TopSample | None, current: TopSample, note: str) -> None:
    rate = summarize("app:1", current, previous).requests
    assert rate.per_second is None and rate.note == note


def test_an_outage_keeps_the_last_answer_and_gives_no_rate() -> None:
    summary = summarize("app:1", sample(at=101.0), sample(at=100.0), outage=Outage(T0 + 105, "connection refused", 3))
    assert summary.stale and summary.requests.per_second is None and summary.requests.note == "target unreachable"
    assert summary.tasks_delta is None and summary.groups[0].count == 3


def test_tasks_awaiting_each_other_are_a_deadlock() -> None:
    one = sample()
    a = task(5, name="a", wait=Wait("task", "await task", tasks=(7,), seconds=12.0))
    b = task(7, name="b", wait=Wait("task", "await task", tasks=(5,), seconds=12.0))
    tasks = snapshot(a, b)
    sync = SyncSnapshot(tasks.taken_at, tasks.process, tasks, ())
    summary = summarize("app:1", TopSample(1.0, T0, sync, one.metrics))
    assert summary.await_cycles == ((5, 7),)
    assert "DEADLOCK: await cycle task 5 -> task 7 -> task 5" in frame_text(summary)


def test_parse_requests_sums_each_series() -> None:
    text = """# HELP diag_aiohttp_requests_total Requests served, by status class.
# TYPE diag_aiohttp_requests_total counter
diag_aiohttp_requests_total{status="2xx"} 120.0
diag_aiohttp_requests_total{status="5xx"} 3.0
diag_aiohttp_requests_created{status="2xx"} 1.8e+09
diag_aiohttp_in_flight 2.0
"""
    assert parse_requests(text) == (("2xx", 120.0), ("5xx", 3.0))
    assert parse_requests("diag_aiohttp_in_flight 2.0\n") is None
    with pytest.raises(ValueError):
        parse_requests("<html>not metrics</html>")


def test_sample_round_trips_through_json() -> None:
    one = sample()
    assert TopSample.from_dict(json.loads(one.to_json())) == one
    with pytest.raises(TargetError, match="newer"):
        TopSample.from_dict({**one.to_dict(), "schema": "diag.top/2"})


# --- the frame ---------------------------------------------------------------------------------------------------

def frame_text(summary: Any, width: int = 110, hint: str = "") -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=False)
    console.print(top_view.render(summary, interval=1.0, hint=hint, cwd="/srv/app", tz=UTC))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


EXPECTED_FRAME = """\
diag top app:1 | pid 4242 (python 3.11.7) | 08:00:02 | every 1s | q quits
status: ok
tasks: 6 pending (+0): 1 running, 0 ready, 5 waiting
waiting on: semaphore 3, queue_get 1, sleep 1
loop 0x7f00l on MainThread: STALLED for 3.5s at handlers.py:40 blocking_handler
requests/s: 12.0 (2xx 10.0, 5xx 2.0)

stuck tasks, biggest groups (1 of 1)
Count   Waits on                        Longest   Coroutine   Where
────────────────────────────────────────────────────────────────────────────────
    3   Semaphore.acquire Client.pool     5m47s   fetch       client.py:20 fetch

primitives with waiters (2 of 2)
Kind        Label         In use   Waiters   Longest   Holders
──────────────────────────────────────────────────────────────────────────────────────────────────────────
semaphore   Client.pool      2/2         3     5m47s   task 7 LEAKED 5m10s, task 8 waiting 2.5s (1 leaked)
queue       jobs             0/8         1       40s   -
"""


def test_frame_at_a_fixed_width() -> None:
    stalled = (LoopInfo("0x7f00l", 1, "MainThread", True, 0.0002, 3.5,
                        (Frame("/srv/app/handlers.py", 40, "blocking_handler", "time.sleep(5)"),)),)
    summary = summarize("app:1", sample(at=2.0, requests=(("2xx", 110.0), ("5xx", 14.0)), loops=stalled),
                        sample(at=0.0, loops=stalled))
    assert frame_text(summary, hint="q quits") == EXPECTED_FRAME


def test_frame_of_an_unreachable_target() -> None:
    summary = summarize("app:1", sample(at=2.0), sample(at=1.0), outage=Outage(T0 + 7, "connection refused", 2))
    text = frame_text(summary, width=160)
    lines = text.splitlines()
    assert lines[1] == ("status: target unreachable since 08:00:07: connection refused "
                        "(2 failed attempts, retrying; showing the answer of 08:00:02)")
    assert "requests/s: n/a (target unreachable)" in lines
    assert "loop 0x7f00l on MainThread: turning, lag 0.2ms" in lines
    once = frame_text(summarize("app:1", sample(at=2.0), sample(at=1.0), outage=Outage(T0 + 7, "refused", 1)),
                      width=160)
    assert "(1 failed attempt, retrying;" in once.splitlines()[1]


def test_labels_are_not_markup() -> None:
    bracketed = PrimitiveState(Primitive("semaphore", "0x1", "[app.work_pool]", value=0, waiters=1),
                               waiting_tasks=(42,), longest_wait=1.0)
    one = sample()
    sync = SyncSnapshot(one.sync.taken_at, one.sync.process, one.sync.tasks, (bracketed,))
    text = frame_text(summarize("app:1", TopSample(1.0, T0, sync, one.metrics)))
    assert "[app.work_pool]" in text and "not tracked" in text


# --- the refresh loop, in process --------------------------------------------------------------------------------

def test_view_shows_an_outage_then_recovers() -> None:
    answers: list[TopSample | Exception] = [
        sample(at=0.0), TargetError("app:1: connection refused (is the process running with the diag agent?)"),
        TargetError("app:1: no answer within 5s (--timeout)"), sample(at=3.0, requests=(("2xx", 130.0), ("5xx", 10.0))),
    ]
    walls = iter([T0 + 1, T0 + 2])

    def fetch() -> TopSample:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    out = io.StringIO()
    frames = Frames(Console(file=out, width=120, color_system=None), live=False, interval=0.01)
    assert run_view(fetch, frames, Keys(None), target="app:1", options=TopOptions(), interval=0.01, iterations=4,
                    wall=lambda: next(walls)) == 0
    statuses = [line for line in out.getvalue().splitlines() if line.startswith("status:")]
    assert len(statuses) == 4 and statuses[0] == statuses[3] == "status: ok"
    since = top_view.clock(T0 + 1)
    assert statuses[1].startswith(f"status: target unreachable since {since}: connection refused (is the")
    assert statuses[2].startswith(f"status: target unreachable since {since}: no answer within 5s (--timeout) "
                                  "(2 failed attempts")
    assert "requests/s: 13.3 (2xx 13.3, 5xx 0.0)" in out.getvalue()


def test_failure_reason_drops_the_target_name() -> None:
    assert failure_reason(TargetError("http://h:1: connection refused"), "h:1") == "connection refused"
    assert failure_reason(ValueError("odd"), "h:1") == "ValueError: odd"


# --- the command ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--interval", "0"], ["--interval", "0.01"], ["--interval", "-1"], ["--interval", "soon"], ["--interval", "nan"],
    ["--iterations", "0"], ["--once", "--iterations", "3"], ["--limit", "0"], ["--timeout", "0"], ["--min-wait", "-1"],
    ["--bogus"],
])
def test_bad_flags_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """In process (the CLI's own subprocess path is covered by the unreachable test)."""
    assert main(["top", "http://127.0.0.1:9", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("diag: error: "), err


def test_a_saved_file_is_not_a_live_target(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", str(tmp_path / "tasks.json")]) == 2
    assert "diag top watches a live process" in capsys.readouterr().err


def test_unreachable_target_is_one_line_and_exit_3() -> None:
    line = assert_one_line_error(run_diag("top", f"http://127.0.0.1:{free_port()}", "--once", timeout=20), 3)
    assert "connection refused" in line


class _FakeAgent(BaseHTTPRequestHandler):
    """An agent with a request counter that grows by 25 on every read of /metrics; with
    ``hang_after`` set, sync answers after that many hang until the test ends."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        server: Any = self.server
        if self.path.startswith("/debug/diag/sync"):
            server.syncs += 1
            if server.hang_after is not None and server.syncs > server.hang_after:
                server.release.wait(10)
                return
            body, kind = server.sync.encode(), "application/json"
        elif self.path == "/debug/diag/metrics":
            server.served += 25
            body = (f'diag_aiohttp_requests_total{{status="2xx"}} {server.served}\n'
                    'diag_aiohttp_requests_total{status="4xx"} 1\n').encode()
            kind = "text/plain; version=0.0.4"
        else:
            body, kind = b'{"error": "no such endpoint"}', "application/json"
        self.send_response(200 if kind != "application/json" or b"error" not in body else 404)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake_agent() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _FakeAgent)
    server.daemon_threads = True
    server.sync = sample().sync.to_json()
    server.served = server.syncs = 0
    server.hang_after = None
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, name="fake-agent", daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def url(server: Any) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_requests_per_second_from_the_metrics_endpoint(fake_agent: Any) -> None:
    proc = run_diag("top", url(fake_agent), "--iterations", "2", "--interval", "0.5", timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    rates = re.findall(r"^requests/s: (.*)$", proc.stdout, re.M)
    assert rates[0] == "n/a (needs two samples)"
    match = re.fullmatch(r"(\d+\.\d) \(2xx (\d+\.\d), 4xx 0\.0\)", rates[1])
    assert match, rates
    assert 25 / 1.5 < float(match[1]) < 25 / 0.3  # 25 requests in about half a second
    assert proc.stdout.count("Client.pool") >= 2


@pytest.fixture(scope="module")
def leaky() -> Iterator[TargetServer]:
    """The target server with its work pool leaked dry, three requests queued on it,
    and two producers stuck on a full queue."""
    with TargetServer("--max-concurrency", "4", "--pool-wait", "20", "--request-timeout", "30") as server:
        for _ in range(4):
            assert http("GET", server.url + "/leak/semaphore")[0] == 502
        for _ in range(3):
            assert http("GET", server.url + "/leak/blocked-put")[0] == 202
        waiters = [threading.Thread(target=http, args=("GET", server.url + "/work/slow?ms=10"),
                                    kwargs={"timeout": 30}, daemon=True) for _ in range(3)]
        for w in waiters:
            w.start()
        deadline = time.monotonic() + 10
        while True:
            tasks = get_json(server.url + "/debug/diag/tasks?debug=2")["tasks"]
            if sum(t["wait"]["kind"] == "semaphore" for t in tasks) == 3:
                break
            assert time.monotonic() < deadline, tasks
            time.sleep(0.1)
        yield server
        assert http("POST", server.url + "/admin/release")[0] == 200
        for w in waiters:
            w.join(10)


def test_top_shows_the_stuck_group_and_the_exhausted_pool(leaky: TargetServer) -> None:
    proc = run_diag("top", leaky.url, "--iterations", "2", "--interval", "0.5", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    frames = proc.stdout.split("\ndiag top ")
    assert len(frames) == 2, proc.stdout
    last = frames[1]
    assert re.search(r"^\s*2\s+Queue\.put LeakRegistry\.undrained_queue .* blocked_put_producer", last, re.M), last
    assert re.search(r"^\s*3\s+Semaphore\.acquire \S+ .* acquire_within", last, re.M), last
    pool = re.search(r"^semaphore\s+\S+\s+4/4\s+3\s+\S+\s+task \d+ LEAKED", last, re.M)
    assert pool, last
    assert re.search(r"^requests/s: (n/a|\d+\.\d)", last, re.M), last
    # On a loaded machine the server may wait for a CPU long enough to be told starved, and
    # its own start-up may be slow enough to count as a stall of its start (never a verdict):
    # that history may follow, but the loop must never have been blocked.
    # The loop's line is long once it carries that history, and the 160-column console wraps
    # it at a space (which may stay at the end of the line): read it whole, up to the
    # requests/s line that follows it, one space where it was wrapped.
    loop_text = re.search(r"^(loop 0x.*?)\nrequests/s:", last, re.M | re.S)
    assert loop_text, last
    loop_line = re.fullmatch(r"loop 0x[0-9a-f]+ on MainThread: turning, lag \d+\.\dms, "
                             r"worst \d+\.\dms since the last refresh(?P<stalls>; .*)?",
                             re.sub(r" *\n *", " ", loop_text[1]))
    assert loop_line, last
    for part in (loop_line["stalls"] or "").split("; ")[1:]:
        assert re.fullmatch(r"(\d+ stalls? in the last \d+s: )?(\d+ starved \([^)]*\), longest \S+"
                            r"|\d+ at start-up \(no verdict\), \S+( at .*)?)", part), last
    assert "blocked" not in (loop_line["stalls"] or ""), last


# --- under a pseudo-terminal ---------------------------------------------------------------------------------------

class Pty:
    """``diag top`` with a pseudo-terminal as its controlling terminal, stdin, stdout and stderr."""

    def __init__(self, *args: str, sigint: Any = signal.SIG_DFL) -> None:
        """``sigint``: the SIGINT disposition diag starts with, whatever the runner's (a job a
        shell started in the background inherits SIG_IGN)."""
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        self.mode_before = termios.tcgetattr(self.slave)
        self.output = b""

        def child_setup() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            signal.signal(signal.SIGINT, sigint)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "diag", "top", *args], cwd=ROOT, env=diag_env(TERM="xterm-256color"),
            stdin=self.slave, stdout=self.slave, stderr=self.slave, start_new_session=True,
            preexec_fn=child_setup)

    def read_until(self, text: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            assert left > 0 and self.proc.poll() is None, (self.proc.returncode, self.output[-3000:])
            ready, _, _ = select.select([self.master], [], [], min(left, 0.1))
            if ready:
                self.output += os.read(self.master, 65536)

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                self.output += os.read(self.master, 65536)
        code = self.proc.wait(max(0.0, deadline - time.monotonic()))
        # what it wrote last (leaving the alternate screen) may still be in the terminal's
        # buffer when it exits: read it all (the slave end stays open here, so no EOF comes)
        while select.select([self.master], [], [], 0.2)[0]:
            chunk = os.read(self.master, 65536)
            if not chunk:
                break
            self.output += chunk
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty_top() -> Iterator[list[Pty]]:
    started: list[Pty] = []
    yield started
    for p in started:
        p.close()


@pytest.mark.parametrize(("quit_with", "sigint"), [(b"q", signal.SIG_DFL), (b"\x03", signal.SIG_DFL),
                                                  (b"\x03", signal.SIG_IGN)],
                         ids=["q", "ctrl-c", "ctrl-c-started-with-sigint-ignored"])
def test_quits_cleanly_on_a_terminal(leaky: TargetServer, pty_top: list[Pty], quit_with: bytes, sigint: Any) -> None:
    # Ctrl-C quits even where diag started with SIGINT ignored (a shell's background job):
    # on a terminal it reads Ctrl-C as a key to quit on, not as whatever SIGINT was left as.
    top = Pty(leaky.url, "--interval", "0.3", sigint=sigint)
    pty_top.append(top)
    top.read_until(b"q quits")
    top.read_until(b"status: ok")
    assert termios.tcgetattr(top.slave)[3] & termios.ICANON == 0  # cbreak while it runs
    started = time.monotonic()
    top.send(quit_with)
    assert top.wait(timeout=5) == 0, top.output[-3000:]
    assert time.monotonic() - started < 4
    assert termios.tcgetattr(top.slave) == top.mode_before
    assert b"Traceback" not in top.output
    assert b"\x1b[?1049l" in top.output  # the alternate screen was left


@pytest.mark.parametrize("quit_with", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_q_answers_while_the_target_hangs(fake_agent: Any, pty_top: list[Pty], quit_with: bytes) -> None:
    fake_agent.hang_after = 1
    top = Pty(url(fake_agent), "--interval", "0.2", "--timeout", "20")
    pty_top.append(top)
    top.read_until(b"status: ok")
    deadline = time.monotonic() + 10
    while fake_agent.syncs < 2:  # the second fetch is under way, and will not come back
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.monotonic()
    top.send(quit_with)  # Ctrl-C only sets a flag that wakes the key poll: no exception mid-redraw
    assert top.wait(timeout=5) == 0, top.output[-3000:]
    assert time.monotonic() - started < 3
    assert termios.tcgetattr(top.slave) == top.mode_before


def test_sigterm_restores_the_terminal(leaky: TargetServer, pty_top: list[Pty]) -> None:
    top = Pty(leaky.url, "--interval", "0.3")
    pty_top.append(top)
    top.read_until(b"status: ok")
    top.proc.send_signal(signal.SIGTERM)
    assert top.wait(timeout=5) == 128 + signal.SIGTERM
    assert termios.tcgetattr(top.slave) == top.mode_before
    assert b"Traceback" not in top.output


def test_target_dies_while_top_runs(pty_top: list[Pty], tmp_path: Any) -> None:
    """In a pipe it prints the outage and stops after its iterations; on a terminal it
    shows the outage until q."""
    out_file, err_file = tmp_path / "out", tmp_path / "err"
    with TargetServer() as server, open(out_file, "wb") as out_w, open(err_file, "wb") as err_w:
        live = Pty(server.url, "--interval", "0.3", "--timeout", "1")
        pty_top.append(live)
        live.read_until(b"status: ok")
        # Its first answer must come (a target unreachable at the start is an error, exit 3):
        # on a loaded machine that takes more than a second now and then.  The outage
        # below is a refused connection, told at once whatever the timeout.
        piped = subprocess.Popen([sys.executable, "-m", "diag", "top", server.url, "--iterations", "4",
                                  "--interval", "0.5", "--timeout", "10"], cwd=ROOT, env=diag_env(),
                                 stdout=out_w, stderr=err_w)
        try:
            deadline = time.monotonic() + 15
            while b"status: ok" not in out_file.read_bytes():
                assert time.monotonic() < deadline and piped.poll() is None, err_file.read_bytes()
                time.sleep(0.02)
            assert server.proc is not None
            server.proc.kill()
            live.read_until(b"status: target unreachable since ")
            piped.wait(15)
        finally:
            if piped.poll() is None:
                piped.kill()
                piped.wait(5)
    out, err = out_file.read_bytes(), err_file.read_bytes()
    assert piped.returncode == 0, err
    assert err == b"" and b"Traceback" not in live.output
    statuses = re.findall(rb"^status: .*$", out, re.M)
    assert len(statuses) == 4 and statuses[0] == b"status: ok", out
    assert re.match(rb"status: target unreachable since \d\d:\d\d:\d\d: ", statuses[-1]), statuses
    live.send(b"q")
    assert live.wait(timeout=5) == 0
    assert termios.tcgetattr(live.slave) == live.mode_before

"""``--timeout`` is one deadline for the whole exchange, and answers are read to a stated size.

The CLI runs as a real process against a fake agent on 127.0.0.1 that drips its answer,
sends one without end, declares 99999999999 bytes or never answers, and against the
real target server stopped with SIGSTOP.  Each run must end within its deadline plus
the time a Python process takes to start, with one line on stderr and exit 3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from diag.sources.source import MAX_TASKS_BYTES
from tests.support.cli import ROOT, assert_one_line_error, diag_env, run_diag
from tests.support.fake_agent import Answer, FakeAgent, answer, http_head
from tests.support.target import TargetServer, free_port

#: Room for a Python process to start and import diag on a loaded machine.
STARTUP = 5.0
TASKS_DOC = json.dumps({"schema": "diag.tasks/1", "taken_at": 1.0, "tasks": [], "pad": "x" * 5000}).encode()


def timed(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = run_diag(*args, timeout=60)
    return proc, time.monotonic() - started


@pytest.mark.parametrize("command", [["tasks"], ["sync"], ["leaks"], ["objects"], ["check", "--settle", "0"],
                                     ["top", "--once"]])
def test_an_answer_dripped_a_byte_at_a_time_ends_at_the_timeout(command: list[str]) -> None:
    # Every byte arrives well within any per-read timeout; only an overall deadline ends it.
    with FakeAgent(answer(200, TASKS_DOC, chunk=1, delay=0.05)) as fake:
        proc, took = timed(command[0], fake.url, "--timeout", "2", *command[1:])
    line = assert_one_line_error(proc, 3)
    assert "within 2s (--timeout)" in line and "bytes arrived" in line, line
    assert took < 2 + STARTUP, took


def test_a_proof_gets_its_budget_on_top_of_the_timeout_and_says_so() -> None:
    # The target answers the cheap probe, then drips the proof's answer: the proof may take
    # its budget twice (it proves again when it finds something), plus --timeout.
    with FakeAgent(answer(200, TASKS_DOC, chunk=1, delay=0.05, alive=True)) as fake:
        proc, took = timed("leaks", fake.url, "--timeout", "1", "--proof-budget", "0.5")
    line = assert_one_line_error(proc, 3)
    assert "within 2s (--timeout 1 plus two proofs of --proof-budget 0.5s)" in line, line
    assert 2 <= took < 2 + STARTUP, took


def test_a_profile_gets_its_window_on_top_of_the_timeout_and_says_so() -> None:
    with FakeAgent(Answer(hang=True, alive=True)) as fake:
        proc, took = timed("profile", fake.url, "--timeout", "1", "--seconds", "1.5")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("diag profile: "), lines
    assert "no answer within 2.5s (--timeout 1 plus the 1.5s profile window)" in lines[1], lines
    assert 2.5 <= took < 2.5 + STARTUP, took


@pytest.mark.parametrize("command", [["leaks"], ["objects"], ["check", "--settle", "0"]])
def test_a_target_that_never_answers_is_reported_after_the_timeout_not_the_budget(command: list[str]) -> None:
    # leaks (proof budget 10 s) and objects (heap walks of 3 s) used to wait for their
    # budgets too; a cheap probe within --timeout tells a silent target first.
    with FakeAgent(Answer(hang=True)) as fake:
        proc, took = timed(command[0], fake.url, "--timeout", "2", *command[1:])
    line = assert_one_line_error(proc, 3)
    assert line.endswith("no answer within 2s (--timeout)"), line
    assert took < 2 + STARTUP, took


MEASURE_PEAK = """
import json, os, subprocess, sys, tempfile
with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    proc = subprocess.Popen([sys.argv[1], "-m", "diag", "tasks", sys.argv[2], "--timeout", "20"], stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped above
    out.seek(0)
    err.seek(0)
    print(json.dumps({"status": status, "maxrss_kb": usage.ru_maxrss, "stdout": out.read().decode(),
                      "stderr": err.read().decode()}))
"""


def test_a_body_without_end_stops_at_the_stated_size_in_bounded_memory() -> None:
    # No Content-Length, and bytes for as long as the client reads: the CLI stops past its
    # limit and says which; its memory stays a small multiple of the limit.
    with FakeAgent(Answer(head=http_head(200, None), filler=b"[" * 4096, endless=True)) as fake:
        # The CLI is started by a small Python of its own, which reports the CLI's peak RSS: a
        # child forked straight from this (large, late in a suite) test process would count the
        # test process's pages too, from before its exec.
        started = time.monotonic()
        runner = subprocess.run([sys.executable, "-c", MEASURE_PEAK, sys.executable, fake.url], cwd=ROOT,
                                env=diag_env(), capture_output=True, text=True, timeout=60)
        took = time.monotonic() - started
        result = json.loads(runner.stdout)
        status, stdout, stderr = result["status"], result["stdout"], result["stderr"]
        usage_kb = result["maxrss_kb"]
    assert os.waitstatus_to_exitcode(status) == 3, stderr
    assert stdout == "" and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert f"larger than the 256 MiB ({MAX_TASKS_BYTES} bytes) diag reads" in stderr, stderr
    max_rss = usage_kb * 1024  # kilobytes on Linux
    assert max_rss < 4 * MAX_TASKS_BYTES, max_rss
    assert took < 20, took


def test_a_huge_content_length_is_refused_before_reading() -> None:
    with FakeAgent(answer(200, b"{}", length=99999999999)) as fake:
        proc, took = timed("tasks", fake.url, "--timeout", "5")
    line = assert_one_line_error(proc, 3)
    assert f"the answer would be 99999999999 bytes, more than the 256 MiB ({MAX_TASKS_BYTES} bytes)" in line, line
    assert took < STARTUP, took


@pytest.mark.parametrize(("how", "expected"), [
    (answer(200, b"[" * 100_000), "not a diag agent (HTTP 200, response is not JSON)"),
    (answer(200, b'{"schema": "diag.tasks/1"}'), "malformed diag task snapshot: no taken_at, tasks"),
    (answer(200, b"\xff\xfe\x00garbage"), "response is not JSON"),
    (answer(200, TASKS_DOC[:100], length=len(TASKS_DOC)), f"closed mid-answer (100 of {len(TASKS_DOC)} bytes)"),
    (answer(200, b'{"schema": "diag.tasks/1", "taken_at": 1e30, "tasks": []}'), "taken_at is 1e+30, not a time"),
    (answer(200, b'{"schema": "diag.tasks/1", "taken_at": NaN, "tasks": []}'), "taken_at is nan"),
    (answer(200, b'{"schema": "diag.tasks/1", "taken_at": 1, "tasks": 7}'), "malformed diag task snapshot"),
    (Answer(head=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), "mid-answer"),  # a bad chunk size
    (Answer(head=b"SSH-2.0-OpenSSH_9.6\r\n\r\n"), "unreadable answer: BadStatusLine"),
])
def test_malformed_answers_are_one_line(how: Answer, expected: str) -> None:
    with FakeAgent(how) as fake:
        line = assert_one_line_error(run_diag("tasks", fake.url, "--timeout", "5"), 3)
    assert fake.url in line and expected in line, line


def test_a_stopped_target_is_reported_after_the_timeout() -> None:
    # The real target server, frozen: the kernel still accepts connections for it.
    with TargetServer() as server:
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            for args in (["objects", server.url], ["check", server.url, "--settle", "0"],
                         ["leaks", server.url], ["tasks", server.url]):
                proc, took = timed(*args, "--timeout", "2")
                line = assert_one_line_error(proc, 3)
                assert line.endswith("no answer within 2s (--timeout)"), (args, line)
                assert took < 2 + STARTUP, (args, took)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("target", [
    "http://[::1", "http://" + "a" * 300 + ":80", "http://a..b:80", "htp://127.0.0.1:1", "ftp://127.0.0.1:1",
    "http://127.0.0.1:99999", "http://127.0.0.1:0", "unix:", "127.0.0.1:1:2", "http://:80",
])
@pytest.mark.parametrize("command", ["tasks", "sync", "leaks", "objects", "profile", "check", "top"])
def test_malformed_urls_are_usage_errors(command: str, target: str) -> None:
    from tests.diag.test_bad_targets import one_line_error

    line = one_line_error([command, target], 2)
    assert "http://HOST:PORT" in line and "unix:/PATH" in line, line


def test_a_malformed_url_as_a_real_process() -> None:
    line = assert_one_line_error(run_diag("tasks", "htp://127.0.0.1:1"), 2)
    assert "unknown scheme 'htp'" in line and \
        "expected http://HOST:PORT, HOST:PORT, unix:/PATH, pid:N or a saved .json" in line, line


@pytest.mark.parametrize("token", ["s\u20acret", "line\nbreak", "tab\tbed"])
def test_a_token_that_cannot_be_sent_is_a_usage_error(token: str, tmp_path: Path) -> None:
    for args in (["tasks", "http://127.0.0.1:1"], ["tasks", "--agent-dir", str(tmp_path)]):
        line = assert_one_line_error(run_diag(*args, env=diag_env(DIAG_AGENT_TOKEN=token)), 2)
        assert "DIAG_AGENT_TOKEN" in line and token not in line, line


def test_a_warm_up_answer_dripped_ends_at_the_timeout() -> None:
    # diag check's warm-up requests go to the service itself, under the same deadline.
    with FakeAgent(answer(200, b"x" * 5000, chunk=1, delay=0.05)) as app:
        proc, took = timed("check", f"http://127.0.0.1:{free_port()}", "--app", app.url, "-r", "GET /slow x3",
                           "--timeout", "2", "--settle", "0")
    line = assert_one_line_error(proc, 3)
    assert f"{app.url}: GET /slow: the answer did not finish within 2s (--timeout)" in line, line
    assert took < 2 + STARTUP, took
    assert app.requests == ["GET /slow HTTP/1.1"]


def test_several_hostile_targets_end_together_at_the_timeout() -> None:
    # Each target is asked on its own thread; none holds up the view of the others.
    with FakeAgent(answer(200, TASKS_DOC, chunk=1, delay=0.05)) as drip, FakeAgent(Answer(hang=True)) as silent, \
            FakeAgent(answer(200, b"{}", length=99999999999)) as huge:
        proc, took = timed("tasks", drip.url, silent.url, huge.url, "--timeout", "2")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "diag: error: none of the 3 targets answered", lines
    assert f"{drip.url}: timeout: the answer did not finish within 2s (--timeout)" in proc.stderr
    assert f"{silent.url}: timeout: no answer within 2s (--timeout)" in proc.stderr
    assert f"{huge.url}: error: the answer would be 99999999999 bytes" in proc.stderr
    assert took < 2 + STARTUP, took

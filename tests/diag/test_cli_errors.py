"""Bad input gets one line on stderr and the documented exit code, never a traceback."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import assert_one_line_error, run_diag
from tests.support.target import free_port


class _Impostor(http.server.BaseHTTPRequestHandler):
    """An HTTP server that is not a diag agent, in several flavours chosen by port."""

    mode = "404"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        mode = self.server.mode  # type: ignore[attr-defined]
        if mode == "hang":
            time.sleep(5)
            return
        body = {"404": b"<html>not found</html>", "garbage": b"\x00\xffnot json",
                "json": json.dumps({"hello": "world"}).encode(),
                "truncated": b'{"schema": "diag.tasks/1", "tasks": [{"id": 1'}[mode]
        self.send_response(404 if mode == "404" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def impostor(request: pytest.FixtureRequest) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    server.mode = request.param  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_unreachable_target() -> None:
    line = assert_one_line_error(run_diag("tasks", f"http://127.0.0.1:{free_port()}"), 3)
    assert "connection refused" in line


@pytest.mark.parametrize(("impostor", "expected"), [
    ("404", "not a diag agent (HTTP 404"),
    ("garbage", "not a diag agent"),
    ("json", "not a diag agent (no schema"),
    ("truncated", "not a diag agent"),
], indirect=["impostor"])
def test_server_that_is_not_diag(impostor: str, expected: str) -> None:
    assert expected in assert_one_line_error(run_diag("tasks", impostor), 3)


@pytest.mark.parametrize("impostor", ["hang"], indirect=True)
def test_target_that_hangs_times_out(impostor: str) -> None:
    started = time.monotonic()
    line = assert_one_line_error(run_diag("tasks", impostor, "--timeout", "0.5"), 3)
    assert "no answer within 0.5s" in line
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(("content", "expected"), [
    ("{not json", "invalid JSON"),
    ('{"schema": "diag.tasks/1", "tasks": [{"id": 1', "invalid JSON"),
    ('{"schema": "diag.tasks/3", "tasks": []}', "newer than this diag understands"),
        ('{"schema": "diag.tasks/2", "tasks": [[1]]}', "malformed"),
    ('{"schema": "diag.leaks/1"}', "expected a diag.tasks document"),
    ('{"tasks": []}', "no schema tag"),
    ('[1, 2]', "expected a JSON object"),
    ('{"schema": "diag.tasks/1", "tasks": [{"name": "no id"}]}', "malformed"),
])
def test_bad_saved_snapshots(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "snap.json"
    path.write_text(content)
    assert expected in assert_one_line_error(run_diag("tasks", str(path)), 3)


def test_missing_file() -> None:
    assert "cannot read" in assert_one_line_error(run_diag("tasks", "/nonexistent/snap.json"), 3)


@pytest.mark.parametrize(("args", "expected"), [
    (["--filter", "(unclosed"], "bad --filter regex"),
    (["--debug", "3"], "--debug must be 1 or 2"),
    (["--state", "sleeping"], "unknown state 'sleeping'"),
    (["--format", "xml"], "--format must be one of"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--min-wait", "-1"], "--min-wait"),
    (["--timeout", "0"], "--timeout must be > 0"),
    (["--bogus"], "No such option: --bogus"),
    (["--debug", "x"], "--debug"),
])
def test_usage_errors(args: list[str], expected: str) -> None:
    proc = run_diag("tasks", f"http://127.0.0.1:{free_port()}", *args)
    assert expected in assert_one_line_error(proc, 2)


@pytest.mark.parametrize("target", ["just-a-word", "ftp://host/x", "http://127.0.0.1:notaport"])
def test_bad_target_strings(target: str) -> None:
    assert "bad" in assert_one_line_error(run_diag("tasks", target), 2)


def test_no_command_is_a_usage_error() -> None:
    proc = run_diag()
    assert proc.returncode == 2 and "Usage: diag" in proc.stderr and proc.stdout == ""


TARGET_COMMANDS = [["tasks"], ["sync"], ["leaks"], ["objects"], ["profile"], ["top", "--once"],
                   ["check", "--settle", "0"]]


@pytest.mark.parametrize("command", TARGET_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("target", ["htp://127.0.0.1:1", "ftp://x", "http:/127.0.0.1:1", "unx:/tmp/agent.sock"])
def test_a_mistyped_target_is_a_usage_error_naming_the_accepted_forms(command: list[str], target: str) -> None:
    line = assert_one_line_error(run_diag(command[0], target, *command[1:]), 2)
    assert f"bad target {target!r}" in line, line
    assert "http://HOST:PORT" in line and "unix:/PATH" in line and "pid:N" in line, line
    assert "gaierror" not in line and "http://htp" not in line, line
    if "://" in target:
        assert f"unknown scheme {target.split('://')[0]!r}" in line, line


@pytest.mark.parametrize("command", TARGET_COMMANDS, ids=lambda c: c[0])
def test_host_and_port_without_a_scheme_is_still_a_target(command: list[str]) -> None:
    port = free_port()
    line = assert_one_line_error(run_diag(command[0], f"127.0.0.1:{port}", *command[1:]), 3)
    assert f"http://127.0.0.1:{port}: connection refused" in line, line


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_output_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path: Path, fmt: str) -> None:
    import subprocess
    import sys

    from tests.diag.snapshots import snapshot, task

    saved = tmp_path / "tasks.json"
    saved.write_text(snapshot(task(1), task(2)).to_json())
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "diag", "tasks", str(saved), "--format", fmt],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "diag: error: cannot write the output: No space left on device", proc.stderr

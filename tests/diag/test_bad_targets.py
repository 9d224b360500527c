"""Every command against targets that misbehave: one line on stderr, the documented exit code.

test_cli_errors.py covers ``diag tasks`` against impostors and bad files; this covers the
other commands (sync, leaks, profile, objects, check), and for all of them targets that
die half-way through an answer: headers then nothing, half a JSON body, a connection
closed before any answer.  The misbehaving servers are tiny local ones on 127.0.0.1;
the CLI runs in this process (``main(argv)``), and once as a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diag.cli.app import main
from diag.collect.heap import HeapOptions, collect_heap
from diag.collect.sync_collector import collect_sync
from diag.model.heap_snapshot import HeapSeries
from diag.model.profile_snapshot import FunctionStat, ProfileSnapshot
from diag.model.task_snapshot import ProcessInfo
from tests.support.cli import assert_one_line_error, run_diag
from tests.support.fake_agent import accept_loop

#: Each command with the options that keep its waits short against a target that hangs.
COMMANDS = {
    "tasks": ["--timeout", "0.5"],
    "sync": ["--timeout", "0.5"],
    "leaks": ["--timeout", "0.5", "--proof-budget", "0.5"],
    "profile": ["--timeout", "0.5", "--seconds", "0.2"],
    "objects": ["--timeout", "0.5", "--budget", "0.1"],
    "check": ["--timeout", "0.5", "--proof-budget", "0.5", "--settle", "0"],
}
#: The longest any of them may take against a target that never answers.
HANG_BOUND = 4.0


class Misbehaving:
    """A raw-socket HTTP server on 127.0.0.1 that answers every request the same wrong way."""

    def __init__(self, mode: str, *, status_ok: bool = False) -> None:
        self.mode = mode
        self.status_ok = status_ok  # answer GET .../profile/status properly, misbehave elsewhere
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        accept_loop(self.sock, self.stop, self.conns, self._answer)

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            path = request.split(b" ", 2)[1].decode()
            if (self.status_ok or self.mode == "newer schema") and path.split("?")[0].endswith("/profile/status"):
                self._send(conn, 200, json.dumps({"schema": "diag.profile-status/1", "busy": False}).encode())
                return
            if self.mode == "newer schema" and path.split("?")[0].endswith("/health"):  # asked before a proof
                self._send(conn, 200, json.dumps({"schema": "diag.health/1", "loops": []}).encode())
                return
            self._misbehave(conn, path)
        except OSError:
            pass
        finally:
            if self.mode != "hang":
                conn.close()

    @staticmethod
    def _send(conn: socket.socket, status: int, body: bytes, length: int | None = None,
              content_type: str = "application/json") -> None:
        head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n")
        conn.sendall(head.encode() + body)

    def _misbehave(self, conn: socket.socket, path: str) -> None:
        doc = {"schema": "diag.sync/1", "taken_at": 1.0, "tasks": {"schema": "diag.tasks/1", "tasks": []},
               "primitives": []}
        full = json.dumps(doc).encode()
        if self.mode == "hang":
            self.stop.wait(30)  # accept, read, never answer
        elif self.mode == "close at once":
            pass
        elif self.mode == "headers then close":
            self._send(conn, 200, b"", length=5000)
        elif self.mode == "half a body":
            self._send(conn, 200, full[: len(full) // 2], length=len(full))
        elif self.mode == "html 404":
            self._send(conn, 404, b"<html><body>Not Found</body></html>", content_type="text/html")
        elif self.mode == "html 200":
            self._send(conn, 200, b"<html><body>Welcome to nginx!</body></html>", content_type="text/html")
        elif self.mode == "json without schema":
            self._send(conn, 200, b'{"status": "ok"}')
        elif self.mode == "newer schema":  # the kind the client asked for, from a future diag
            endpoint = path.split("?")[0].rsplit("/", 1)[-1]
            kind = {"tasks": "tasks", "sync": "sync", "objects": "objects", "profile": "profile"}[endpoint]
            self._send(conn, 200, json.dumps({**doc, "schema": f"diag.{kind}/9", "snapshots": [{}]}).encode())
        elif self.mode == "server error":
            self._send(conn, 500, b'{"error": "agent error: something broke"}')
        else:  # pragma: no cover
            raise AssertionError(self.mode)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.fixture
def misbehaving(request: pytest.FixtureRequest) -> Iterator[Misbehaving]:
    mode, status_ok = request.param if isinstance(request.param, tuple) else (request.param, False)
    server = Misbehaving(mode, status_ok=status_ok)
    yield server
    server.close()


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def one_line_error(argv: list[str], code: int) -> str:
    got, stdout, stderr = run_main(argv)
    assert got == code, (argv, got, stdout, stderr)
    assert stdout == "", stdout
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diag: error: "), stderr
    return lines[0]


MID_ANSWER = ["close at once", "headers then close", "half a body"]
NOT_DIAG = ["html 404", "html 200", "json without schema"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("misbehaving", MID_ANSWER + NOT_DIAG + ["server error", "newer schema"], indirect=True)
def test_target_that_breaks_its_answer(command: str, misbehaving: Misbehaving) -> None:
    if command == "profile" and misbehaving.mode == "newer schema":
        pytest.skip("its status answers: see test_profile_target_that_breaks_after_the_status")
    line = one_line_error([command, misbehaving.url, *COMMANDS[command]], 3)
    assert misbehaving.url in line or misbehaving.mode == "newer schema"
    if misbehaving.mode in NOT_DIAG:
        assert "not a diag agent" in line
    if misbehaving.mode == "newer schema":
        assert "newer than this diag understands" in line
    if misbehaving.mode == "server error":
        assert "something broke" in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("misbehaving", ["hang"], indirect=True)
def test_target_that_hangs_is_bounded_by_timeout(command: str, misbehaving: Misbehaving) -> None:
    started = time.monotonic()
    line = one_line_error([command, misbehaving.url, *COMMANDS[command]], 3)
    assert "no answer within" in line
    assert time.monotonic() - started < HANG_BOUND


# (A profile that hangs once started is awaited for its window plus 30 s: not tested here.)
@pytest.mark.parametrize("misbehaving", [(mode, True) for mode in MID_ANSWER + ["html 200", "newer schema"]],
                         indirect=True)
def test_profile_target_that_breaks_after_the_status(misbehaving: Misbehaving) -> None:
    # The agent answered its status, then the profile itself goes wrong: still one clear
    # error (after the cost warning, which is printed once an agent has answered).
    argv = ["profile", misbehaving.url, "--seconds", "0.2", "--timeout", "0.5"]
    got, stdout, stderr = run_main(argv)
    assert got == 3 and stdout == "" and "Traceback" not in stderr, (got, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("diag profile: ") and lines[1].startswith("diag: error: ")
    assert misbehaving.url in lines[1] or "newer than this diag understands" in lines[1]


@pytest.mark.parametrize("misbehaving", ["half a body"], indirect=True)
def test_half_a_body_as_a_real_process(misbehaving: Misbehaving) -> None:
    line = assert_one_line_error(run_diag("sync", misbehaving.url, *COMMANDS["sync"], timeout=30), 3)
    assert misbehaving.url in line
    assert "closed mid-answer" in line and "bytes)" in line  # says how much arrived, in words


# -- saved documents ----------------------------------------------------------------------------

def _documents() -> dict[str, str]:
    profile = ProfileSnapshot(taken_at=1.0, process=ProcessInfo(1), mode="yappi", clock="wall", seconds=1.0,
                              duration=1.0, functions=(FunctionStat("f", "app.py", 1, 1, 1, 0.5, 0.5),))
    return {
        "sync": collect_sync(None).to_json(),
        "objects": HeapSeries((collect_heap(HeapOptions(budget=1.0)),), 0.0).to_json(),
        "profile": profile.to_json(),
    }


#: Command -> the kind of document it reads.
READS = {"sync": "sync", "leaks": "sync", "objects": "objects", "profile": "profile"}


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    return _documents()


@pytest.mark.parametrize("command", sorted(READS))
@pytest.mark.parametrize(("damage", "code", "expected"), [
    ("truncated", 3, "invalid JSON"),
    ("newer", 3, "newer than this diag understands"),
    ("other kind", 3, "expected a diag."),
    ("empty", 3, "invalid JSON"),
    ("binary", 3, "invalid JSON"),
    ("malformed", 3, "malformed"),
    ("missing", 3, "cannot read"),
])
def test_damaged_saved_documents(tmp_path: Path, documents: dict[str, str], command: str, damage: str, code: int,
                                 expected: str) -> None:
    kind = READS[command]
    text = documents[kind]
    path = tmp_path / f"{kind}.json"
    if damage == "truncated":
        path.write_text(text[: len(text) * 2 // 3])
    elif damage == "newer":
        path.write_text(text.replace(f'"diag.{kind}/1"', f'"diag.{kind}/2"', 1))
    elif damage == "other kind":
        other = "objects" if kind != "objects" else "profile"
        path.write_text(documents[other])
    elif damage == "empty":
        path.write_text("")
    elif damage == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    elif damage == "malformed":
        broken = {"sync": {"primitives": [{"primitive": {"kind": "lock"}, "holders": [{"site": 5}]}]},
                  "objects": {"snapshots": [{"schema": "diag.objects/1", "types": [{"name": "dict", "count": "x"}]}]},
                  "profile": {"functions": [{"name": "f", "line": "x"}]}}[kind]
        path.write_text(json.dumps({**json.loads(text), **broken}))
    assert expected in one_line_error([command, str(path)], code)


def test_check_with_a_damaged_baseline(tmp_path: Path, documents: dict[str, str]) -> None:
    baseline = tmp_path / "baseline.json"
    for content in ("{not json", '{"schema": "diag.check/9"}', documents["profile"]):
        baseline.write_text(content)
        line = one_line_error(["check", "http://127.0.0.1:1", "--baseline", str(baseline), "--settle", "0"], 2)
        assert str(baseline) in line

"""Generated input against the agent's HTTP API and the CLI's parsing.

The agent runs in this process (``diag.agent.start``), spoken to over loopback with
raw requests: any method, path, query string.  Whatever it gets, it answers JSON, never
a 500 or a traceback, and a 4xx carries a one-line ``error``.  The CLI runs in this
process too (``main(argv)``) on generated argv; its targets are files and sockets in a
temporary directory or closed ports on 127.0.0.1, so nothing else is ever contacted.
Example counts are small and derandomized: the same inputs on every run.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diag.agent
from diag.cli.app import main
from diag.collect.heap import HeapOptions, collect_heap
from diag.collect.sync_collector import collect_sync
from diag.collect.task_collector import collect_tasks
from diag.model.heap_snapshot import HeapSeries
from diag.model.profile_snapshot import FunctionStat, ProfileSnapshot
from diag.model.task_snapshot import ProcessInfo
from tests.support.fake_agent import Answer, FakeAgent, http_head
from tests.support.saved_documents import real_documents
from tests.support.target import free_port

FUZZ = settings(max_examples=40, derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


def wait_for_diag_threads(timeout: float = 10.0) -> None:
    """Request threads finish their answer after the agent stops; the suite checks for them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name.startswith("diag-") and t.is_alive()]:
            return
        time.sleep(0.02)


@pytest.fixture
def agent() -> Iterator[diag.agent.Agent]:
    running = diag.agent.start("127.0.0.1:0")
    try:
        yield running
    finally:
        diag.agent.stop()
        wait_for_diag_threads()


# -- the agent's HTTP API ---------------------------------------------------------------------

def raw_request(url: str, request: bytes, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes, read the whole answer (the request asks the server to close)."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP answer: {data[:300]!r}"
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version.startswith("HTTP/1."), lines[0]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "content-length" in headers and not request.startswith(b"HEAD "):
        assert len(body) == int(headers["content-length"]), (headers, len(body))
    return int(status), headers, body


def check_answer(status: int, headers: dict[str, str], body: bytes, method: str) -> Any:
    """The agent's contract for any request: JSON, no 500, no traceback, 4xx with one clear line."""
    assert status != 500 and 200 <= status < 600, (status, body[:500])
    if method == "HEAD":
        return None
    # a Python traceback, not the word: an objects listing may name pytest's Traceback class
    assert b"Traceback (most recent call last)" not in body
    if status == 200 and headers.get("content-type", "").startswith("text/plain"):
        return body.decode()  # an endpoint in another format (Prometheus metrics)
    assert headers.get("content-type") == "application/json", headers
    data = json.loads(body)
    if status >= 400:
        assert isinstance(data, dict) and isinstance(data.get("error"), str), data
        message = data["error"]
        assert message and "\n" not in message and len(message) <= 400, message
    return data


KNOWN_KEYS = ["debug", "filter", "state", "min_wait", "limit", "proof", "budget", "seconds", "mode", "clock",
              "force", "max_tasks", "hz", "type", "max_depth"]
ODD_VALUES = ["", "nan", "NaN", "-nan", "inf", "-inf", "1e999", "-1", "0", "-0", "1", "2", "3", "1e-320",
              "9" * 5000, "\x00", "%", "(", "(a*)*b", "ru\u00efn\u00e9", "\u202e\u0000", "running,waiting,bogus",
              "yappi", "sample", "cpu", "wall", "true", "0x10", " 1 ", "1_000", "\U0001f600"]
values = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=1000, max_value=200_000).map(lambda n: "x" * n),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=20))
params = st.lists(st.tuples(keys, values), max_size=8)
#: Parameters that set how long an endpoint works: always given last, small or invalid.
SAFE_DURATIONS = ["0.05", "0.01", "nan", "-1", "0", "abc", "61", "1e999"]


def query_string(pairs: list[tuple[str, str]], route: str, last: str) -> str:
    pairs = [(k, v) for k, v in pairs if k not in ("seconds", "budget")]
    if route in ("profile", "objects", "sync"):
        pairs.append(("seconds" if route == "profile" else "budget", last))
    return urllib.parse.urlencode(pairs)


def request_bytes(method: str, target: str) -> bytes:
    extra = b"Content-Length: 0\r\n" if method == "POST" else b""
    return (f"{method} ".encode() + target.encode("utf-8", "surrogatepass") + b" HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\n" + extra + b"\r\n")


@FUZZ
@given(data=st.data())
def test_every_endpoint_answers_json_whatever_the_query(agent: diag.agent.Agent, data: st.DataObject) -> None:
    routes = sorted(agent.endpoints.routes.items())
    name, route = data.draw(st.sampled_from(routes), label="route")
    pairs = data.draw(params, label="params")
    last = data.draw(st.sampled_from(SAFE_DURATIONS), label="duration")
    if name == "profile":
        pairs = [(k, v) for k, v in pairs if k != "hz"]  # a slow sampling rate is fine, but not a stall
    target = f"/debug/diag/{name}?{query_string(pairs, name, last)}"
    started = time.monotonic()
    status, headers, body = raw_request(agent.url, request_bytes(route.method, target))
    answer = check_answer(status, headers, body, route.method)
    assert time.monotonic() - started < 20
    if status == 200 and not isinstance(answer, str):
        assert isinstance(answer, dict) and "schema" in answer, answer
        if "truncated" in answer:
            assert answer["truncated"] is False


METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", "BREW", "get"]
path_parts = st.one_of(
    st.sampled_from(["", "tasks", "health", "sync", "objects", "profile", "profile/status", "..", ".", "%00",
                     "%2e%2e", "tasks/", "TASKS", "debug", "diag", "*", "%ff%fe", "a" * 3000]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs")), max_size=30).map(
        lambda s: urllib.parse.quote(s, safe="/")),
)


@FUZZ
@given(method=st.sampled_from(METHODS), prefix=st.sampled_from(["/debug/diag/", "/", "//", "/debug/", "", "*"]),
       parts=st.lists(path_parts, max_size=3), query=st.one_of(st.just(""), st.text(max_size=30)))
def test_odd_paths_and_methods_get_json_errors(agent: diag.agent.Agent, method: str, prefix: str,
                                               parts: list[str], query: str) -> None:
    path = prefix + "/".join(parts)
    # Only routes that answer at once: a generated path must not start a profile or a heap walk.
    if path.rstrip("/").rsplit("/", 1)[-1] in ("profile", "objects", "sync"):
        path += "x"
    target = path + ("?" + urllib.parse.quote(query, safe="=&") if query else "")
    status, headers, body = raw_request(agent.url, request_bytes(method, target or "/"))
    check_answer(status, headers, body, method)
    if method not in ("GET", "POST", "HEAD"):
        assert status in (400, 405), status


@pytest.mark.parametrize("request_line", [
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /debug/diag/health HTTP/1.1\r\n" + b"X-Pad: y\r\n" * 120 + b"\r\n",
    b"GET /debug/diag/" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    b"GET /debug/diag/health?" + b"&".join(b"k%d=1" % i for i in range(200)) + b" HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET http://[::1/debug/diag/health HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"POST /debug/diag/health HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    b"GET /debug/diag/health HTTP/1.1\r\nContent-Length: banana\r\nConnection: close\r\n\r\n",
])
def test_malformed_requests_get_json(agent: diag.agent.Agent, request_line: bytes) -> None:
    status, headers, body = raw_request(agent.url, request_line)
    assert 400 <= status < 500 or status in (200, 505), (status, body)  # 505: HTTP version not supported
    check_answer(status, headers, body, "GET")


def test_repeated_parameters_take_the_last(agent: diag.agent.Agent) -> None:
    status, headers, body = raw_request(agent.url, request_bytes("GET", "/debug/diag/tasks?debug=7&debug=2"))
    assert status == 200 and check_answer(status, headers, body, "GET")["grouped"] is False
    status, headers, body = raw_request(agent.url, request_bytes("GET", "/debug/diag/tasks?debug=2&debug=7"))
    assert status == 400 and "debug" in check_answer(status, headers, body, "GET")["error"]


def test_keep_alive_request_with_a_body_does_not_poison_the_next(agent: diag.agent.Agent) -> None:
    parts = urllib.parse.urlsplit(agent.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /debug/diag/health HTTP/1.1\r\nHost: x\r\nContent-Length: 22\r\n\r\n"
                     b"GET /evil HTTP/1.1\r\n\r\n"
                     b"GET /debug/diag/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    statuses = re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)
    assert statuses == [b"405", b"200"], data[:1000]


# -- the CLI ----------------------------------------------------------------------------------

def _profile_doc() -> str:
    snap = ProfileSnapshot(taken_at=1.0, process=ProcessInfo(1), mode="yappi", clock="wall", seconds=1.0,
                           duration=1.0, functions=(FunctionStat("f", "app.py", 1, 1, 1, 0.5, 0.5),))
    return snap.to_json()


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Saved documents of every kind, whole, cut in half, newer, and paths that are not files."""
    monkeypatch.chdir(tmp_path)  # generated relative paths land here, never in the repository
    docs = {
        "tasks": collect_tasks().to_json(),
        "sync": collect_sync(None).to_json(),
        "objects": HeapSeries((collect_heap(HeapOptions(budget=1.0)),), 0.0).to_json(),
        "profile": _profile_doc(),
    }
    out: dict[str, list[str]] = {"docs": [], "paths": []}
    for kind, text in docs.items():
        for variant, content in (("ok", text), ("cut", text[: len(text) // 2]),
                                 ("newer", text.replace(f'"diag.{kind}/1"', f'"diag.{kind}/9"', 1))):
            path = tmp_path / f"{kind}-{variant}.json"
            path.write_text(content)
            out["docs"].append(str(path))
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    out["docs"] += [str(tmp_path / n) for n in ("dir.json", "empty.json", "binary.json", "missing.json")]
    out["paths"] = [str(tmp_path / "out.json"), str(tmp_path / "sub" / "missing" / "out.json"), str(tmp_path),
                    str(tmp_path / "out.pstat"), str(tmp_path / "out.callgrind"), str(tmp_path / "o.speedscope.json"),
                    str(tmp_path / "o.collapsed"), str(tmp_path / "chain.dot"), str(tmp_path / "junit.xml"),
                    str(tmp_path / "tasks-ok.json")]
    return out


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def check_cli(argv: list[str], code: int, stdout: str, stderr: str) -> None:
    assert code in (0, 1, 2, 3), (argv, code, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout, (argv, stderr)
    if code in (2, 3):
        if stderr.startswith("Usage:"):
            assert code == 2, (argv, stderr)
        else:
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("diag: error: "), (argv, stderr)


#: Argument-free junk: no ':' (never a host:port) and nothing that names a scheme.
junk = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=":\x00"),
               max_size=20).filter(lambda s: not s.lower().startswith(("http", "unix")))
numbers = st.one_of(st.sampled_from(["0", "-1", "1", "2", "nan", "inf", "-inf", "1e999", "0.5", "abc", "",
                                     "3", "10", "31", "100", "99999999999999999999999"]),
                    st.integers(min_value=-10**6, max_value=10**6).map(str),
                    st.floats(allow_nan=True).map(repr))
#: Seconds the command would really wait (settle, interval): small or invalid only.
short_waits = st.sampled_from(["0", "0.01", "-1", "nan", "inf", "1e309", "abc", "3601"])

#: --timeout values that fit a socket timeout (huge ones: test_huge_waits_are_refused_not_crashed).
timeouts = st.one_of(st.sampled_from(["0", "-1", "nan", "abc", "", "0.5", "1e-300", "86400"]),
                     st.floats(min_value=-1e6, max_value=1e6).map(repr))
COMMON = {"--format": st.sampled_from(["table", "text", "json", "xml", ""]), "-f": st.sampled_from(["json", "yaml"]),
          "--timeout": timeouts, "--filter": st.one_of(st.sampled_from(["(", "a|b", "(a*)*$", ".*"]), junk)}
OPTIONS: dict[str, dict[str, Any]] = {
    "tasks": {"--debug": numbers, "-d": numbers, "--state": st.sampled_from(["running", "ready,waiting", "x", ""]),
              "--min-wait": numbers, "--limit": numbers, "-o": "path", "--agent-dir": "path"},
    "sync": {"--all": None, "-o": "path"},
    "leaks": {"--min-wait": numbers, "--held-threshold": numbers, "--stall-threshold": numbers,
              "--fail-on": st.sampled_from(["none", "proven", "proven,deadlock", "bogus", ""]), "--proof": None,
              "--no-proof": None, "--proof-budget": numbers, "-o": "path"},
    "profile": {"--seconds": numbers, "-s": numbers, "--mode": st.sampled_from(["yappi", "sample", "x"]),
                "--clock": st.sampled_from(["wall", "cpu", "x"]), "--sort": st.sampled_from(["own", "total", "x"]),
                "--top": numbers, "--by": st.sampled_from(["function", "task", "x"]), "-o": "path",
                "--output-format": st.sampled_from(["json", "pstat", "callgrind", "speedscope", "collapsed", "x"]),
                "--base": "doc", "--force": None, "--max-tasks": numbers},
    "objects": {"--top": numbers, "--interval": short_waits, "--count": numbers, "--type": junk, "--backrefs": None,
                "--dot": "path", "--max-depth": numbers, "--budget": numbers, "-o": "path"},
    "check": {"--request": st.sampled_from(["GET /x", "GET /x x2", "BREW /x", "GET", "GET /x x0", "GET /x x999999"]),
              "-r": st.sampled_from(["POST /y"]), "--scenario": "doc", "--settle": short_waits,
              "--baseline": "doc", "--update-baseline": None, "--tolerance": numbers, "--junit": "path",
              "--proof-budget": numbers},
}


@st.composite
def cli_argv(draw: st.DrawFn, command: str, files: dict[str, list[str]]) -> list[str]:
    closed = f"127.0.0.1:{draw(st.sampled_from(CLOSED_PORTS))}"
    tmp = Path(files["paths"][2])
    target = draw(st.one_of(
        st.sampled_from(files["docs"]),
        st.sampled_from([f"http://{closed}", closed, f"http://{closed}/debug/diag", f"unix:{tmp / 'no.sock'}",
                         f"unix:{files['docs'][0]}", "unix:", "http://127.0.0.1:notaport", "http://", "ftp://x/y",
                         "http://127.0.0.1:99999"]),
        junk))
    argv = [command]
    if draw(st.booleans()) or command != "check":
        argv.append(target)
    options = {**COMMON, **OPTIONS[command]}
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        flag = draw(st.sampled_from(sorted(options)))
        kind = options[flag]
        if kind is None:
            argv.append(flag)
        elif kind == "path":
            argv += [flag, draw(st.sampled_from(files["paths"]))]
        elif kind == "doc":
            argv += [flag, draw(st.sampled_from(files["docs"]))]
        else:
            argv += [flag, draw(kind)]
    if command == "check":
        argv += ["--settle", draw(short_waits), "--app", f"http://{closed}"]
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        argv.insert(draw(st.integers(min_value=1, max_value=len(argv))), draw(st.one_of(junk, st.just("--bogus"))))
    return argv


CLOSED_PORTS = [free_port(), free_port()]


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_cli_parses_anything_into_an_exit_code(files: dict[str, list[str]], command: str) -> None:
    @settings(FUZZ, max_examples=30)
    @given(argv=cli_argv(command, files))
    def run(argv: list[str]) -> None:
        started = time.monotonic()
        code, stdout, stderr = run_main(argv)
        check_cli(argv, code, stdout, stderr)
        assert time.monotonic() - started < 15, argv

    run()


@FUZZ
@given(agent_addr=st.one_of(st.sampled_from(["127.0.0.1:0", "unix:", "0.0.0.0:1", ":99999", "[::1]:0", "x:y"]),
                            junk),
       print_env=st.booleans(), extra=st.lists(st.sampled_from(["--bogus", "--agent-file"]), max_size=2))
def test_run_never_starts_anything_on_bad_flags(agent_addr: str, print_env: bool, extra: list[str]) -> None:
    # No program is ever named: diag run either prints the environment or refuses.
    argv = ["run", "--agent", agent_addr] + (["--print-env"] if print_env else []) + extra
    code, stdout, stderr = run_main(argv)
    check_cli(argv, code, stdout, stderr)


@FUZZ
@given(doc=st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
                        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                st.dictionaries(st.sampled_from(
                                                    ["tasks", "stack", "wait", "id", "line", "primitive", "loops",
                                                     "primitives", "holders", "snapshots", "types", "functions",
                                                     "edges", "frames", "stacks", "count", "name", "process",
                                                     "reachability", "seconds", "backrefs", "links"]), inner,
                                                    max_size=5)),
                        max_leaves=20),
       kind=st.sampled_from(["tasks", "sync", "objects", "profile"]))
def test_saved_documents_with_any_content_are_read_or_refused(tmp_path: Path, doc: Any, kind: str) -> None:
    document = {"schema": f"diag.{kind}/1", **doc} if isinstance(doc, dict) else doc
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(document))  # may hold NaN and Infinity, as Python's JSON does
    argv = [kind, str(path), "--format", "json"]
    code, stdout, stderr = run_main(argv)
    check_cli(argv, code, stdout, stderr)
    if code == 0:
        json.loads(stdout)


def test_deeply_nested_and_non_finite_documents(tmp_path: Path) -> None:
    for kind in ("tasks", "sync", "objects", "profile"):
        for content in ("[" * 100_000 + "]" * 100_000,
                        json.dumps({"schema": f"diag.{kind}/1", "taken_at": math.inf, "tasks": [{"id": math.inf}],
                                    "snapshots": [{"schema": "diag.objects/1", "objects": math.nan}],
                                    "functions": [{"line": math.inf}]})):
            path = tmp_path / "doc.json"
            path.write_text(content)
            code, stdout, stderr = run_main([kind, str(path)])
            check_cli([kind, str(path)], code, stdout, stderr)
            assert code == 3, (kind, stderr)


HUGE_WAITS = [(command, ["--timeout", value]) for command in ("tasks", "sync", "leaks", "objects", "profile", "check")
              for value in ("inf", "1e300")] + [
    ("check", ["--settle", "1e300"]), ("check", ["--settle", "inf"]), ("objects", ["--interval", "inf", "--count", "2"])]


@pytest.mark.parametrize(("command", "wait"), HUGE_WAITS)
def test_huge_waits_are_refused_not_crashed(command: str, wait: list[str]) -> None:
    argv = [command, f"127.0.0.1:{CLOSED_PORTS[0]}", *wait]
    code, stdout, stderr = run_main(argv)
    check_cli(argv, code, stdout, stderr)
    assert code == 2, (argv, code, stderr)


def test_profile_of_a_dead_target_is_one_line(files: dict[str, list[str]]) -> None:
    # The cost warning is printed only once an agent has answered.
    argv = ["profile", f"http://127.0.0.1:{CLOSED_PORTS[0]}", "--seconds", "0.2"]
    code, stdout, stderr = run_main(argv)
    check_cli(argv, code, stdout, stderr)
    assert code == 3 and "connection refused" in stderr


# -- the CLI against hostile agents ---------------------------------------------------------------

#: Each command with short waits, and how long past --timeout it may legitimately run
#: (a proof of 0.2 s runs at most twice, two heap walks of 0.1 s, a profile window of 0.2 s
#: after its status within --timeout).
HOSTILE_TIMEOUT = 1.0
HOSTILE_COMMANDS = {
    "tasks": ([], 0.0), "sync": ([], 0.0), "leaks --no-proof": (["--no-proof"], 0.0),
    "leaks": (["--proof-budget", "0.2"], 0.4), "objects": (["--budget", "0.1"], 0.2),
    "profile": (["--seconds", "0.2"], HOSTILE_TIMEOUT + 0.2),
}
#: Time for the in-process CLI itself, on a loaded machine.
HOSTILE_MARGIN = 1.5
BAD_BODIES = [
    b"", b"null", b"[]", b"{}", b'{"error": "agent error: broke"}', b'{"schema": "diag.tasks/1"}',
    b'{"schema": "diag.sync/1"}', b'{"schema": "diag.objects/1"}', b'{"schema": "diag.profile/1"}',
    b'{"schema": "diag.tasks/9", "taken_at": 1, "tasks": []}', b'{"schema": "diag.leaks/1", "findings": []}',
    b'{"schema": "diag.tasks/1", "taken_at": NaN, "tasks": []}', b'{"schema": "diag.tasks/1", "taken_at": 1e30, "tasks": []}',
    b'{"schema": "diag.sync/1", "taken_at": 1, "tasks": 5, "primitives": []}',
    b'{"schema": "diag.sync/1", "taken_at": 1, "tasks": {"schema": "diag.tasks/1", "taken_at": 1, "tasks": '
    b'[{"id": Infinity}]}, "primitives": []}',
    b'{"schema": "diag.objects/1", "taken_at": 1, "types": [{"name": "x", "count": -Infinity}]}',
    b'{"schema": "diag.profile/1", "taken_at": 1, "mode": "yappi", "functions": [{"own_seconds": NaN}]}',
    b'{"schema": "diag.tasks/1", "taken_at": 1, "tasks": [{"name": "\\ud800"}]}', b'"\\ud800"',
    b"\xff\xfe\x00\x01", b"\xef\xbb\xbf{", b"<html>nginx</html>", b"1" * 5000, b"9" * 100_000,
]
BAD_HEADS = [
    b"garbage\r\n\r\n", b"HTTP/1.1 abc X\r\n\r\n", b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 150 + b"\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: " + b"b" * 70_000 + b"\r\n\r\n", b"HTTP/1.1 100 Continue\r\n\r\n" * 50,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
]


@st.composite
def hostile_answers(draw: st.DrawFn) -> Answer:
    status = draw(st.sampled_from([200, 200, 200, 404, 500, 401, 503, 302, 204, 101, 999]))
    body = draw(st.one_of(st.sampled_from(BAD_BODIES), st.binary(max_size=300),
                          st.integers(min_value=900, max_value=200_000).map(lambda n: b"[" * n),
                          st.integers(min_value=0, max_value=2000).map(lambda n: _REAL_SYNC[:n])))
    length = draw(st.sampled_from(["true", "none", "huge", "more", "less", "negative", "garbage"]))
    declared: int | str | None = {"true": len(body), "none": None, "huge": 99_999_999_999, "more": len(body) + 100,
                                  "less": max(0, len(body) - 5), "negative": -1, "garbage": "abc"}[length]
    head = draw(st.one_of(st.just(http_head(status, declared)), st.sampled_from(BAD_HEADS)))
    chunk, delay = draw(st.sampled_from([(1 << 16, 0.0), (1 << 16, 0.0), (1, 0.02), (7, 0.05), (100, 0.3)]))
    filler = draw(st.sampled_from([b"", b"", b"", b"[", b"x" * 100]))
    return Answer(head=head, body=body, filler=filler, endless=bool(filler), chunk=chunk, delay=delay,
                  hang=draw(st.booleans()), alive=draw(st.booleans()))


_REAL_SYNC = json.dumps({"schema": "diag.sync/1", "taken_at": 1.0, "primitives": [], "tasks": {
    "schema": "diag.tasks/1", "taken_at": 1.0, "tasks": [{"id": i, "name": f"t{i}"} for i in range(40)]}}).encode()


@FUZZ
@given(how=hostile_answers(), command=st.sampled_from(sorted(HOSTILE_COMMANDS)))
def test_cli_against_a_hostile_agent_ends_on_time_with_one_line(how: Answer, command: str) -> None:
    options, extra = HOSTILE_COMMANDS[command]
    with FakeAgent(how) as fake:
        argv = [command.split()[0], fake.url, "--timeout", f"{HOSTILE_TIMEOUT:g}", *options]
        started = time.monotonic()
        code, stdout, stderr = run_main(argv)
        took = time.monotonic() - started
    assert took < HOSTILE_TIMEOUT + extra + HOSTILE_MARGIN, (argv, took, stderr)
    assert code == 3 and stdout == "" and "Traceback" not in stderr, (argv, code, stdout, stderr)
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("diag profile: ")]
    assert len(lines) == 1 and lines[0].startswith(f"diag: error: {fake.url}"), (argv, stderr)


# -- saved documents, mutated ---------------------------------------------------------------------

#: What a mutation puts in place of a value (DELETE: the key or item goes).
DELETE = object()
REPLACEMENTS: list[Any] = [math.nan, math.inf, -math.inf, 1e30, -1e30, 1e308, -1, 0, 2 ** 70, -(2 ** 70), True, None,
                           "", "x", "\ud800", "\udfff\ud800", [], {}, [[[]]], {"a": 1}, [1, "x", None], DELETE]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value, the value itself first."""
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, path + (i,))
    return out


def _mutate(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return doc if new is DELETE else new
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if new is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return doc


@pytest.fixture(scope="module")
def real_docs() -> dict[str, str]:
    return real_documents(forever=True)


@pytest.mark.parametrize(("kind", "command"), [("tasks", "tasks"), ("sync", "sync"), ("sync", "leaks")])
def test_mutated_saved_documents_are_read_or_refused(tmp_path: Path, real_docs: dict[str, str], kind: str,
                                                     command: str) -> None:
    original = json.loads(real_docs[kind])
    places = _paths(original)

    @settings(FUZZ, max_examples=40)
    @given(data=st.data(), fmt=st.sampled_from(["json", "text", "table"]))
    def run(data: st.DataObject, fmt: str) -> None:
        doc = json.loads(real_docs[kind])
        for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
            path = data.draw(st.sampled_from(places), label="path")
            new = data.draw(st.sampled_from(REPLACEMENTS), label="value")
            try:
                doc = _mutate(doc, path, new)
            except (KeyError, IndexError, TypeError):
                pass  # an earlier mutation moved this place
        path_ = tmp_path / "doc.json"
        path_.write_text(json.dumps(doc))
        argv = [command, str(path_), "--format", fmt] + (["--debug", "2"] if command == "tasks" else [])
        code, stdout, stderr = run_main(argv)
        assert code in (0, 1, 3) and "Traceback" not in stderr, (argv, code, stderr)
        if code == 3:
            lines = stderr.strip().splitlines()
            assert stdout == "" and len(lines) == 1 and lines[0].startswith(f"diag: error: {path_}"), stderr
        elif fmt == "json":
            json.loads(stdout)

    run()

"""Every option is checked before a command does any work: a value out of range, or a file
that cannot be written, is a usage error (exit 2) naming that one option and its range.

The target is an address where nothing listens: had the command started its work, it would
have failed on the target (exit 3) instead."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import assert_one_line_error, run_diag
from tests.support.target import free_port

NO_DIR = "/no/such/dir"

CASES = [
    ("tasks", ["--timeout", "0"], "--timeout", "--timeout must be > 0 and at most 86400 seconds, not 0"),
    ("tasks", ["--timeout", "1e300"], "--timeout", "at most 86400 seconds"),
    ("tasks", ["--min-wait", "nan"], "--min-wait", "--min-wait must be a number of seconds >= 0, not nan"),
    ("tasks", ["--limit", "0"], "--limit", "--limit must be at least 1, not 0"),
    ("tasks", ["-o", f"{NO_DIR}/tasks.json"], "--output", f"-o/--output {NO_DIR}/tasks.json: no such directory"),
    ("sync", ["--timeout", "-1"], "--timeout", "--timeout must be > 0"),
    ("sync", ["-o", f"{NO_DIR}/sync.json"], "--output", "-o/--output"),
    ("leaks", ["--proof-budget", "-1"], "--proof-budget", "--proof-budget must be > 0 and at most 30 seconds, not -1"),
    ("leaks", ["--proof-budget", "31"], "--proof-budget", "--proof-budget must be > 0 and at most 30 seconds, not 31"),
    ("leaks", ["--timeout", "0"], "--timeout", "--timeout must be > 0"),
    ("leaks", ["--min-wait", "-1"], "--min-wait", "--min-wait must be a number of seconds >= 0, not -1"),
    ("leaks", ["--held-threshold", "nan"], "--held-threshold", "--held-threshold must be a number of seconds >= 0"),
    ("leaks", ["--stall-threshold", "-1"], "--stall-threshold", "--stall-threshold must be a number of seconds >= 0"),
    ("leaks", ["--stall-window", "inf"], "--stall-window", "--stall-window must be a number of seconds >= 0"),
    ("leaks", ["--stall-repeats", "0"], "--stall-repeats", "--stall-repeats must be at least 1, not 0"),
    ("leaks", ["--cancel-grace", "-2"], "--cancel-grace", "--cancel-grace must be a number of seconds >= 0"),
    ("leaks", ["-o", f"{NO_DIR}/sync.json"], "--output", "-o/--output"),
    ("profile", ["--seconds", "0"], "--seconds", "--seconds must be > 0 and at most 60 seconds, not 0"),
    ("profile", ["--timeout", "0"], "--timeout", "--timeout must be > 0"),
    ("profile", ["--top", "0"], "--top", "--top must be at least 1, not 0"),
    ("profile", ["--max-tasks", "-1"], "--max-tasks", "--max-tasks must be at least 0, not -1"),
    ("profile", ["-o", f"{NO_DIR}/out.json"], "--output", f"-o/--output {NO_DIR}/out.json: no such directory"),
    ("objects", ["--top", "0"], "--top", "--top must be at least 1, not 0"),
    ("objects", ["--interval", "0"], "--interval", "--interval must be > 0 and at most 86400 seconds, not 0"),
    ("objects", ["--interval", "1", "--count", "101"], "--count", "--count must be between 2 and 100, not 101"),
    ("objects", ["--budget", "31"], "--budget", "--budget must be > 0 and at most 30 seconds, not 31"),
    ("objects", ["--max-depth", "0"], "--max-depth", "--max-depth must be between 1 and 30, not 0"),
    ("objects", ["--timeout", "0"], "--timeout", "--timeout must be > 0"),
    ("objects", ["-o", f"{NO_DIR}/objects.json"], "--output", "-o/--output"),
    ("objects", ["--type", "X", "--backrefs", "--dot", f"{NO_DIR}/chain.dot"], "--dot", "--dot"),
    ("check", ["--tolerance", "-1"], "--tolerance", "--tolerance must be at least 0, not -1"),
    ("check", ["--settle", "-1"], "--settle", "--settle must be between 0 and 86400 seconds, not -1"),
    ("check", ["--timeout", "0"], "--timeout", "--timeout must be > 0"),
    ("check", ["--proof-budget", "0"], "--proof-budget", "--proof-budget must be > 0 and at most 30 seconds, not 0"),
    ("check", ["--junit", f"{NO_DIR}/junit.xml"], "--junit", "--junit"),
    ("check", ["--baseline", f"{NO_DIR}/base.json", "--update-baseline"], "--baseline", "--baseline"),
    ("top", ["--interval", "0.05"], "--interval", "--interval must be between 0.1 and 86400 seconds, not 0.05"),
    ("top", ["--iterations", "0"], "--iterations", "--iterations must be at least 1, not 0"),
    ("top", ["--limit", "0"], "--limit", "--limit must be at least 1, not 0"),
    ("top", ["--min-wait", "-1"], "--min-wait", "--min-wait must be a number of seconds >= 0"),
    ("top", ["--timeout", "0"], "--timeout", "--timeout must be > 0"),
]


@pytest.mark.parametrize(("command", "args", "option", "expected"), CASES,
                         ids=[f"{c[0]}{''.join(c[1][:2])}" for c in CASES])
def test_an_option_out_of_range_is_named_before_any_work(command: str, args: list[str], option: str,
                                                         expected: str) -> None:
    target = f"http://127.0.0.1:{free_port()}"
    line = assert_one_line_error(run_diag(command, target, *args), 2)
    assert expected in line, line
    assert set(re.findall(r"--[a-z][a-z-]+", line)) == {option}, line  # that option only


def test_profile_to_a_missing_directory_fails_before_profiling(tmp_path: Path) -> None:
    from tests.support.target import TargetServer

    with TargetServer("--log-level", "WARNING") as server:
        proc = run_diag("profile", "-o", f"{NO_DIR}/out.json", server.url, "--seconds", "5")
    line = assert_one_line_error(proc, 2)
    assert line == f"diag: error: -o/--output {NO_DIR}/out.json: no such directory: {NO_DIR}"
    assert "profiling" not in proc.stderr


@pytest.mark.parametrize("command", ["tasks", "sync", "leaks", "objects", "profile"])
def test_output_that_is_a_directory(command: str, tmp_path: Path) -> None:
    line = assert_one_line_error(run_diag(command, f"http://127.0.0.1:{free_port()}", "-o", str(tmp_path)), 2)
    assert f"-o/--output {tmp_path}: is a directory" in line


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(("command", "args", "expected"), [
    ("attach", ["--timeout", "0"], "--timeout must be > 0 and at most 600 seconds, not 0"),
    ("attach", ["--timeout", "601"], "--timeout must be > 0 and at most 600 seconds, not 601"),
    ("attach", ["--agent-file", f"{NO_DIR}/agent.txt"], f"--agent-file {NO_DIR}/agent.txt: no such directory"),
    ("detach", ["--timeout", "-1"], "--timeout must be > 0 and at most 600 seconds, not -1"),
])
def test_attach_options_are_checked_before_the_process_is_looked_at(command: str, args: list[str],
                                                                    expected: str) -> None:
    # a process that has ended: looked at, it would be "no such process" (exit 3)
    line = assert_one_line_error(run_diag(command, str(_dead_pid()), *args), 2)
    assert expected in line


def test_run_checks_its_agent_file_before_starting_the_program(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    proc = run_diag("run", "--agent-file", f"{NO_DIR}/agent.txt", "--", sys.executable, "-c",
                    f"open({str(marker)!r}, 'w').close()")
    assert f"--agent-file {NO_DIR}/agent.txt: no such directory" in assert_one_line_error(proc, 2)
    assert not marker.exists()


@pytest.mark.parametrize(("output", "expected"), [
    ("a" * 5000, ": cannot write: File name too long"),
    ("/etc/passwd/x", "-o/--output /etc/passwd/x: not a directory: /etc/passwd"),
    ("bad\x00name", "embedded null"),  # refused as the option is parsed (byte, or character on 3.13)
])
def test_an_output_path_that_cannot_be_a_file(output: str, expected: str) -> None:
    from tests.diag.test_bad_targets import one_line_error

    line = one_line_error(["tasks", f"http://127.0.0.1:{free_port()}", "-o", output], 2)
    assert "--output" in line and expected in line and len(line) < 300, line


@pytest.mark.parametrize(("argv", "expected"), [
    (["tasks", "http://127.0.0.1:9", "--output=bad\x00name"], "Invalid value for '--output' / '-o': embedded null"),
    (["leaks", "http://127.0.0.1:9\x00"], "Invalid argument: embedded null character (try 'diag leaks --help')"),
])
def test_a_nul_in_any_argument_is_one_usage_line(argv: list[str], expected: str) -> None:
    # only main(argv) can be given one (exec cannot): typer before 0.29 let os.stat raise
    from tests.diag.test_bad_targets import one_line_error

    assert expected in one_line_error(argv, 2)


def test_a_huge_number_is_refused_in_one_short_line() -> None:
    line = assert_one_line_error(run_diag("tasks", f"http://127.0.0.1:{free_port()}", "--limit", "-" + "9" * 400), 2)
    assert line.startswith("diag: error: --limit must be at least 1, not -999") and len(line) < 120, line

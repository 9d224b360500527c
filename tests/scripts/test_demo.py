"""``scripts/demo.sh`` on a port someone else holds: one line saying so and how to pick
another, a non-zero exit, and no server log or traceback."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import ROOT

DEMO = ROOT / "scripts" / "demo.sh"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def demo(port: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PORT": port, **env_vars}
    return subprocess.run(["bash", str(DEMO)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_a_taken_port_is_one_line_and_a_non_zero_exit(taken_port: int) -> None:
    proc = demo(str(taken_port))
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"scripts/demo.sh: port {taken_port} on 127.0.0.1 is taken; pick another: "
        f"PORT={taken_port + 1} scripts/demo.sh"]


def test_a_port_taken_after_the_check_is_the_same_one_line(taken_port: int, tmp_path: Path) -> None:
    # An interpreter whose port check passes whatever the port: the server is the one to find it taken.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nif [ "$1" = "-" ]; then cat >/dev/null; exit 0; fi\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    proc = demo(str(taken_port), PYTHON=str(python))
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"scripts/demo.sh: port {taken_port} on 127.0.0.1 is taken; pick another: "
        f"PORT={taken_port + 1} scripts/demo.sh"]


@pytest.mark.parametrize("port", ["abc", "0", "70000", "80 80"])
def test_a_port_that_is_no_number(port: str) -> None:
    proc = demo(port)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"scripts/demo.sh: PORT={port} is not a port number (1-65535); for example: PORT=8081 scripts/demo.sh"]


@pytest.mark.slow
def test_the_demo_prints_each_command_as_it_runs_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = demo(str(port))
    assert proc.returncode == 0, proc.stderr[-2000:]
    url = f"http://127.0.0.1:{port}"
    shown = [line[2:] for line in proc.stderr.splitlines() if line.startswith("$ ")]
    assert shown == [f"diag tasks {url}", f"diag tasks {url} --debug 2 --filter deadlock_worker --format text",
                     f"diag leaks {url} --min-wait 1"]
    # every line of the script that runs diag prints itself first (show), so nothing else runs
    runs = [line.strip() for line in DEMO.read_text().splitlines() if re.match(r"\s*(show\s+)?diag\s", line)]
    assert len(runs) == 3 and all(line.startswith("show diag ") for line in runs), runs
    assert proc.stdout.count("diag tasks: pid ") == 2 and "diag leaks: pid " in proc.stdout

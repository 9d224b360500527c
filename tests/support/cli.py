"""Run the ``diag`` CLI as a real subprocess, with a pinned terminal width and no colour."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def diag_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("FORCE_COLOR", None)
    env.update(extra)
    return env


def run_diag(*args: str, timeout: float = 60.0, cwd: Path | str = ROOT,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diag", *args], cwd=cwd, env=env or diag_env(),
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """A failed command: the expected exit code, nothing on stdout, one line on stderr, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "", proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("diag: error: "), lines[0]
    return lines[0]

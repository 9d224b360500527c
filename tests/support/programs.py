"""Run a stand-alone Python program under ``diag run`` and find its agent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import TracebackType

from tests.support.cli import ROOT, diag_env


class DiagRun:
    """``diag run --agent-file F -- python SCRIPT``; ``.url`` is the agent address once ready."""

    def __init__(self, source: str, *, agent: str = "127.0.0.1:0", ready_timeout: float = 20.0,
                 env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.args = args
        self.extra_env = env or {}
        self.dir = tempfile.TemporaryDirectory(prefix="diag-run-")
        self.script = Path(self.dir.name) / "app.py"
        self.script.write_text(textwrap.dedent(source))
        self.addr_file = Path(self.dir.name) / "agent.addr"
        self.agent = agent
        self.ready_timeout = ready_timeout
        self.log = Path(self.dir.name) / "out.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> "DiagRun":
        cmd = [sys.executable, "-m", "diag", "run", "--agent", self.agent, "--agent-file", str(self.addr_file),
               "--", sys.executable, str(self.script), *self.args]
        env = diag_env(**self.extra_env)
        env.pop("PYTHONPATH", None)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.dir.name, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.addr_file.exists() and self.addr_file.read_text().strip():
                self.url = self.addr_file.read_text().strip()
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"program did not start its agent:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
        self.dir.cleanup()


__all__ = ["DiagRun", "ROOT", "os"]


def run_python(source: str, *args: str, python_path: bool = False,
               timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    """``python -c source args...`` with diag's C accelerator, or with its pure-Python
    paths (``DIAG_ORIGINS=python``) when ``python_path``."""
    env = {k: v for k, v in os.environ.items() if k != "DIAG_ORIGINS"}
    if python_path:
        env["DIAG_ORIGINS"] = "python"
    return subprocess.run([sys.executable, "-c", source, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)

"""Start the bundled target server as a real subprocess on a free loopback port.

Usage::

    with TargetServer("--max-concurrency", "4") as server:
        urllib.request.urlopen(server.url + "/healthz")
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Ports tried before giving up (each lost only to a race with another process).
PORT_ATTEMPTS = 5


def listens(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds the socket listening on 127.0.0.1:``port``, from
    Linux's /proc; None where /proc cannot say."""
    try:
        rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    local = f"0100007F:{port:04X}"
    inodes = {f"socket:[{row[9]}]" for row in rows if len(row) > 9 and row[1] == local and row[3] == "0A"}
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def http(method: str, url: str, *, timeout: float = 10.0, headers: dict[str, str] | None = None,
         data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, headers, body) for any status, never raises on 4xx/5xx."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def get_json(url: str, timeout: float = 10.0) -> Any:
    status, _, body = http("GET", url, timeout=timeout)
    assert status == 200, (status, body[:500])
    return json.loads(body)


class TargetServer:
    """The target server in a subprocess; SIGTERM and a bounded wait on exit."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, ready_timeout: float = 20.0) -> None:
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.ready_timeout = ready_timeout
        self.log = tempfile.NamedTemporaryFile(prefix="target-server-", suffix=".log", delete=False)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "TargetServer":
        # free_port() lets the port go before the server binds it: another process (a
        # parallel test's server) can take it meanwhile.  The server then cannot bind, and
        # is started again on another port; until it exits, the /healthz that answers may
        # be the other process's, so only an answer while this process holds the port counts.
        for _ in range(PORT_ATTEMPTS):
            cmd = [sys.executable, "-m", "target_server", "--host", "127.0.0.1", "--port", str(self.port), *self.args]
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + self.ready_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    if "address already in use" not in self.output():
                        raise RuntimeError(f"target server exited with {self.proc.returncode}:\n{self.output()}")
                    break
                try:
                    status, _, _ = http("GET", self.url + "/healthz", timeout=1.0)
                    if status == 200 and listens(self.proc.pid, self.port) is not False:
                        return self
                except OSError:
                    pass
                time.sleep(0.05)
            else:
                self.stop()
                raise RuntimeError(f"target server did not become ready:\n{self.output()}")
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.log.seek(0)
            self.log.truncate()
        raise RuntimeError(f"target server found no free port in {PORT_ATTEMPTS} attempts:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass

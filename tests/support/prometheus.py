"""Run a real Prometheus server (Debian's ``prometheus`` binary) as a subprocess on loopback.

Usage::

    binary = prometheus_binary()        # skips the test when missing, fails it when CI=true
    with PrometheusServer(binary, {"app": "127.0.0.1:8080/metrics"}) as prom:
        prom.query('diag_tasks{state="waiting"}')

Nothing is started as a system service: the binary runs with a temporary config and
storage directory, bound to 127.0.0.1 on a free port, and is killed on exit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping

import pytest

from tests.support.target import free_port, http

SKIP_REASON = ("the prometheus binary is not installed (Debian: apt-get install -y --no-install-recommends "
               "prometheus); set CI=true to make its absence a failure")


def prometheus_binary() -> str:
    """The binary's path; skip without it, except under CI=true, where a missing binary fails."""
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but the prometheus binary is not installed: .ci/run installs it")
        pytest.skip(SKIP_REASON)
    return found


def scrape_config(targets: Mapping[str, str], interval: float = 1.0) -> str:
    """prometheus.yml scraping each ``job -> host:port/path`` every ``interval`` seconds."""
    lines = ["global:", f"  scrape_interval: {interval:g}s", f"  scrape_timeout: {interval:g}s", "scrape_configs:"]
    for job, target in targets.items():
        host, _, path = target.partition("/")
        lines += [f"  - job_name: {json.dumps(job)}", f"    metrics_path: {json.dumps('/' + path)}",
                  "    static_configs:", f"      - targets: [{json.dumps(host)}]"]
    return "\n".join(lines) + "\n"


class PrometheusServer:
    """``prometheus --config.file ... --storage.tsdb.path TMP --web.listen-address 127.0.0.1:PORT``."""

    def __init__(self, binary: str, targets: Mapping[str, str], *, interval: float = 1.0,
                 ready_timeout: float = 20.0) -> None:
        self.binary = binary
        self.dir = tempfile.TemporaryDirectory(prefix="diag-prometheus-")
        self.config = Path(self.dir.name) / "prometheus.yml"
        self.config.write_text(scrape_config(targets, interval))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout = ready_timeout
        self.log = Path(self.dir.name) / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "PrometheusServer":
        cmd = [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={Path(self.dir.name) / 'data'}",
               f"--web.listen-address=127.0.0.1:{self.port}"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.dir.name, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                status, _, _ = http("GET", self.url + "/-/ready", timeout=1.0)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.close()
        raise RuntimeError(f"prometheus did not become ready:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector: ``[{"metric": {labels}, "value": [ts, "v"]}]``."""
        status, _, body = http("GET", f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}",
                               timeout=5.0)
        data = json.loads(body)
        assert status == 200 and data.get("status") == "success", (status, data)
        return list(data["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        status, _, body = http("GET", f"{self.url}/api/v1/targets", timeout=5.0)
        assert status == 200, (status, body[:300])
        return list(json.loads(body)["data"]["activeTargets"])

    def wait_for(self, check: Callable[["PrometheusServer"], Any], timeout: float = 30.0) -> Any:
        """Poll ``check(self)`` until it returns something truthy; fail with what was last seen."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check(self)
            if last:
                return last
            time.sleep(0.25)
        raise AssertionError(f"prometheus never saw the expected series within {timeout:g}s; last check gave "
                             f"{last!r}; targets: {self.targets()}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
        self.dir.cleanup()

"""``diag check`` against the real target server: warm-up, settle, compare with a baseline."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from diag.analysis.check_baseline import SCHEMA
from tests.support.cli import assert_one_line_error, diag_env, run_diag
from tests.support.target import TargetServer, free_port
from tests.target.helpers import get, release

FIXED = ["semaphore", "orphan-future", "deadlock", "forgotten-task", "lock"]
WARM_UP = [arg for name in FIXED for arg in ("--request", f"GET /fixed/{name} x3")]


@pytest.fixture(scope="module")
def server() -> Iterator[TargetServer]:
    with TargetServer("--max-concurrency", "4", "--pool-wait", "2", "--request-timeout", "10") as srv:
        yield srv


@pytest.fixture(scope="module")
def baseline(server: TargetServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("check") / "baseline.json"
    proc = run_diag("check", server.url, *WARM_UP, "--settle", "0.5", "--baseline", str(path), "--update-baseline")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "baseline written" in proc.stderr
    assert json.loads(path.read_text())["schema"] == SCHEMA
    return path


@pytest.fixture(autouse=True)
def clean(server: TargetServer) -> Iterator[None]:
    yield
    release(server)


def test_fixed_endpoints_pass_against_their_baseline_with_junit(server: TargetServer, baseline: Path,
                                                                  tmp_path: Path) -> None:
    junit = tmp_path / "check.xml"
    proc = run_diag("check", server.url, *WARM_UP, "--settle", "0.5", "--baseline", str(baseline),
                    "--junit", str(junit))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed: nothing new since the baseline" in proc.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    names = [case.get("name") for case in suite.iter("testcase")]
    assert names[:2] == ["task groups", "held permits"] and "findings: proven_leak" in names


@pytest.mark.parametrize("name, expected", [
    ("semaphore", "leaked_permit"),
    ("orphan-future", "proven_leak"),
    ("deadlock", "deadlock"),
    ("forgotten-task", "proven_leak"),
    ("lock", "leaked_permit"),
])
def test_each_leaky_endpoint_is_a_regression(server: TargetServer, baseline: Path, tmp_path: Path,
                                             name: str, expected: str) -> None:
    junit = tmp_path / "check.xml"
    proc = run_diag("check", server.url, "--request", f"GET /leak/{name} x1", "--settle", "0.5",
                    "--baseline", str(baseline), "--junit", str(junit))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"FAIL findings: {expected}" in proc.stdout
    assert f"new finding {expected}:" in proc.stdout
    failed = [c.get("name") for c in ET.parse(junit).getroot().iter("testcase") if c.find("failure") is not None]
    assert f"findings: {expected}" in failed


def test_growth_within_tolerance_passes(server: TargetServer, baseline: Path) -> None:
    get(server, "/leak/blocked-put")
    get(server, "/leak/blocked-put")  # the second put blocks: one more task, a suspect at most
    proc = run_diag("check", server.url, "--settle", "0.2", "--baseline", str(baseline))
    assert proc.returncode == 1 and "FAIL task groups" in proc.stdout and "blocked_put_producer" in proc.stdout
    proc = run_diag("check", server.url, "--settle", "0", "--baseline", str(baseline), "--tolerance", "1")
    assert proc.returncode == 0, proc.stdout


def test_scenario_file_and_its_errors(server: TargetServer, baseline: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "warmup.txt"
    scenario.write_text("# fixed twins\nGET /fixed/lock x5\n\nget /fixed/semaphore   # lower case is fine\n")
    proc = run_diag("check", server.url, "--scenario", str(scenario), "--settle", "0.3", "--baseline", str(baseline))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scenario.write_text("GET /fixed/lock x5\nFETCH the/lock\n")
    line = assert_one_line_error(run_diag("check", server.url, "--scenario", str(scenario)), 2)
    assert "warmup.txt:2" in line and "METHOD /PATH [xN]" in line
    assert_one_line_error(run_diag("check", server.url, "--baseline", str(tmp_path / "missing.json")), 2)


def test_unreachable_target_is_exit_3() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert_one_line_error(run_diag("check", url, "--request", "GET / x1", "--settle", "0"), 3)
    assert_one_line_error(run_diag("check", url, "--settle", "0", "--timeout", "2"), 3)


def test_usage_errors_come_before_the_settle_time() -> None:
    """A bad TARGET or agent token is exit 2 at once: the hour of --settle is never waited
    (the run's own deadline, far shorter, would end it first)."""
    for target in ("not-a-target", "ftp://127.0.0.1:1"):
        line = assert_one_line_error(run_diag("check", target, "--settle", "3600", timeout=60), 2)
        assert "bad target" in line
    proc = run_diag("check", f"http://127.0.0.1:{free_port()}", "--settle", "3600", timeout=60,
                    env=diag_env(DIAG_AGENT_TOKEN="bad\ntoken"))
    assert "DIAG_AGENT_TOKEN" in assert_one_line_error(proc, 2)


def test_compare_is_pure_and_blanks_ids_in_signatures() -> None:
    from diag.analysis.check_baseline import CheckBaseline, compare, finding_signature
    from diag.analysis.leak_verdicts import Finding

    title = "deadlock (lock-order inversion) between tasks 12, 13 on lock 0x7f00ab"
    assert finding_signature(Finding("deadlock", title, "")) == \
        "deadlock: deadlock (lock-order inversion) between tasks N, N on lock 0x?"
    before = CheckBaseline({"a @ f [event]": 2}, {"lock L": 1}, ("deadlock: x",))
    now = CheckBaseline({"a @ f [event]": 3, "b @ g [future]": 1}, {"lock L": 1}, ("deadlock: x", "proven_leak: y"))
    result = compare(before, now, tolerance=0)
    assert [(r.check, r.signature, r.before, r.now) for r in result.regressions] == [
        ("task_groups", "a @ f [event]", 2, 3), ("task_groups", "b @ g [future]", 0, 1),
        ("proven_leak", "proven_leak: y", 0, 1)]
    assert [r.check for r in compare(before, now, tolerance=1).regressions] == ["proven_leak"]
    assert CheckBaseline.from_json(now.to_json()) == now

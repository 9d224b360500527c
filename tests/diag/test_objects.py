"""``diag objects`` against the real target server: the unbounded cache is the type that
grows, its fixed twin is not, and the back-reference chain names the module global."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diag.analysis.heap_growth import steady_growth
from diag.model.heap_snapshot import HeapSeries, HeapSnapshot, TypeCount
from diag.model.task_snapshot import ProcessInfo
from tests.support.cli import ROOT, assert_one_line_error, diag_env, run_diag
from tests.support.target import TargetServer, free_port, get_json
from tests.target.helpers import get

CACHED = "target_server.leaks.CachedResponse"


@pytest.fixture
def server() -> Iterator[TargetServer]:
    with TargetServer("--rate", "1000000", "--burst", "1000000", "--log-level", "WARNING") as srv:
        yield srv


def agent_of(server: TargetServer) -> str:
    return str(get_json(server.url + "/healthz")["diag_agent"])


def growth_while_hitting(server: TargetServer, path: str, tmp_path: Path) -> dict[str, Any]:
    """``diag objects --interval 0.7 --count 4`` while ``path`` is requested steadily."""
    out = tmp_path / "series.json"
    cmd = [sys.executable, "-m", "diag", "objects", agent_of(server), "--interval", "0.7", "--count", "4",
           "--format", "text", "-o", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=diag_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        for _ in range(10):
            get(server, path)
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    series = HeapSeries.from_json(out.read_text())
    growth = steady_growth(series.snapshots)
    return {"stdout": stdout, "growth": [g.name for g in growth], "series": series}


def test_unbounded_cache_tops_the_growth_list(server: TargetServer, tmp_path: Path) -> None:
    found = growth_while_hitting(server, "/leak/cache", tmp_path)
    assert found["growth"][0] == CACHED, found["growth"][:5]
    assert "growing steadily" in found["stdout"]
    growth_lines = found["stdout"].split("growing steadily")[1].splitlines()
    assert CACHED in growth_lines[2]
    # the saved series renders again offline
    again = run_diag("objects", str(tmp_path / "series.json"), "--format", "text", "--top", "3")
    assert again.returncode == 0 and CACHED in again.stdout.split("growing steadily")[1]


def test_bounded_cache_does_not_grow(server: TargetServer, tmp_path: Path) -> None:
    for _ in range(200):  # fill the LRU to its bound first
        get(server, "/fixed/cache")
    found = growth_while_hitting(server, "/fixed/cache", tmp_path)
    assert CACHED not in found["growth"]


def test_backrefs_name_the_module_global(server: TargetServer, tmp_path: Path) -> None:
    for _ in range(5):
        get(server, "/leak/cache")
    dot = tmp_path / "chain.dot"
    proc = run_diag("objects", agent_of(server), "--type", "CachedResponse", "--backrefs", "--dot", str(dot),
                    "--format", "text")
    assert proc.returncode == 0, proc.stderr
    chain = proc.stdout.split("back-references:")[1]
    assert "module target_server.leaks" in chain and "['_RESPONSE_CACHE']" in chain
    assert f"{CACHED} 0x" in chain
    text = dot.read_text()
    assert text.startswith("digraph backrefs {") and "_RESPONSE_CACHE" in text and text.rstrip().endswith("}")
    data = json.loads(run_diag("objects", agent_of(server), "--type", "CachedResponse", "--backrefs",
                               "--format", "json").stdout)
    back = data["snapshots"][-1]["backrefs"]
    assert back["found"] and back["chain"][0]["label"] == "target_server.leaks"
    assert back["matched"] == 5


def test_growth_needs_every_interval() -> None:
    def snap(counts: dict[str, int]) -> HeapSnapshot:
        return HeapSnapshot(0.0, ProcessInfo(1), sum(counts.values()),
                            tuple(TypeCount(k, v) for k, v in counts.items()))
    snaps = (snap({"a": 1, "b": 5, "c": 1}), snap({"a": 3, "b": 9, "c": 1}), snap({"a": 6, "b": 8, "c": 9}))
    assert [(g.name, g.growth, g.per_interval) for g in steady_growth(snaps)] == [("a", 5, (2, 3))]
    assert HeapSeries.from_json(HeapSeries(snaps, 1.0).to_json()) == HeapSeries(snaps, 1.0)


@pytest.mark.parametrize(("args", "code", "expected"), [
    (("--backrefs",), 2, "--backrefs needs --type"),
    (("--count", "3"), 2, "--count needs --interval"),
    (("--interval", "1", "--count", "1"), 2, "--count must be between"),
    (("--type", "X", "--dot", "x.dot"), 2, "--dot needs --backrefs"),
    (("--filter", "(("), 2, "bad --filter regex"),
    ((), 3, "connection refused"),
])
def test_bad_input(args: tuple[str, ...], code: int, expected: str) -> None:
    line = assert_one_line_error(run_diag("objects", f"http://127.0.0.1:{free_port()}", *args), code)
    assert expected in line


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"schema": "diag.profile/1"}')
    assert "diag.objects" in assert_one_line_error(run_diag("objects", str(path)), 3)


def _text_rows(stdout: str, title: str) -> list[str]:
    """The type names of one table in the text form: the rows under the header that
    starts with ``title``, up to the next blank line."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append(line.split()[0])
    return rows


@pytest.fixture
def saved_series(server: TargetServer, tmp_path: Path) -> Path:
    """Two snapshots of the target server while its unbounded cache grows, saved in full."""
    for _ in range(5):
        get(server, "/leak/cache")
    out = tmp_path / "series.json"
    cmd = [sys.executable, "-m", "diag", "objects", agent_of(server), "--interval", "0.5", "--count", "2",
           "--format", "text", "-o", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=diag_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        get(server, "/leak/cache")
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    return out


@pytest.mark.parametrize(("pattern", "top"), [(None, 5), ("Response|dict", 3), ("^(dict|list|tuple)$", 2), ("Cached", 20)])
def test_json_shows_the_types_the_table_shows(saved_series: Path, pattern: str | None, top: int) -> None:
    args = [str(saved_series), "--top", str(top)] + (["--filter", pattern] if pattern else [])
    text = run_diag("objects", *args, "--format", "text")
    data = run_diag("objects", *args, "--format", "json")
    assert text.returncode == 0 and data.returncode == 0, (text.stderr, data.stderr)
    doc = json.loads(data.stdout)
    shown = [t["name"] for t in doc["snapshots"][-1]["types"]]
    assert shown == _text_rows(text.stdout, "type ")
    assert 0 < len(shown) <= top, shown
    for snap in doc["snapshots"]:
        assert len(snap["types"]) <= top
        if pattern:
            assert all(re.search(pattern, t["name"]) for t in snap["types"]), snap["types"]
    growth = [g["name"] for g in doc["growth"]]
    grew = text.stdout.split("growing steadily (grew in every interval)")
    assert growth == (_text_rows(grew[1], "type ") if len(grew) > 1 else [])
    assert len(growth) <= top
    if pattern:
        assert all(re.search(pattern, name) for name in growth), growth
    if pattern == "Cached":  # the five cached responses; whether they grew is test_unbounded_cache_tops_the_growth_list's
        assert CACHED in shown, shown


def test_diag_types_are_hidden_unless_asked_for(saved_series: Path) -> None:
    full = HeapSeries.from_json(saved_series.read_text())
    own = [t.name for t in full.snapshots[-1].types if t.name.startswith("diag.")]
    assert own, "the agent's own objects are in the target"  # what -o saves: everything
    everything = ["--top", "100000", "--format", "json"]
    hidden = json.loads(run_diag("objects", str(saved_series), *everything).stdout)
    assert not [t["name"] for s in hidden["snapshots"] for t in s["types"] if t["name"].startswith("diag.")]
    assert not [g["name"] for g in hidden["growth"] if g["name"].startswith("diag.")]
    shown = json.loads(run_diag("objects", str(saved_series), *everything, "--include-diag").stdout)
    assert {t["name"] for t in shown["snapshots"][-1]["types"]} >= set(own)
    text = run_diag("objects", str(saved_series), "--top", "100000", "--format", "text").stdout
    assert "\ndiag." not in text and "target_server." in text
    # the header counts what the rows list: diag's own objects and types are out of it too
    last = full.snapshots[-1]
    own_objects = sum(t.count for t in last.types if t.name.startswith("diag."))
    assert (f", {last.objects - own_objects} GC-tracked objects of {last.types_total - len(own)} types, "
            in text.splitlines()[0]), text.splitlines()[0]
    assert hidden["snapshots"][-1]["objects"] == last.objects - own_objects
    assert hidden["snapshots"][-1]["types_total"] == last.types_total - len(own)
    every = run_diag("objects", str(saved_series), "--format", "text", "--include-diag").stdout.splitlines()[0]
    assert f", {last.objects} GC-tracked objects of {last.types_total} types, " in every, every
    only_own = run_diag("objects", str(saved_series), "--filter", "^diag\\.", "--format", "text")
    assert _text_rows(only_own.stdout, "type ") == []
    with_own = run_diag("objects", str(saved_series), "--filter", "^diag\\.", "--format", "text", "--include-diag")
    assert _text_rows(with_own.stdout, "type ") and all(n.startswith("diag.") for n in _text_rows(with_own.stdout, "type "))


def test_live_json_hides_diag_types_and_keeps_the_top(server: TargetServer) -> None:
    proc = run_diag("objects", agent_of(server), "--format", "json", "--top", "7")
    assert proc.returncode == 0, proc.stderr
    types = json.loads(proc.stdout)["snapshots"][-1]["types"]
    assert len(types) == 7 and not [t for t in types if t["name"].startswith("diag.")]

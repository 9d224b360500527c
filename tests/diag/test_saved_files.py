"""Saved documents and other files the CLI reads: only regular files, to a stated size,
and whatever numbers and strings they hold, read or refused with one line.

The CLI runs in this process (``main(argv)``) on files in a temporary directory, and as
a real process where a hang would show: a FIFO nobody writes to, ``/dev/zero``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from diag.documents import MAX_DOCUMENT_BYTES
from tests.diag.test_bad_targets import one_line_error, run_main
from tests.support.cli import assert_one_line_error, run_diag
from tests.support.saved_documents import real_documents
from tests.support.target import free_port

#: Command -> the kind of document it reads.
READS = {"tasks": "tasks", "sync": "sync", "leaks": "sync", "objects": "objects", "profile": "profile"}


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return {kind: json.loads(text) for kind, text in real_documents().items()}


@pytest.mark.parametrize("command", sorted(READS))
def test_a_fifo_is_refused_not_waited_on(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "snap.json"
    os.mkfifo(fifo)
    line = one_line_error([command, str(fifo)], 3)
    assert f"{fifo}: not a regular file (a FIFO)" in line, line


def test_a_fifo_as_a_real_process(tmp_path: Path) -> None:
    fifo = tmp_path / "snap.json"
    os.mkfifo(fifo)
    line = assert_one_line_error(run_diag("tasks", str(fifo), timeout=30), 3)
    assert "not a regular file (a FIFO)" in line, line


@pytest.mark.parametrize(("argv", "code"), [
    (["tasks", "/dev/zero"], 3),
    (["profile", "/dev/zero"], 3),
    (["profile", "--base", "/dev/zero", "x.json"], 3),
    (["check", "http://127.0.0.1:1", "--scenario", "/dev/zero", "--settle", "0"], 2),
    (["check", "http://127.0.0.1:1", "--baseline", "/dev/zero", "--settle", "0"], 2),
])
def test_devices_are_refused(argv: list[str], code: int) -> None:
    line = assert_one_line_error(run_diag(*argv, timeout=30), code)
    assert "/dev/zero: not a regular file (a device)" in line, line


@pytest.mark.parametrize("option", ["--scenario", "--baseline"])
def test_check_refuses_a_fifo_for_its_files(tmp_path: Path, option: str) -> None:
    fifo = tmp_path / "in.json"
    os.mkfifo(fifo)
    line = one_line_error(["check", f"http://127.0.0.1:{free_port()}", option, str(fifo), "--settle", "0"], 2)
    assert "not a regular file (a FIFO)" in line, line


def test_a_scenario_past_its_size_is_refused(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.txt"
    scenario.write_text("GET /x\n" * 200_000)
    line = one_line_error(["check", f"http://127.0.0.1:{free_port()}", "--scenario", str(scenario)], 2)
    assert "more than the 1 MiB (1048576 bytes) diag reads" in line, line


def test_a_document_past_its_size_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as fh:  # sparse: no disk is spent
        fh.truncate(MAX_DOCUMENT_BYTES + 1)
    line = one_line_error(["tasks", str(big)], 3)
    assert f"{MAX_DOCUMENT_BYTES + 1} bytes, more than the 256 MiB ({MAX_DOCUMENT_BYTES} bytes)" in line, line


#: Stands for an integer of 5,000 digits (more than Python converts from text by default).
HUGE = "<5000 digits>"


def _write(tmp_path: Path, doc: Any) -> str:
    path = tmp_path / "doc.json"
    # NaN and Infinity as Python writes them
    path.write_text(json.dumps(doc).replace(json.dumps(HUGE), "9" * 5000))
    return str(path)


@pytest.mark.parametrize(("kind", "change", "expected"), [
    ("tasks", lambda d: d.update(taken_at=math.nan), "taken_at is nan, not a finite number"),
    ("tasks", lambda d: d.update(taken_at=1e30), "taken_at is 1e+30, not a time"),
    ("tasks", lambda d: d.update(taken_at=-5.0), "taken_at is -5, not a time"),
    ("tasks", lambda d: d["tasks"][0]["wait"].update(seconds=math.nan), "wait seconds is nan"),
    ("tasks", lambda d: d["tasks"][0]["wait"].update(seconds=math.inf), "wait seconds is inf"),
    ("tasks", lambda d: d["loops"].append({"id": "x", "stalled_seconds": math.inf}), "stalled_seconds is inf"),
    ("tasks", lambda d: d["tasks"][0].update(id=math.inf), "OverflowError"),
    ("tasks", lambda d: d["tasks"][0].update(id=HUGE), "invalid JSON"),
    ("sync", lambda d: d["primitives"][0]["holders"][0].update(held_seconds=-math.inf), "held_seconds is -inf"),
    ("sync", lambda d: d["reachability"].update(seconds=math.nan), "proof seconds is nan"),
    ("sync", lambda d: d["tasks"].update(taken_at=math.inf), "taken_at is inf"),
])
def test_non_finite_and_huge_numbers_are_refused_with_the_field(tmp_path: Path, docs: dict[str, dict[str, Any]],
                                                                kind: str, change: Any, expected: str) -> None:
    doc = json.loads(json.dumps(docs[kind]))
    change(doc)
    path = _write(tmp_path, doc)
    for command in [c for c, k in READS.items() if k == kind]:
        line = one_line_error([command, path], 3)
        assert path in line and expected in line, (command, line)


def test_a_sleep_without_end_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # asyncio.sleep(math.inf) is a real wait: its infinite time left is no damage.
    monkeypatch.setenv("COLUMNS", "200")  # the table's width pinned: 80 columns would cut the names
    path = tmp_path / "tasks.json"
    path.write_text(real_documents(forever=True)["tasks"])
    code, stdout, stderr = run_main(["tasks", str(path), "--format", "json", "--debug", "2"])
    assert code == 0 and stderr == "", stderr
    assert any(t["wait"].get("time_left") == math.inf for t in json.loads(stdout)["tasks"])
    for fmt in ("text", "table"):
        code, stdout, stderr = run_main(["tasks", str(path), "--format", fmt, "--debug", "2"])
        assert code == 0 and stderr == "" and "worker-4" in stdout, stderr


@pytest.mark.parametrize("kind", ["tasks", "sync", "objects", "profile"])
def test_a_document_of_only_its_schema_tag_is_malformed(tmp_path: Path, kind: str) -> None:
    path = _write(tmp_path, {"schema": f"diag.{kind}/1"})
    line = one_line_error([kind, path], 3)
    assert "malformed diag" in line and ": no taken_at" in line, line


@pytest.mark.parametrize("command", sorted(READS))
def test_only_a_schema_tag_is_an_unusable_file_not_an_empty_report(tmp_path: Path, command: str) -> None:
    # as a real process: no report of "pid 0 ... taken 1970-01-01" on stdout, one line on stderr
    path = tmp_path / "only-schema.json"
    path.write_text(json.dumps({"schema": f"diag.{READS[command]}/1"}))
    line = assert_one_line_error(run_diag(command, str(path)), 3)
    assert f"{path}: malformed diag" in line and "1970" not in line, line


@pytest.mark.parametrize(("argv", "document"), [
    (["profile", "--base", "{path}", "{other}"], {"schema": "diag.profile/1"}),
    (["objects", "{path}"], {"schema": "diag.objects/1", "interval": 1.0, "snapshots": [{"schema": "diag.objects/1"}]}),
])
def test_only_a_schema_tag_wherever_a_document_is_read(tmp_path: Path, argv: list[str],
                                                       document: dict[str, Any]) -> None:
    path, other = tmp_path / "only-schema.json", tmp_path / "other.json"  # --base is read first
    path.write_text(json.dumps(document))
    line = one_line_error([a.format(path=path, other=other) for a in argv], 3)
    assert f"{path}: malformed diag" in line and ": no taken_at" in line, line


def test_lone_surrogates_are_read_as_replacement_characters(tmp_path: Path, docs: dict[str, dict[str, Any]]) -> None:
    doc = json.loads(json.dumps(docs["tasks"]))
    doc["tasks"][0]["name"] = "bad\ud800name"
    doc["tasks"][0]["stack"][0]["function"] = "\udfff"
    path = _write(tmp_path, doc)  # written as the escapes \ud800 and \udfff
    for fmt in ("text", "json"):
        code, stdout, stderr = run_main(["tasks", path, "--debug", "2", "--format", fmt])
        assert code == 0 and stderr == "", stderr
        assert ("bad\ufffdname" if fmt == "text" else "bad\\ufffdname") in stdout
    raw = tmp_path / "raw.json"  # the surrogate's UTF-8 bytes themselves, which json decodes too
    raw.write_bytes(Path(path).read_bytes().replace(b"\\ud800", b"\xed\xa0\x80"))
    code, stdout, stderr = run_main(["tasks", str(raw), "--debug", "2", "--format", "text"])
    assert code == 0 and "bad\ufffdname" in stdout, stderr


@pytest.mark.parametrize(("content", "expected"), [
    ("[" * 100_000, "nested too deep"),
    ('{"schema": "diag.check-baseline/1", "groups": {"g": Infinity}}', "cannot convert float infinity"),
    ('{"schema": "diag.check-baseline/1", "groups": {"g": NaN}}', "malformed diag check baseline"),
    ('{"schema": "diag.check-baseline/1"}', "malformed diag check baseline: no groups"),
])
def test_check_refuses_a_baseline_it_cannot_read(tmp_path: Path, content: str, expected: str) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(content)
    line = one_line_error(["check", f"http://127.0.0.1:{free_port()}", "--baseline", str(baseline),
                           "--settle", "0"], 2)
    assert str(baseline) in line and expected in line, line

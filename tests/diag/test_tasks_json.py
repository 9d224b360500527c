"""``diag tasks --format json`` from an agent's compact answer: written from the tables,
it is the very text the ``diag.tasks/1`` document gives, and a damaged answer is one
error with nothing written."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from typing import Any

import pytest

from diag.errors import TargetError
from diag.model.task_snapshot import CreatedBy, Frame, TaskSnapshot, Wait
from diag.model.task_wire import SHARED_KEYS, encode, expand
from diag.render import jsonout, tasks_json
from diag.render.formatting import json_safe
from tests.diag.test_task_wire import _varied


def _many(count: int) -> TaskSnapshot:
    """``count`` tasks: the varied ones of the wire tests, again and again, each with an id,
    a name and wait figures of its own (names with non-ASCII text, a lone surrogate, an
    emoji and JSON's own quotes among them)."""
    base = _varied()
    names = ["plain", "ünïcode", "lone \udc80 surrogate", "emoji \U0001f600", 'quote " and \\ slash', "tab\tnew\nline"]
    tasks = []
    for n in range(count):
        t = base.tasks[n % len(base.tasks)]
        wait = t.wait
        if wait.seconds is not None:
            wait = replace(wait, seconds=wait.seconds + n / 7)
        if n % 5 == 0 and wait.deadline_known:
            wait = replace(wait, deadline=-math.inf if n % 2 else 1e300)
        created = t.created_by if n % 3 else CreatedBy(n, f"parent-{n}", "/srv/app.py", n, "spawn")
        stack = t.stack if n % 4 else (Frame(f"/srv/mod{n % 9}.py", n, "handler", "await x"),) + t.stack
        tasks.append(replace(t, id=1000 + n, name=f"{names[n % len(names)]}-{n}", wait=wait, created_by=created,
                             stack=stack))
    return replace(base, tasks=tuple(tasks), total_tasks=count)


def _wire(snap: TaskSnapshot) -> Any:
    return json.loads(json.dumps(encode(snap)))


def _as_before(doc: Any) -> str:
    """What ``--format json`` wrote before: the expanded document through ``jsonout``."""
    out = io.StringIO()
    jsonout.render(expand(doc), out, shared=SHARED_KEYS)
    return out.getvalue()


def _written(doc: Any) -> str:
    out = io.StringIO()
    tasks_json.write(tasks_json.prepare(doc), out)
    return out.getvalue()


@pytest.mark.parametrize("count", [3, jsonout.LONG_LIST, jsonout.LONG_LIST + 1, 2500])
def test_it_is_the_text_of_the_version_1_document(count: int) -> None:
    snap = _many(count)
    doc = _wire(snap)
    text = _written(doc)
    assert text == _as_before(doc)
    assert json.loads(text) == json.loads(json.dumps(json_safe(snap.to_dict())))  # the lone surrogate made U+FFFD
    assert "\ufffd" in json.loads(text)["tasks"][2]["name"]
    if count > jsonout.LONG_LIST:
        assert text.count("\n") == count + len(json.loads(text)) + 3  # a task a line


def test_a_version_1_answer_is_written_as_it_came() -> None:
    snap = _many(1200)
    doc = json.loads(snap.to_json())
    out = io.StringIO()
    jsonout.render(doc, out, shared=SHARED_KEYS)
    assert _written(doc) == out.getvalue()


@pytest.mark.parametrize("change", [
    lambda d: d["tasks"][700].__setitem__(4, 10_000),
    lambda d: d["tasks"][700].__setitem__(4, -1),
    lambda d: d["tasks"][700].__setitem__(2, "x"),
    lambda d: d["tasks"][700].__setitem__(8, "NaN"),
    lambda d: d["tasks"][700].__setitem__(8, math.inf),
    lambda d: d["tasks"][700].__setitem__(0, "seven"),
    lambda d: d["tasks"].__setitem__(700, [1, 2]),
    lambda d: d["tasks"].__setitem__(700, 5),
    lambda d: d["frames"].__setitem__(0, [500, 1, 0, 0]),
    lambda d: d.__setitem__("stacks", {"a": 1}),
    lambda d: d.__setitem__("task_fields", ["id"]),
    lambda d: d.__setitem__("taken_at", "soon"),
])
def test_a_damaged_answer_is_one_error_before_anything_is_written(change: Any) -> None:
    doc = _wire(_many(1200))
    change(doc)
    with pytest.raises(TargetError, match="malformed diag task snapshot"):
        tasks_json.prepare(doc)
    with pytest.raises(TargetError, match="malformed diag task snapshot"):
        expand(doc)


def test_indexes_as_the_tables_read_them() -> None:
    """An index the tables accept in another spelling (2.0 for 2) gives the same text."""
    doc = _wire(_many(1200))
    doc["tasks"][10][2] = float(doc["tasks"][10][2])
    doc["tasks"][11][8] = int(doc["tasks"][11][8] or 0)
    assert _written(doc) == _as_before(doc)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_cli_says_a_damaged_long_answer_in_one_line_and_writes_nothing(fmt: str) -> None:
    """Through the CLI, against an agent that answers a compact dump of 1,200 tasks with
    one row pointing past the stacks: one line naming the agent, exit 3, stdout empty."""
    from tests.support.cli import assert_one_line_error, run_diag
    from tests.support.fake_agent import FakeAgent, answer

    doc = _wire(_many(1200))
    doc["tasks"][1100][4] = 10_000
    with FakeAgent(answer(200, json.dumps(doc).encode())) as fake:
        proc = run_diag("tasks", fake.url, "--format", fmt, "--debug", "2", "--limit", "5000", "--timeout", "10")
    line = assert_one_line_error(proc, 3)
    assert fake.url in line and "malformed diag task snapshot: IndexError" in line, line

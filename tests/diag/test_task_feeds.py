"""A task dump read as it comes (``Source.tasks_feed``): an agent's answer laid out in
slices, handed over a part at a time.  A dump of a few tasks is written as before, once it
is in.  A longer one is written as the slices come: ``--format json`` the whole answer's
lines with ``tasks`` moved up before the members known only at the end, ``--format text
--debug 2`` every task, then the summary."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from diag.documents import load_json
from diag.errors import TargetError
from diag.model.task_snapshot import TaskSnapshot
from diag.model.task_wire import decode, stream
from diag.render import formatting as fmt
from diag.render import jsonout, tasks_json, tasks_text
from tests.diag.test_task_wire import sliced_parts
from tests.diag.test_tasks_json import _as_before, _many, _wire, _written
from tests.diag.test_tasks_text_many import _task_by_task, _varied_states


def _fed(feed: Any, snap: TaskSnapshot, slice_size: int) -> None:
    for kind, part in sliced_parts(b"".join(stream(snap, slice_size, sliced=True))):
        feed(kind, part)


def _json_fed(snap: TaskSnapshot, slice_size: int) -> str:
    out = io.StringIO()
    _fed(tasks_json.Feed(out), snap, slice_size)
    return out.getvalue()


def _tasks_moved_up(whole: str) -> str:
    """A document as ``jsonout`` writes it with a long ``tasks`` list last (a member a line,
    a task a line), with ``tasks`` moved after ``schema``, ``taken_at`` and ``process``."""
    lines = whole.rstrip("\n").split("\n")
    assert lines[0] == "{" and lines[-1] == "}"
    start = next(n for n, line in enumerate(lines) if line.startswith('  "tasks": ['))
    members = [line.rstrip(",") for line in lines[1:start]]
    tasks = "\n".join(lines[start:-1])
    assert [m.split(":", 1)[0] for m in members[:3]] == ['  "schema"', '  "taken_at"', '  "process"']
    return "{\n" + ",\n".join(members[:3] + [tasks] + members[3:]) + "\n}\n"


@pytest.mark.parametrize("slice_size", [700, 2000])
@pytest.mark.parametrize("count", [3, jsonout.LONG_LIST])
def test_json_of_a_few_tasks_is_the_text_of_the_whole_answer(count: int, slice_size: int) -> None:
    plain = _wire(_many(count))
    assert _json_fed(_many(count), slice_size) == _written(plain) == _as_before(plain)


@pytest.mark.parametrize("slice_size", [1, 700, 2000])
@pytest.mark.parametrize("count", [jsonout.LONG_LIST + 1, 2500])
def test_json_of_many_tasks_is_written_as_it_comes_in_the_same_lines(count: int, slice_size: int) -> None:
    """Every task's line is the whole answer's; ``tasks`` comes fourth, not last."""
    snap = _many(count)
    text = _json_fed(snap, slice_size)
    plain = _wire(snap)
    assert text == _tasks_moved_up(_written(plain))
    assert json.loads(text) == json.loads(_as_before(plain))
    assert list(json.loads(text))[:4] == ["schema", "taken_at", "process", "tasks"]


def test_json_fed_whole_is_written_as_before() -> None:
    plain = _wire(_many(1200))
    out = io.StringIO()
    tasks_json.Feed(out)("whole", plain)
    assert out.getvalue() == _written(plain)


def test_json_broken_off_after_its_first_tasks_is_no_whole_document() -> None:
    """Damage in the third slice of 600 tasks: the first two were written (more than
    ``LONG_LIST``), the list is left open, and the error says what is wrong."""
    parts = sliced_parts(b"".join(stream(_many(3000), 600, sliced=True)))
    parts[3][1]["tasks"][5][4] = 10_000
    out = io.StringIO()
    feed = tasks_json.Feed(out)
    with pytest.raises(TargetError, match="malformed diag task snapshot: IndexError"):
        for kind, part in parts:
            feed(kind, part)
    written = out.getvalue()
    assert written.startswith('{\n  "schema": "diag.tasks/1",') and written.count("\n    {") == 1200
    with pytest.raises(json.JSONDecodeError):
        json.loads(written)


def _text_fed(snap: TaskSnapshot, slice_size: int) -> str:
    out = io.StringIO()
    _fed(tasks_text.Feed(out, "/srv"), snap, slice_size)
    return out.getvalue()


def test_text_of_one_slice_is_the_dump_as_before() -> None:
    snap = decode(_wire(_varied_states(_many(1500))))
    assert _text_fed(snap, 2000) == _task_by_task(snap, "/srv")


@pytest.mark.parametrize("slice_size", [1, 400, 1499])
def test_text_of_more_slices_is_every_task_then_the_summary(slice_size: int) -> None:
    snap = decode(_wire(_varied_states(_many(1500))))
    text = _text_fed(snap, slice_size)
    first, rest = text.split("\n", 1)
    assert first == (f"diag tasks: pid {snap.process.pid} (python {snap.process.python}), every task as the agent "
                     f"describes it, taken {fmt.timestamp(snap.taken_at)}; the summary follows them")
    summary = fmt.text_lines(tasks_text.header(snap))
    whole = _task_by_task(snap, "/srv")
    assert whole.startswith(summary)
    blocks_and_tail = whole[len(summary):]
    tail = tasks_text.footer(snap, "/srv") + tasks_text.thread_lines(snap, "/srv")
    blocks = blocks_and_tail[:len(blocks_and_tail) - len(fmt.text_lines(tail))]
    assert rest == blocks + "\n" + summary + fmt.text_lines(tail)
    assert f"{sum(t.count for t in snap.tasks)} matching" in summary and "DEADLOCK" in rest and "note: a note" in summary


@pytest.mark.parametrize("where", ["slice", "tail"])
def test_text_stops_at_a_damaged_part_and_what_was_written_stays(where: str) -> None:
    snap = decode(_wire(_many(1500)))
    parts = sliced_parts(b"".join(stream(snap, 500, sliced=True)))
    if where == "slice":
        parts[3][1]["tasks"][10][4] = 10_000  # the third slice points past the stacks
    else:
        parts[-1][1]["taken_at"] = "soon"
    out = io.StringIO()
    feed = tasks_text.Feed(out, "/srv")
    with pytest.raises(TargetError, match="malformed diag task snapshot"):
        for kind, part in parts:
            feed(kind, part)
    written = out.getvalue()
    assert "the summary follows them" in written and "matching" not in written
    assert written.count("\ntask ") == (1000 if where == "slice" else 1500)


def _sliced_text(snap: TaskSnapshot, slice_size: int) -> bytes:
    return b"".join(stream(snap, slice_size, sliced=True))


def test_the_cli_reads_a_sliced_answer_as_the_whole_one() -> None:
    """Through the CLI against an agent that answers in slices: the JSON has the whole
    answer's lines, tasks fourth, and the text dump is every task, then the summary."""
    from tests.support.cli import ROOT, run_diag
    from tests.support.fake_agent import FakeAgent, answer

    snap = decode(_wire(_many(1500)))
    with FakeAgent(answer(200, _sliced_text(snap, 500), chunk=4096)) as fake:
        as_json = run_diag("tasks", fake.url, "--format", "json", "--debug", "2", "--limit", "5000")
        as_text = run_diag("tasks", fake.url, "--format", "text", "--debug", "2", "--limit", "5000")
    assert as_json.returncode == 0 and as_json.stderr == "", as_json.stderr
    assert as_json.stdout == _tasks_moved_up(_written(_wire(snap)))
    assert as_text.returncode == 0 and as_text.stderr == "", as_text.stderr
    out = io.StringIO()
    feed = tasks_text.Feed(out, str(ROOT))
    for kind, part in sliced_parts(_sliced_text(snap, 500), load_json):  # read as the CLI reads an answer
        feed(kind, part)
    assert as_text.stdout == out.getvalue()
    assert as_text.stdout.count("\ntask ") == 1500 and "the summary follows them" in as_text.stdout


@pytest.mark.parametrize("fmt_name", ["json", "text"])
def test_the_cli_on_a_sliced_answer_damaged_or_cut_before_its_end(fmt_name: str) -> None:
    """A slice pointing past the stacks, or an answer that ends (cleanly) before its last
    line: one line naming the agent, exit 3.  The JSON writes nothing; the text keeps the
    slices before the damage (two of 500 tasks), and no summary."""
    from tests.support.cli import run_diag
    from tests.support.fake_agent import FakeAgent, answer

    snap = decode(_wire(_many(1500)))
    lines = _sliced_text(snap, 500).split(b"\n")
    damaged = json.loads(lines[3][1:])
    damaged["tasks"][10][4] = 10_000
    broken = b"\n".join([*lines[:3], b"," + json.dumps(damaged).encode(), *lines[4:]])
    cut = b"\n".join(lines[:3]) + b"\n"
    for body, says in ((broken, "malformed diag task snapshot: IndexError"),
                       (cut, "the answer stops after 2 slices, without its last line")):
        with FakeAgent(answer(200, body)) as fake:
            proc = run_diag("tasks", fake.url, "--format", fmt_name, "--debug", "2", "--limit", "5000")
        assert proc.returncode == 3, (proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(f"diag: error: {fake.url}: ") and says in proc.stderr, proc.stderr
        if fmt_name == "json":
            assert proc.stdout == ""
        else:
            assert proc.stdout.count("\ntask ") == 1000 and "matching" not in proc.stdout, proc.stdout[-500:]


def test_time_spent_writing_is_not_the_agents() -> None:
    """A reader that takes 0.5 s per slice (a pager, a slow pipe) under a 1 s --timeout:
    the answer itself arrives at once, so the dump is not given up."""
    import time

    from diag.analysis.task_groups import TaskQuery
    from diag.sources.source import AgentSource
    from tests.support.fake_agent import FakeAgent, answer

    snap = decode(_wire(_many(1500)))
    kinds: list[str] = []

    def slow(kind: str, part: dict[str, Any]) -> None:
        kinds.append(kind)
        time.sleep(0.5)

    with FakeAgent(answer(200, _sliced_text(snap, 500))) as fake:
        AgentSource(fake.url, timeout=1.0).tasks_feed(TaskQuery(debug=2, limit=5000), slow)
    assert kinds == ["head", "slice", "slice", "slice", "tail"]

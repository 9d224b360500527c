"""A task dump read as it comes (``Source.tasks_feed``): an agent's answer laid out in
slices, handed over a part at a time.  ``--format json`` writes the very text of the whole
answer; ``--format text --debug 2`` writes one slice's dump as before, and a longer one
task by task as the slices come, the summary after them."""

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


@pytest.mark.parametrize("slice_size", [700, 2000])
@pytest.mark.parametrize("count", [3, jsonout.LONG_LIST, jsonout.LONG_LIST + 1, 2500])
def test_json_fed_a_slice_at_a_time_is_the_text_of_the_whole_answer(count: int, slice_size: int) -> None:
    snap = _many(count)
    feed = tasks_json.Feed()
    _fed(feed, snap, slice_size)
    assert feed.prepared is not None
    out = io.StringIO()
    tasks_json.write(feed.prepared, out)
    plain = _wire(snap)
    assert out.getvalue() == _written(plain) == _as_before(plain)


def test_json_fed_whole_is_prepared_as_before() -> None:
    plain = _wire(_many(1200))
    feed = tasks_json.Feed()
    feed("whole", plain)
    assert feed.prepared is not None
    out = io.StringIO()
    tasks_json.write(feed.prepared, out)
    assert out.getvalue() == _written(plain)


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
    """Through the CLI against an agent that answers in slices: the JSON is the text of the
    whole answer, and the text dump is every task, then the summary."""
    from tests.support.cli import ROOT, run_diag
    from tests.support.fake_agent import FakeAgent, answer

    snap = decode(_wire(_many(1500)))
    with FakeAgent(answer(200, _sliced_text(snap, 500), chunk=4096)) as fake:
        as_json = run_diag("tasks", fake.url, "--format", "json", "--debug", "2", "--limit", "5000")
        as_text = run_diag("tasks", fake.url, "--format", "text", "--debug", "2", "--limit", "5000")
    assert as_json.returncode == 0 and as_json.stderr == "", as_json.stderr
    assert as_json.stdout == _written(_wire(snap))
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

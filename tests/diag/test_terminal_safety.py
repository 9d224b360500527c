"""What the target names reaches the terminal as text to read, never as something that acts.

A stand-alone program (run under ``diag run``) names its tasks, its coroutine, its
primitives (through an attribute, a module global and dict keys) and a class with
newlines, carriage returns, ANSI escapes, BEL, NUL, a C1 control, rich markup, a
bidirectional override and a lone surrogate, and leaves tasks sleeping ``math.inf`` and
``1e300`` seconds.  Every command in every format, run as a CLI subprocess, answers
without a traceback; text and tables show each control character as an escape, JSON
parses and encodes as UTF-8.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from diag.render import formatting as fmt
from diag.render import leftovers_text, tasks_table, tasks_text
from diag.analysis.leftovers import LeftoverReport
from diag.model.task_snapshot import Wait
from tests.diag.snapshots import SLEEP, snapshot, task
from tests.support.cli import run_diag
from tests.support.programs import DiagRun

EVIL = "evil\nDEADLOCK: fake\r\x1b[31m\x07\x00\x9b[/bold][bold red]\u202e\ud800"
#: How EVIL reads once escaped for text and tables.
SHOWN = r"evil\nDEADLOCK: fake\r\x1b[31m\x07\x00\x9b[/bold][bold red]\u202e\ud800"
#: The same, read from an agent: the CLI's JSON reader replaces a lone surrogate with U+FFFD.
SHOWN_FROM_AGENT = SHOWN.replace(r"\ud800", "\ufffd")
EVIL_TYPE = "Evil\nDEADLOCK: fake\x1b[31m[/bold]"

PROGRAM = r'''
import asyncio
import math

EVIL = "evil\nDEADLOCK: fake\r\x1b[31m\x07\x00\x9b[/bold][bold red]\u202e\ud800"


class Evil:
    pass


Evil.__name__ = Evil.__qualname__ = "Evil\nDEADLOCK: fake\x1b[31m[/bold]"


class Holder:
    pass


HOLDER = Holder()
REGISTRY = {}
KEEP = []


async def wait_on(prim):
    async with prim:
        await asyncio.sleep(3600)


async def take(lock):
    await lock.acquire()  # and finish holding it: a leaked permit


async def evil_coro(event):
    await event.wait()

evil_coro.__code__ = evil_coro.__code__.replace(co_name=EVIL, co_qualname=EVIL)
evil_coro.__qualname__ = EVIL


async def main():
    setattr(HOLDER, EVIL, asyncio.Lock())
    globals()[EVIL + "G"] = asyncio.Semaphore(1)
    REGISTRY[EVIL + "K"] = asyncio.Lock()
    REGISTRY[EVIL + "L"] = asyncio.Lock()
    REGISTRY["objects" + EVIL] = [Evil() for _ in range(3000)]
    for prim in (getattr(HOLDER, EVIL), globals()[EVIL + "G"], REGISTRY[EVIL + "K"]):
        for i in range(2):
            KEEP.append(asyncio.create_task(wait_on(prim), name=f"{EVIL}-{i}"))
    await asyncio.create_task(take(REGISTRY[EVIL + "L"]), name=EVIL + "taker")
    KEEP.append(asyncio.create_task(evil_coro(asyncio.Event()), name=EVIL + "forgotten"))
    KEEP.append(asyncio.create_task(asyncio.sleep(math.inf), name="forever"))
    KEEP.append(asyncio.create_task(asyncio.sleep(1e300), name="huge"))
    await asyncio.sleep(0.2)
    print("ready", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
'''

#: Raw controls that must never reach stdout (a newline only ends lines of diag's own).
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
FORMATS = ("text", "table", "json")
URL = "{url}"
#: Each command's arguments; two URLs give the view over several processes.
COMMANDS = {
    "tasks-debug1": ("tasks", URL, "--debug", "1"),
    "tasks-debug2": ("tasks", URL, "--debug", "2"),
    "sync": ("sync", URL),
    "leaks": ("leaks", URL),
    "objects": ("objects", URL, "--filter", "Evil"),
    "backrefs": ("objects", URL, "--type", f"__main__.{EVIL_TYPE}", "--backrefs"),
    "tasks-many": ("tasks", URL, URL, "--debug", "2"),
    "sync-many": ("sync", URL, URL),
    "leaks-many": ("leaks", URL, URL),
}


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def program(request: pytest.FixtureRequest) -> Iterator[DiagRun]:
    source = PROGRAM
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
        source = source.replace("asyncio.run(main())", "import uvloop\nuvloop.run(main())")
    with DiagRun(source) as run:
        run.loop_name = request.param  # type: ignore[attr-defined]
        deadline = time.monotonic() + 20
        while "ready" not in run.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "ready" in run.output(), run.output()
        yield run
        assert run.proc is not None and run.proc.poll() is None, run.output()


def diag_out(*args: str) -> str:
    proc = run_diag(*args, "--timeout", "10", timeout=60)
    assert proc.returncode in (0, 1), (args, proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def assert_nothing_raw(out: str) -> None:
    raw = RAW.search(out)
    assert raw is None, (raw, out[max(0, raw.start() - 200):raw.end() + 50] if raw else "")
    assert not re.search(r"[\ud800-\udfff]", out)
    assert not any(line.startswith("DEADLOCK: fake") for line in out.splitlines()), out


def strings(data: object) -> Iterator[str]:
    """Every string of a JSON document, keys too."""
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield key
            yield from strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from strings(value)


@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_shows_hostile_names_escaped(program: DiagRun, command: str, form: str) -> None:
    out = diag_out(*(program.url if a == URL else a for a in COMMANDS[command]), "--format", form)
    assert_nothing_raw(out)
    if form == "json":
        out.encode("utf-8")  # strict: no surrogate survives
        # the names are there, whole, with their controls as data; the surrogate replaced
        wanted = EVIL_TYPE if command in ("objects", "backrefs") else EVIL.replace("\ud800", "\ufffd")
        parsed = list(strings(json.loads(out)))
        assert any(wanted in s for s in parsed), command
        assert not any(re.search("[\ud800-\udfff]", s) for s in parsed), command  # none escaped either
    else:
        assert r"\x1b[31m" in out, out  # shown, escaped
        if form == "text" and command not in ("objects", "backrefs"):
            assert SHOWN_FROM_AGENT in out, out  # every control shown as its escape, in order


@pytest.mark.parametrize("debug", ("1", "2"))
def test_endless_and_huge_sleeps_in_words(program: DiagRun, debug: str) -> None:
    out = diag_out("tasks", program.url, "--debug", debug, "--format", "text")
    if program.loop_name == "uvloop":  # type: ignore[attr-defined]
        pytest.skip("uvloop's timers are not read: a sleep's time left is not known there")
    if debug == "2":
        assert "sleep (forever left)" in out and "sleep (over 100 years left)" in out, out
    else:  # one group: its representative's time left
        assert "sleep (forever left)" in out or "sleep (over 100 years left)" in out, out


def test_top_once_shows_hostile_names_escaped(program: DiagRun) -> None:
    out = diag_out("top", program.url, "--once", "--idle")
    assert_nothing_raw(out)
    assert r"\x1b[31m" in out, out


def test_check_text_and_junit_show_hostile_names_escaped(program: DiagRun, tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    junit = tmp_path / "check.xml"
    proc = run_diag("check", program.url, "--settle", "0", "--junit", str(junit), "--timeout", "10", timeout=60)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # everything is new without a baseline
    assert "Traceback" not in proc.stderr, proc.stderr
    assert_nothing_raw(proc.stdout)
    assert r"\x1b[31m" in proc.stdout, proc.stdout
    failures = "\n".join(f.text or "" for f in ET.parse(junit).getroot().iter("failure"))  # well-formed XML
    assert_nothing_raw(failures)
    assert r"\x1b[31m" in failures, failures


# -- the helpers, on hand-built values ------------------------------------------------------
@pytest.mark.parametrize("seconds, words", [
    (math.inf, "forever"), (-math.inf, "unknown"), (math.nan, "unknown"), (1e300, "over 100 years"),
    (3 * 365.25 * 86400, "3.0 years"), (7300.0, "2h01m"), (0.4, "0.4s"), (-5.0, "-5.0s"), (None, "?"),
])
def test_duration_in_words(seconds: float | None, words: str) -> None:
    assert fmt.duration(seconds) == words


@pytest.mark.parametrize("t", [math.inf, -math.inf, math.nan, 1e300, -1e300])
def test_timestamp_out_of_range_is_unknown(t: float) -> None:
    assert fmt.timestamp(t) == "unknown"
    assert fmt.timestamp(1_800_000_000.0) == "2027-01-15 08:00:00 UTC"


def test_safe_text_escapes_every_control_and_keeps_the_rest() -> None:
    assert fmt.safe_text(EVIL) == SHOWN
    assert fmt.safe_text("caf\u00e9 \U0001f600 tab\there") == "caf\u00e9 \U0001f600 tab\\there"
    assert fmt.text_lines(["a\nb", "c"]) == "a\\nb\nc\n"


def test_json_text_replaces_surrogates_only() -> None:
    text = fmt.json_text({EVIL: ["\U0001f600", "ok\ud800"]}, indent=None)
    text.encode("utf-8")
    assert json.loads(text) == {EVIL.replace("\ud800", "\ufffd"): ["\U0001f600", "ok\ufffd"]}
    assert fmt.json_text({"a": "\U0001f600"}, indent=None) == '{"a": "\\ud83d\\ude00"}'  # pairs kept


def test_prometheus_label_values_encode() -> None:
    from diag.analysis.metrics_model import Family, Sample
    from diag.render.prometheus import exposition_text

    family = Family("diag_x", "gauge", "help", ("primitive",), (Sample((("primitive", EVIL),), 1.0),))
    text = exposition_text([family])
    assert 'primitive="evil\\nDEADLOCK: fake' in text and "\ufffd" in text  # the format escapes the newline
    assert not any(line.startswith("DEADLOCK") for line in text.splitlines())


def test_table_cell_is_never_markup() -> None:
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(fmt.cell("[/bold][bold red]x\x1b[31m"))
    assert buf.getvalue() == "[/bold][bold red]x\\x1b[31m\n"


def hostile_snapshot() -> object:
    forever = task(7, name=EVIL, stack=(SLEEP,), coro=EVIL, wait=Wait("sleep", "sleep", seconds=math.nan,
                                                                  time_left=math.inf))
    snap = snapshot(forever)
    return snap.__class__(**{**snap.__dict__, "taken_at": math.inf})


def test_renderers_survive_endless_numbers_and_hostile_names() -> None:
    snap = hostile_snapshot()
    out = io.StringIO()
    tasks_text.render(snap, out)  # type: ignore[arg-type]
    assert "taken unknown" in out.getvalue() and "sleep (forever left)" in out.getvalue()
    assert_nothing_raw(out.getvalue())
    buf = io.StringIO()
    tasks_table.render(snap, Console(file=buf, width=300, color_system=None))  # type: ignore[arg-type]
    assert_nothing_raw(buf.getvalue())
    message = leftovers_text.render(LeftoverReport(tasks=snap), "test_x")  # type: ignore[arg-type]
    assert_nothing_raw(message)
    assert "forever left" in message

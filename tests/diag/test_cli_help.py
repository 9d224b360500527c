"""``--help`` explains each command: placeholders people read, every default, summaries
never cut short, and examples at the end that are real command lines."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from diag.cli.app import app, main, version
from tests.support.cli import diag_env, run_diag
from tests.support.target import free_port

COMMANDS = ["tasks", "profile", "objects", "sync", "leaks", "check", "top", "attach", "detach", "run"]
#: How typer would name a Python type in help: ``<float>``, ``<list[str]>``, ``<path>``.
PYTHON_TYPE = re.compile(r"<(?:float|int|str|bool|path|list|dict|tuple|file|text|choice)\b", re.IGNORECASE)
#: An option that takes no value: ``--dead``, ``--proof / --no-proof``, ``-V, --version``.
FLAG = re.compile(r"^(?:-\w, )?--[\w-]+(?: / --[\w-]+)?$")


def help_text(*command: str, columns: int = 100) -> str:
    proc = run_diag(*command, "--help", env=diag_env(COLUMNS=str(columns)))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout


def section(text: str, heading: str) -> list[str]:
    """The lines of one help section, up to the next heading (a line not indented)."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    out = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        out.append(line)
    return out


def entries(lines: list[str]) -> list[tuple[str, str]]:
    """(name column, whole help text) of each row of a definition list."""
    rows: list[tuple[str, str]] = []
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 2:
            name, _, rest = line.strip().partition("  ")
            rows.append((name.strip(), rest.strip()))
        elif rows:
            rows[-1] = (rows[-1][0], f"{rows[-1][1]} {line.strip()}".strip())
    return rows


def examples_of(text: str) -> list[str]:
    return [line.strip() for line in section(text, "Examples:") if line.strip().startswith("diag ")]


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Every command's help, each from a real ``diag CMD --help`` process."""
    return {command: help_text(command) for command in COMMANDS}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_ends_with_examples(helps: dict[str, str], command: str) -> None:
    text = helps[command]
    assert "Examples:" in text
    tail = text[text.index("Examples:"):]
    assert "Options:" not in tail and "Arguments:" not in tail  # the examples come last
    lines = examples_of(text)
    assert 2 <= len(lines) <= 4, lines
    assert all(line.startswith("diag ") for line in lines)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_placeholders_not_python_types(helps: dict[str, str], command: str) -> None:
    text = helps[command]
    assert not PYTHON_TYPE.search(text), PYTHON_TYPE.search(text)
    usage = text.splitlines()[0]
    assert "{" not in usage, usage
    if command in ("tasks", "sync", "leaks"):
        assert usage.endswith("[TARGET]..."), usage
    elif command in ("attach", "detach"):
        assert usage.endswith(" PID"), usage
    elif command != "run":
        assert usage.endswith(" TARGET"), usage


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_shows_its_default(helps: dict[str, str], command: str) -> None:
    rows = entries(section(helps[command], "Options:"))
    assert rows
    for name, text in rows:
        if name == "--help":
            continue
        assert "[default: " in text, (name, text)
        if FLAG.match(name):
            continue
        metavar = name.split()[-1]
        assert metavar == metavar.upper(), (name, metavar)  # SECONDS, N, FILE, REGEX, FORMAT


@pytest.mark.parametrize("command", COMMANDS)
def test_defaults_read_as_people_write_them(helps: dict[str, str], command: str) -> None:
    for name, text in entries(section(helps[command], "Options:")):
        if name == "--help":
            continue
        default = text.rsplit("[default: ", 1)[1].removesuffix("]")
        assert not default.startswith("("), (name, default)  # off, not (off); 0, not (0)
        assert not re.fullmatch(r"\d+\.0", default), (name, default)  # 10, not 10.0


def test_defaults_of_tasks_options() -> None:
    rows = dict(entries(section(help_text("tasks"), "Options:")))
    assert rows["--min-wait SECONDS"].endswith("[default: 0]")
    assert rows["--timeout SECONDS"].endswith("[default: 10]")
    assert rows["--dead"].endswith("[default: off]")
    assert rows["-f, --format FORMAT"].endswith("[default: table on a terminal, else text]")


@pytest.mark.parametrize("command", ["tasks", "sync", "leaks", "profile", "objects", "top", "check"])
def test_target_forms_are_the_ones_accepted(helps: dict[str, str], command: str) -> None:
    rows = dict(entries(section(helps[command], "Arguments:")))
    name = "TARGET..." if command in ("tasks", "sync", "leaks") else "TARGET"
    text = rows[name]
    for form in ("http://HOST:PORT", "HOST:PORT", "unix:/PATH", "pid:N"):
        assert form in text, (form, text)
    # a saved file where the command reads one; diag top watches live processes only
    assert ("saved with -o FILE" in text) == (command != "top"), text
    if command == "top":
        assert "a saved file has nothing to refresh" in text


@pytest.mark.parametrize("columns", [60, 80, 160])
def test_root_help_lists_every_command_with_a_whole_summary(columns: int) -> None:
    text = help_text(columns=columns)
    rows = dict(entries(section(text, "Commands:")))
    assert list(rows) == COMMANDS
    for name, summary in rows.items():
        assert summary and not summary.endswith("..."), (name, summary)
        assert summary.endswith("."), (name, summary)
    assert len(examples_of(text)) >= 2
    assert not PYTHON_TYPE.search(text)


def _dead_pid() -> int:
    """The id of a process that has just ended (reused within the test: unlikely)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _all_examples() -> list[str]:
    out = io.StringIO()
    found = []
    for command in [[], *[[c] for c in COMMANDS]]:
        with contextlib.redirect_stdout(out):
            assert main([*command, "--help"]) == 0
        found += examples_of(out.getvalue())
        out.seek(0)
        out.truncate()
    return sorted(set(found))


EXAMPLES = _all_examples()


@pytest.mark.parametrize("line", EXAMPLES)
def test_every_example_parses_against_its_command(line: str) -> None:
    argv = shlex.split(line)[1:]
    root = typer.main.get_command(app)
    with root.make_context("diag", list(argv), resilient_parsing=False) as ctx:
        sub = root.get_command(ctx, argv[0])  # type: ignore[attr-defined]
        assert sub is not None, argv
        with sub.make_context(argv[0], argv[1:], parent=ctx) as sub_ctx:
            assert sub_ctx.params is not None


@pytest.mark.parametrize("line", [e for e in EXAMPLES if not (e.startswith("diag run ") and " -- " in e)])
def test_every_example_runs_up_to_its_target(line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run for real against nothing: every address made unreachable, every process one that
    ended, every path under a fresh directory.  The command gets as far as its target (exit 3),
    so its options were all accepted (a usage error is exit 2)."""
    port = free_port()
    text = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", line)
    text = re.sub(r"\b4129\b", str(_dead_pid()), text)
    text = text.replace("/tmp/", f"{tmp_path}/")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "diag-baseline.json").write_text('{"schema": "diag.check-baseline/1", "groups": {}}')
    (tmp_path / "warmup.txt").write_text("GET /fixed/lock x2\n")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(shlex.split(text)[1:])
    if "--print-env" in text:
        assert code == 0 and "export DIAG_AGENT=" in out.getvalue(), err.getvalue()
        return
    assert code == 3, (text, code, err.getvalue())
    assert err.getvalue().startswith("diag: error: ") and err.getvalue().count("\n") == 1, err.getvalue()


def test_version() -> None:
    for flag in ("--version", "-V"):
        proc = run_diag(flag)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert re.fullmatch(r"diag \d+\.\d+\.\d+\S*\n", proc.stdout), proc.stdout
        assert proc.stdout == f"diag {version()}\n"


def test_version_is_the_installed_package_version() -> None:
    from importlib import metadata

    assert version() == metadata.version("diag")

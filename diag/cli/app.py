"""The ``diag`` command: wires each command module into one typer app.

``main(argv) -> int`` is the whole contract: 0 clean, 1 findings, 2 usage,
3 target unreachable or unusable.  stdout carries only the requested output; errors
and hints go to stderr as one line, never a traceback.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import typer

from diag.cli.output import BufferedOutput, buffered_stdout, silence_stdout
from diag.cli.help_layout import Command, Group, examples
from diag.errors import EXIT_USAGE, DiagError

EXAMPLES = (
    ("what every task of a service waits on (the agent's address)", "diag tasks http://127.0.0.1:8080"),
    ("the verdicts, exit 1 on a leak: for CI", "diag leaks http://127.0.0.1:8080"),
    ("start a program with the agent in it", "diag run -- python app.py"),
    ("put the agent into a process already running", "diag attach 4129"),
)


@dataclass(frozen=True)
class Entry:
    """One command: the module that defines it, imported only when the command is used,
    and its one-line summary, kept here so that ``diag --help`` imports none of them."""

    module: str
    function: str
    summary: str
    examples: str = "EXAMPLES"
    settings: dict[str, Any] = field(default_factory=dict)


COMMANDS: dict[str, Entry] = {
    "tasks": Entry("diag.cli.tasks_cmd", "tasks",
                   "Every pending task: its await stack, what it waits on, how long, who created it."),
    "profile": Entry("diag.cli.profile_cmd", "profile",
                     "Where the event loop's thread spends its time: by function or by task."),
    "objects": Entry("diag.cli.objects_cmd", "objects",
                     "Live objects by type, the types that grow, and why one object is alive."),
    "sync": Entry("diag.cli.sync_cmd", "sync",
                  "Every live Lock, Semaphore, Condition, Event and Queue: holders and waiters."),
    "leaks": Entry("diag.cli.leaks_cmd", "leaks",
                   "The verdicts: waits that will never end and why; exit 1 on a --fail-on finding."),
    "check": Entry("diag.cli.check_cmd", "check",
                   "For CI: fail (exit 1) on leaks that are new since a committed baseline."),
    "top": Entry("diag.cli.top_cmd", "top",
                 "A live view, refreshed every second: tasks, stuck groups, primitives, loop lag."),
    "attach": Entry("diag.cli.attach_cmd", "attach",
                    "Put the diag agent into a running Python process and print its address.",
                    examples="ATTACH_EXAMPLES"),
    "detach": Entry("diag.cli.attach_cmd", "detach",
                    "Stop the agent in a running process and remove what it installed.",
                    examples="DETACH_EXAMPLES"),
    "run": Entry("diag.cli.run_cmd", "run",
                 "Run a Python program with the diag agent in it; its address goes to stderr.",
                 settings={"context_settings": {"allow_extra_args": True, "ignore_unknown_options": True}}),
}


@functools.cache
def load_command(name: str) -> Any:
    """The click command of ``name``, built from its module on first use."""
    entry = COMMANDS[name]
    module = importlib.import_module(entry.module)
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    one.command(name, cls=Command, short_help=entry.summary, epilog=examples(getattr(module, entry.examples)),
                **entry.settings)(getattr(module, entry.function))
    return typer.main.get_command(one)


class _Commands(Mapping[str, Any]):
    """The commands by name, each loaded when it is looked up (click and typer only ever
    look up the one that runs; the names alone serve ``--help`` and typo suggestions)."""

    def __getitem__(self, name: str) -> Any:
        if name not in COMMANDS:
            raise KeyError(name)
        return load_command(name)

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class LazyGroup(Group):
    """The ``diag`` group: a command's module is imported only when that command runs or
    shows its own help; ``diag --help`` lists every command from ``COMMANDS`` alone."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _Commands()  # type: ignore[assignment]

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry.summary) for name, entry in COMMANDS.items()])


app = typer.Typer(
    name="diag",
    cls=LazyGroup,
    help="Find why an asyncio service hangs, leaks or slows down.",
    epilog=examples(EXAMPLES) + "\n\nA TARGET is http://HOST:PORT, HOST:PORT, unix:/PATH, pid:N or a file\n"
                                "saved with -o FILE; 'diag COMMAND --help' says which forms it takes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def version() -> str:
    """This diag's version: the installed package's, else the source tree's."""
    from importlib import metadata  # its import costs more than the rest of ``diag --help``

    try:
        return metadata.version("diag")
    except metadata.PackageNotFoundError:
        import diag
        return str(getattr(diag, "__version__", "unknown"))


def _print_version(value: bool) -> None:
    if value:
        print(f"diag {version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: Optional[bool] = typer.Option(None, "--version", "-V", is_eager=True, callback=_print_version,
                                                help="print diag's version and exit"),
) -> None:
    """Find why an asyncio service hangs, leaks or slows down."""


def _is_cli_exception(err: BaseException) -> bool:
    """Click's (or typer's bundled click's) usage and parameter errors, found by shape."""
    return hasattr(err, "format_message") and isinstance(getattr(err, "exit_code", None), int)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command with stdout written through one buffered writer (see
    ``diag.cli.output``), flushed before the exit code is returned: a write that fails
    there is reported like one that fails midway."""
    with buffered_stdout() as out:
        code = _main(argv, out)
        try:
            out.flush()
        except BrokenPipeError:  # the reader left (| head): what it did not take is dropped
            out.discard()
            silence_stdout(out.stream)
            return 0
        except OSError as err:
            out.discard()
            silence_stdout(out.stream)
            return _unwritable(err)
    return code


def _unwritable(err: OSError) -> int:
    """stdout itself failed (a full disk, a closed terminal): one line, no traceback."""
    _say(f"diag: error: cannot write the output: {err.strerror or err}")
    return EXIT_USAGE


def _say(line: str) -> None:
    """One line on the stderr console (rich, imported only when there is something to say)."""
    from diag.cli.console import stderr

    stderr.print(line, markup=False, highlight=False)


def _null_in(command: Any, args: list[str]) -> str:
    """The usage error for an argument holding a NUL character (only ``main(argv)`` can get
    one: ``exec`` cannot), or "".  Said here because typer before 0.29 lets a path option
    raise ``ValueError`` from ``os.stat``."""
    for n, arg in enumerate(args):
        if "\x00" not in arg:
            continue
        flag = arg.partition("=")[0] if arg.startswith("--") and "=" in arg else (
            args[n - 1] if n and args[n - 1].startswith("-") else "")
        sub = getattr(command, "commands", {}).get(args[0]) if args else None
        where = f"diag {args[0]}" if sub is not None else "diag"
        names = next((" / ".join(f"'{o}'" for o in sorted(p.opts, key=len, reverse=True))
                      for p in getattr(sub, "params", ()) if flag and flag in p.opts), f"'{flag}'" if flag else "")
        what = f"Invalid value for {names}" if names else "Invalid argument"
        return f"diag: error: {what}: embedded null character (try '{where} --help')"
    return ""


def _main(argv: Sequence[str] | None, out: BufferedOutput) -> int:
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    null = _null_in(command, args)
    if null:
        _say(null)
        return EXIT_USAGE
    try:
        result = command.main(args=args, prog_name="diag", standalone_mode=False)
    except DiagError as err:
        _say(f"diag: error: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        out.discard()
        silence_stdout(out.stream)
        return 0
    except OSError as err:
        out.discard()
        silence_stdout(out.stream)
        return _unwritable(err)
    except Exception as err:
        name = type(err).__name__
        if name == "Exit":
            return int(getattr(err, "exit_code", 0))
        if name == "Abort":
            _say("diag: aborted")
            return 130
        if _is_cli_exception(err):
            ctx = getattr(err, "ctx", None)
            where = f"diag {ctx.info_name}" if ctx is not None and ctx.info_name not in (None, "diag") else "diag"
            message = err.format_message()  # type: ignore[attr-defined]
            if name == "NoArgsIsHelpError":  # bare "diag": the help text, as a usage error
                _say(message)
                return EXIT_USAGE
            _say(f"diag: error: {message} (try '{where} --help')")
            return EXIT_USAGE
        raise
    return int(result) if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())

"""The ``diag`` command: wires each command module into one typer app.

``main(argv) -> int`` is the whole contract: 0 clean, 1 findings, 2 usage,
3 target unreachable or unusable.  stdout carries only the requested output; errors
and hints go to stderr as one line, never a traceback.
"""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Any, Optional, Sequence

import typer

from diag.cli import leaks_cmd, run_cmd, sync_cmd, tasks_cmd
from diag.cli import objects_cmd, profile_cmd
from diag.cli import attach_cmd, check_cmd
from diag.cli import top_cmd
from diag.cli.console import stderr
from diag.cli.output import BufferedOutput, buffered_stdout, silence_stdout
from diag.cli.help_layout import Command, Group, examples
from diag.errors import EXIT_USAGE, DiagError

EXAMPLES = (
    ("what every task of a service waits on (the agent's address)", "diag tasks http://127.0.0.1:8080"),
    ("the verdicts, exit 1 on a leak: for CI", "diag leaks http://127.0.0.1:8080"),
    ("start a program with the agent in it", "diag run -- python app.py"),
    ("put the agent into a process already running", "diag attach 4129"),
)

app = typer.Typer(
    name="diag",
    cls=Group,
    help="Find why an asyncio service hangs, leaks or slows down.",
    epilog=examples(EXAMPLES) + "\n\nA TARGET is http://HOST:PORT, HOST:PORT, unix:/PATH, pid:N or a file\n"
                                "saved with -o FILE; 'diag COMMAND --help' says which forms it takes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _command(name: str, function: Any, summary: str, pairs: Sequence[tuple[str, str]], **settings: Any) -> None:
    """Register one command, with its one-line summary (never cut short in ``diag --help``)
    and its examples."""
    app.command(name, cls=Command, short_help=summary, epilog=examples(pairs), **settings)(function)


_command("tasks", tasks_cmd.tasks, tasks_cmd.SUMMARY, tasks_cmd.EXAMPLES)
_command("profile", profile_cmd.profile, profile_cmd.SUMMARY, profile_cmd.EXAMPLES)
_command("objects", objects_cmd.objects, objects_cmd.SUMMARY, objects_cmd.EXAMPLES)
_command("sync", sync_cmd.sync, sync_cmd.SUMMARY, sync_cmd.EXAMPLES)
_command("leaks", leaks_cmd.leaks, leaks_cmd.SUMMARY, leaks_cmd.EXAMPLES)
_command("check", check_cmd.check, check_cmd.SUMMARY, check_cmd.EXAMPLES)
_command("top", top_cmd.top, top_cmd.SUMMARY, top_cmd.EXAMPLES)
_command("attach", attach_cmd.attach, attach_cmd.ATTACH_SUMMARY, attach_cmd.ATTACH_EXAMPLES)
_command("detach", attach_cmd.detach, attach_cmd.DETACH_SUMMARY, attach_cmd.DETACH_EXAMPLES)
_command("run", run_cmd.run, run_cmd.SUMMARY, run_cmd.EXAMPLES,
         context_settings={"allow_extra_args": True, "ignore_unknown_options": True})


def version() -> str:
    """This diag's version: the installed package's, else the source tree's."""
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
    stderr.print(f"diag: error: cannot write the output: {err.strerror or err}", markup=False, highlight=False)
    return EXIT_USAGE


def _main(argv: Sequence[str] | None, out: BufferedOutput) -> int:
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = command.main(args=args, prog_name="diag", standalone_mode=False)
    except DiagError as err:
        stderr.print(f"diag: error: {err}", markup=False, highlight=False)
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
            stderr.print("diag: aborted", markup=False)
            return 130
        if _is_cli_exception(err):
            ctx = getattr(err, "ctx", None)
            where = f"diag {ctx.info_name}" if ctx is not None and ctx.info_name not in (None, "diag") else "diag"
            message = err.format_message()  # type: ignore[attr-defined]
            if name == "NoArgsIsHelpError":  # bare "diag": the help text, as a usage error
                stderr.print(message, markup=False, highlight=False)
                return EXIT_USAGE
            stderr.print(f"diag: error: {message} (try '{where} --help')", markup=False, highlight=False)
            return EXIT_USAGE
        raise
    return int(result) if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())

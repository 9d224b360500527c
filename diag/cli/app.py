"""The ``diag`` command: wires each command module into one typer app.

``main(argv) -> int`` is the whole contract: 0 clean, 1 findings, 2 usage,
3 target unreachable or unusable.  stdout carries only the requested output; errors
and hints go to stderr as one line, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Sequence

import typer

from diag.cli import leaks_cmd, run_cmd, sync_cmd, tasks_cmd
from diag.cli import objects_cmd, profile_cmd
from diag.cli import attach_cmd, check_cmd
from diag.cli import top_cmd
from diag.cli.console import stderr
from diag.errors import EXIT_USAGE, DiagError

app = typer.Typer(
    name="diag",
    help="Find why an asyncio service hangs, leaks or slows down.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("tasks")(tasks_cmd.tasks)
app.command("profile")(profile_cmd.profile)
app.command("objects")(objects_cmd.objects)
app.command("sync")(sync_cmd.sync)
app.command("leaks")(leaks_cmd.leaks)
app.command("check")(check_cmd.check)
app.command("top")(top_cmd.top)
app.command("attach")(attach_cmd.attach)
app.command("detach")(attach_cmd.detach)
app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(run_cmd.run)


@app.callback()
def _root() -> None:
    """Find why an asyncio service hangs, leaks or slows down."""


def _is_cli_exception(err: BaseException) -> bool:
    """Click's (or typer's bundled click's) usage and parameter errors, found by shape."""
    return hasattr(err, "format_message") and isinstance(getattr(err, "exit_code", None), int)


def main(argv: Sequence[str] | None = None) -> int:
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
        return 0
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

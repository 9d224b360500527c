"""How ``--help`` reads: placeholders people know (``TARGET``, ``SECONDS``), never Python
type names, and every command closing on examples that can be pasted as they are.

Usage::

    app.command("tasks", cls=Command, epilog=examples(tasks_cmd.EXAMPLES))(tasks_cmd.tasks)
"""

from __future__ import annotations

from typing import Any, Sequence

from typer.core import TyperCommand, TyperGroup

#: The heading of the examples section; the ``--help`` tests look for it.
EXAMPLES_HEADING = "Examples:"


def examples(pairs: Sequence[tuple[str, str]]) -> str:
    """The epilog of a command: each example a ``#`` comment saying what it does, then
    the command line itself, so a line can be copied into a shell as it is."""
    lines = [EXAMPLES_HEADING]
    for what, line in pairs:
        lines += [f"  # {what}", f"  {line}"]
    return "\n".join(lines)


def _write_epilog(epilog: str | None, formatter: Any) -> None:
    """The epilog line for line: click would re-wrap it into one paragraph."""
    if not epilog:
        return
    formatter.write_paragraph()
    for line in epilog.splitlines():
        formatter.write(f"{' ' * formatter.current_indent}{line}\n" if line else "\n")


def _argument_records(command: Any, ctx: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(arguments, options) help rows; an argument is named by its metavar alone, where
    typer would add its Python type (``TARGET <list[str]>``)."""
    args: list[tuple[str, str]] = []
    opts: list[tuple[str, str]] = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            name = param.metavar or (param.name or "").upper()
            args.append((name + ("..." if param.nargs != 1 and not name.endswith("...") else ""), record[1]))
        elif param.param_type_name == "option":
            opts.append((record[0], _natural_default(param, record[1])))
    return args, opts


def _natural_default(param: Any, text: str) -> str:
    """An option's help with its default written as people say it: typer puts a described
    default in parentheses (``[default: (off)]``, ``[default: (0)]``) and a float as Python
    prints it (``[default: 10.0]``); help says ``off``, ``0`` and ``10``."""
    shown = param.show_default
    if isinstance(shown, str):
        typer_wrote, natural = f"({shown})", shown
    elif isinstance(param.default, float):
        typer_wrote, natural = str(param.default), f"{param.default:g}"
    else:
        return text
    head, found, tail = text.rpartition(f"[default: {typer_wrote}")
    return f"{head}[default: {natural}{tail}" if found else text


def _usage_name(param: Any) -> str:
    """``TARGET`` when required, ``[TARGET]`` when not, ``...`` after it when repeatable
    (typer would write ``{TARGET}`` for a required one)."""
    name = param.metavar or (param.name or "").upper()
    shown = name if param.required else f"[{name}]"
    return shown + ("..." if param.nargs != 1 else "")


class Command(TyperCommand):
    """A diag command: plain placeholders in its help, examples at the end."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_usage_name(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args, opts = _argument_records(self, ctx)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        _write_epilog(self.epilog, formatter)


class Group(TyperGroup):
    """The ``diag`` command itself: its examples at the end, as the commands' are."""

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        _write_epilog(self.epilog, formatter)

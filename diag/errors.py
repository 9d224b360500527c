"""Errors that carry their exit code, so the CLI can turn any of them into one line."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_TARGET = 3


class DiagError(Exception):
    """A failure the user can act on; ``str(err)`` is the one-line message."""

    exit_code = EXIT_TARGET


class UsageError(DiagError):
    """Bad flags or arguments (exit 2)."""

    exit_code = EXIT_USAGE


class TargetError(DiagError):
    """The target is unreachable, not a diag agent, or sent something unusable (exit 3)."""

    exit_code = EXIT_TARGET

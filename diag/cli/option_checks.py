"""Checks every command runs on its options before it does any work: each failure is a
``UsageError`` naming the one option it is about, the range it takes and what it got.

Usage::

    in_range("--proof-budget", budget, above=0, at_most=30, unit="seconds")
    writable_file("-o/--output", output)
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

from diag.errors import UsageError

#: The longest wait any option accepts (a day): more is a typo, and past the platform's
#: clock range sockets refuse it.
MAX_SECONDS = 86_400.0


def _shown(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else _shown(str(value), 30)


def in_range(option: str, value: float | None, *, above: float | None = None, at_least: float | None = None,
             at_most: float | None = None, unit: str = "") -> None:
    """``value`` (if given) lies in the range; ``UsageError`` such as ``--proof-budget
    must be > 0 and at most 30 seconds, not -1`` otherwise.  NaN and infinities fail."""
    if value is None:
        return
    ok = not isinstance(value, float) or math.isfinite(value)  # an int of any size compares exactly
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (at_most is None or value <= at_most)
    if ok:
        return
    parts = []
    if at_least is not None and at_most is not None:
        parts.append(f"between {_number(at_least)} and {_number(at_most)}")
    else:
        if above is not None:
            parts.append(f"> {_number(above)}")
        if at_least is not None:
            parts.append(f"at least {_number(at_least)}")
        if at_most is not None:
            parts.append(f"at most {_number(at_most)}")
    if not parts:
        parts.append("a finite number")
    raise UsageError(f"{option} must be {' and '.join(parts)}{' ' + unit if unit else ''}, not {_number(value)}")


def seconds(option: str, value: float | None, *, zero: bool = False, at_most: float = MAX_SECONDS) -> None:
    """A number of seconds: more than 0 (``zero``: 0 or more) and at most ``at_most``."""
    if zero:
        in_range(option, value, at_least=0, at_most=at_most, unit="seconds")
    else:
        in_range(option, value, above=0, at_most=at_most, unit="seconds")


def threshold(option: str, value: float | None) -> None:
    """A number of seconds a wait, hold or stall may last: 0 or more, finite."""
    if value is None:
        return
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{option} must be a number of seconds >= 0, not {_number(value)}")


def writable_file(option: str, path: Path | None) -> None:
    """``path`` (if given) can be written: its directory exists and may be written to, and
    it is not a directory itself.  Nothing is created: the command may still fail first."""
    if path is None:
        return
    text = str(path)
    shown = _shown(text)
    if not text or "\x00" in text:
        raise UsageError(f"{option}: {shown!r} is not a file name")
    try:
        mode: int | None = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as err:  # a name too long, a loop of links, no permission to look
        raise UsageError(f"{option} {shown}: cannot write: {err.strerror or err}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise UsageError(f"{option} {shown}: is a directory; name a file to write")
    where = path.parent
    try:
        where_mode = os.stat(where).st_mode
    except FileNotFoundError:
        raise UsageError(f"{option} {shown}: no such directory: {_shown(str(where))}") from None
    except OSError as err:
        raise UsageError(f"{option} {shown}: cannot write in {_shown(str(where))}: {err.strerror or err}") from None
    if not stat.S_ISDIR(where_mode):
        raise UsageError(f"{option} {shown}: not a directory: {_shown(str(where))}")
    if mode is not None and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {shown}: cannot write: permission denied")
    if mode is None and not os.access(where, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {shown}: cannot write in {_shown(str(where))}: permission denied")

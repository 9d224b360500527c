"""Reading diag's JSON documents, from a saved file or an agent's answer, without trusting them.

A document may be damaged, hand-edited or hostile: the file may be a FIFO or
``/dev/zero``, the text nested a hundred thousand levels deep, the numbers NaN or
1e30, the strings lone surrogates.  Whatever it holds, reading it ends in a value or in
one ``TargetError`` line, within a stated size.

Usage::

    data = load_json(read_file("tasks.json", MAX_DOCUMENT_BYTES))
    taken_at = timestamp(data.get("taken_at"), "taken_at")
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from typing import Any, Mapping, Sequence

from diag.errors import TargetError

#: The largest saved document read (a 100,000-task dump is about 60 MiB; the agent caps
#: each answer at 32 MiB).
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024
#: The last second of year 9999: a later ``taken_at`` has no calendar date to show.
MAX_TIMESTAMP = 253_402_300_799.0

#: A JSON escape of a surrogate, or a surrogate itself (``json.loads`` decodes bytes with
#: ``surrogatepass``).
_SURROGATE_OR_ESCAPE = re.compile("\\\\u[dD][89abcdefABCDEF]|[\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def size_text(n: int) -> str:
    """``64 MiB (67108864 bytes)``: a limit in words and in bytes."""
    return f"{n // (1024 * 1024)} MiB ({n} bytes)" if n >= 1024 * 1024 else f"{n} bytes"


def read_file(path: str, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ``TargetError`` naming
    the file otherwise.  A FIFO, a device or a directory is refused before it is read
    (opening a FIFO does not wait for a writer), and reading stops past ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        raise TargetError(f"{path}: cannot read: {err.strerror or err}") from None
    except ValueError as err:  # an embedded NUL
        raise TargetError(f"{path!r}: cannot read: {err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                    else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                    else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
            raise TargetError(f"{path}: not a regular file ({kind}); diag reads the {what} it saved")
        if info.st_size > limit:
            raise TargetError(f"{path}: {info.st_size} bytes, more than the {size_text(limit)} diag reads")
        chunks: list[bytes] = []
        got = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            if got > limit:  # the file grew while it was read
                raise TargetError(f"{path}: more than the {size_text(limit)} diag reads")
        return b"".join(chunks)
    except OSError as err:
        if err.errno == errno.EISDIR:
            raise TargetError(f"{path}: not a regular file (a directory); diag reads the {what} it saved") from None
        raise TargetError(f"{path}: cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)


def load_json(text: str | bytes) -> Any:
    """``json.loads``, with lone surrogates (``"\\ud800"``) replaced by U+FFFD so that
    every string can be printed.  Raises what ``json.loads`` raises (``NOT_JSON``)."""
    if isinstance(text, bytes):
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    data = json.loads(text)
    # ASCII text without a "\u" holds neither (most answers: the agent's JSON is ASCII):
    # both checks take a small fraction of the search's time
    if text.isascii() and "\\u" not in text:
        return data
    return _scrub(data) if _SURROGATE_OR_ESCAPE.search(text) else data


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    return value


def finite_float(value: Any, field: str, *, infinite: bool = False) -> float:
    """``float(value)``; ``ValueError`` naming ``field`` for NaN, and for infinities
    unless ``infinite`` (a sleep of ``math.inf`` has infinite time left)."""
    number = float(value)
    if math.isnan(number) or (math.isinf(number) and not infinite):
        raise ValueError(f"{field} is {number}, not a finite number")
    return number


def timestamp(value: Any, field: str = "taken_at") -> float:
    """A Unix time that has a calendar date (year 1970 to 9999); ``ValueError`` otherwise."""
    number = finite_float(value, field)
    if not 0 <= number <= MAX_TIMESTAMP:
        raise ValueError(f"{field} is {number:g}, not a time (seconds since 1970 up to year 9999)")
    return number


def require(d: Mapping[str, Any], fields: Sequence[str], what: str) -> None:
    """A document must carry its core fields: one holding only its schema tag is no snapshot."""
    missing = [name for name in fields if name not in d]
    if missing:
        raise TargetError(f"malformed {what}: no {', '.join(missing)}")


__all__ = ["MAX_DOCUMENT_BYTES", "MAX_TIMESTAMP", "size_text", "read_file", "load_json", "finite_float",
           "timestamp", "require"]

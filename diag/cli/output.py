"""stdout for every command: one buffered writer that hands the stream large chunks.

With ``PYTHONUNBUFFERED=1`` (set in many container images) Python's own stdout passes
each ``write`` straight to the OS: a 100,000-task dump written line by line became a
million system calls.  ``BufferedOutput`` collects the text and writes it in pieces of
``CHUNK`` characters, whatever that variable says; the stream below (the terminal, a
pipe, a file, pytest's capture) still does the encoding, so nothing else changes.

Usage::

    with buffered_stdout() as out:
        out.write(text)          # or sys.stdout.write: it is the same object meanwhile
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Iterator, TextIO

#: Characters collected before they are handed to the stream in one write.
CHUNK = 1 << 20


class BufferedOutput(io.TextIOBase):
    """A text stream that writes to ``stream`` only in chunks of ``chunk`` characters
    (and on ``flush``).  Everything else (``isatty``, ``fileno``, ``encoding``) is the
    stream's, so rich and the commands' format choice see the real terminal."""

    def __init__(self, stream: TextIO, chunk: int = CHUNK) -> None:
        super().__init__()
        self.stream = stream
        self.chunk = chunk
        self._parts: list[str] = []
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._parts.append(text)
        self._size += len(text)
        if self._size >= self.chunk:
            self._drain()
        return len(text)

    def _drain(self) -> None:
        if not self._parts:
            return
        # taken out before the write: a write that fails is not tried again at exit
        text = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        self.stream.write(text)

    def flush(self) -> None:
        self._drain()
        self.stream.flush()

    def discard(self) -> None:
        """Forget what was not written yet (the reader is gone)."""
        self._parts.clear()
        self._size = 0

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.stream, "errors", None)

    @property
    def buffer(self) -> object:
        return getattr(self.stream, "buffer")


def silence_stdout(stream: object) -> None:
    """Point the process's stdout at ``/dev/null`` when ``stream`` is it: after a failed
    write (a closed pipe, a full disk) nothing more is tried on it, including Python's
    own flush at exit, which would otherwise print a second error.  Any other stream (a
    test's capture) is left alone."""
    if stream is not sys.__stdout__ or sys.__stdout__ is None:
        return
    try:
        fd = sys.__stdout__.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


@contextlib.contextmanager
def buffered_stdout() -> Iterator[BufferedOutput]:
    """``sys.stdout`` replaced by a ``BufferedOutput`` over it for the block, then put
    back.  The caller flushes (so that a failed write is its error to report); what is
    left unflushed when the block ends by an exception is dropped with the stream."""
    previous = sys.stdout
    out = BufferedOutput(previous)
    sys.stdout = out  # type: ignore[assignment]
    try:
        yield out
    finally:
        sys.stdout = previous


__all__ = ["CHUNK", "BufferedOutput", "buffered_stdout", "silence_stdout"]

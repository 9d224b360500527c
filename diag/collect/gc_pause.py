"""The cyclic GC paused while diag walks the program, and the program's own setting kept.

Several of diag's threads may pause the GC at once (a dump, a reachability proof, the
sweep of a cached snapshot).  The pauses are counted: the first one remembers whether
the program had the GC enabled, the last one puts that back.  A process forked while a
pause runs would otherwise start with the GC off for good (the thread that would have
re-enabled it does not exist in the child), so a child puts the program's setting back
at once (``os.register_at_fork``).

Usage::

    with paused_gc():
        walk_every_task()
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from typing import Iterator

_lock = threading.Lock()
#: Pauses running now, all threads together.
_depth = 0
#: Whether the program had the GC enabled when the first running pause began.
_program_enabled = True


def pause() -> None:
    """Disable the cyclic GC until the matching ``resume()``."""
    global _depth, _program_enabled
    with _lock:
        if _depth == 0:
            _program_enabled = gc.isenabled()
        _depth += 1
        gc.disable()


def resume() -> None:
    """End one ``pause()``; the last one re-enables the GC if the program had it on."""
    global _depth
    with _lock:
        if _depth == 0:  # the pause began before a fork, in a thread this process lacks
            return
        _depth -= 1
        if _depth == 0 and _program_enabled:
            gc.enable()


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic GC paused for the block.  A dump allocates a few objects per task; with
    100k live tasks, each collection those allocations trigger re-traverses them all, and
    a full one holds the GIL (so stalls the target's loop) for a third of a second.
    Objects made and freed within the block leave no debt to the next collection."""
    pause()
    try:
        yield
    finally:
        resume()


def pauses_running() -> int:
    """How many pauses are running now (0: the GC is as the program left it)."""
    return _depth


def _after_fork_in_child() -> None:
    # Only the forking thread survives: no pause of another thread will ever end here.
    global _lock, _depth
    _lock = threading.Lock()  # a parent thread may have held it at the fork
    if _depth:
        _depth = 0
        if _program_enabled:
            gc.enable()


os.register_at_fork(after_in_child=_after_fork_in_child)

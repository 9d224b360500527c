"""Which frames are the event loop's own machinery rather than the program's code.

One definition for the sampler, which takes a late sample that finds the loop back in
its own code for time spent elsewhere, and for the profile analysis, which says when
the top row is the loop's own.

Usage::

    loop_frame("/usr/lib/python3.11/selectors.py", "EpollSelector.select")   # "idle"
"""

from __future__ import annotations

#: The loop's wait for events: its selector, or for a compiled loop such as uvloop the
#: code that started it (the wait runs in C beneath it).  Also asyncio.sleep: its own
#: time under yappi's wall clock is that wait (a sample never finds the loop thread in
#: it outside a task).
IDLE = "idle"
#: The loop's own code between two waits: one turn (``_run_once``) and the calls that run turns.
TURN = "turn"
#: The handle that runs one callback (``Handle._run``): its own time is a callback's C code.
CALLBACK = "callback"


def loop_frame(file: str, function: str) -> str | None:
    """``IDLE``, ``TURN``, ``CALLBACK`` or None (the program's code, or a library's) for a
    frame of ``function`` (plain or qualified: ``BaseEventLoop._run_once``) in ``file``."""
    path = file.replace("\\", "/")
    name = function.rsplit(".", 1)[-1]
    if path.endswith(("/selectors.py", "/asyncio/runners.py", "/uvloop/__init__.py")):
        return IDLE
    if path.endswith("/asyncio/base_events.py"):
        if name == "select":
            return IDLE
        if name in ("_run_once", "run_forever", "run_until_complete"):
            return TURN
    if path.endswith("/asyncio/tasks.py") and name == "sleep":
        return IDLE
    if path.endswith("/asyncio/events.py") and name == "_run":
        return CALLBACK
    return None

"""What an attached diag does inside the target: start or stop the agent, adopt the loops
that were already running, and remember when it came in.

Runs on the ``diag-attach`` thread that ``boot.py`` starts, never on the target's own.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

#: Wall-clock time the agent was attached to this running process (None: started with it).
attached_at: float | None = None
_added_paths: list[str] = []


def attach(order: dict[str, Any], added_paths: list[str]) -> dict[str, Any]:
    """Start the agent (or find the running one) and report its address."""
    global attached_at
    import diag.agent
    from diag.collect import task_origins

    running = diag.agent.current()
    agent = running or diag.agent.start(order["address"])
    for loop in running_loops():
        agent.watch.add_loop(loop)
    agent.watch.wait_first_look(0.5)
    if running is None:
        attached_at = time.time()
        _added_paths[:] = added_paths
    else:
        _drop_paths(added_paths)
    return {"url": agent.url, "reused": running is not None, "pid": os.getpid(),
            "python": "%d.%d.%d" % sys.version_info[:3], "accelerated": task_origins.accelerated(),
            "attached_at": attached_at}


def detach(added_paths: list[str]) -> dict[str, Any]:
    """Stop the agent and take out what it installed: task factories, lock wrappers, its
    threads, its socket and the sys.path entries attach added (``added_paths``: those
    this very detach had to add to import diag again).  Modules stay imported."""
    global attached_at
    import diag.agent

    had = diag.agent.current() is not None
    diag.agent.stop()
    _drop_paths(_added_paths + added_paths)
    _added_paths.clear()
    attached_at = None
    return {"stopped": had, "pid": os.getpid()}


def running_loops() -> list[Any]:
    """The event loops running when diag came in, found through their tasks (any thread)."""
    from diag.collect.loop_watch import iter_all_tasks

    loops: dict[int, Any] = {}
    for task in iter_all_tasks():
        try:
            loop = task.get_loop()
            if loop.is_running() and not loop.is_closed():
                loops[id(loop)] = loop
        except Exception:
            continue
    return list(loops.values())


def _drop_paths(paths: list[str]) -> None:
    for path in paths:
        try:
            sys.path.remove(path)
        except ValueError:
            pass


def note() -> str | None:
    """The dump's line about a late attach, or None when the agent started with the process."""
    if attached_at is None:
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(attached_at))
    return (f"attached to the running process at {when}: 'created by' and 'held by' are recorded "
            f"only for what happened since")

"""A forked child starts without the profiling diag was doing in its parent.

``fork()`` copies the whole process but only the thread that called it.  A profile
taken by the agent at that moment leaves the child with yappi installed on every call
(and its stats growing) and with the profile lock held by a request thread that does
not exist there, so the child could never be profiled.  Right after the fork the child
stops and clears yappi if a diag profile was running it, and gets a free profile lock;
the sampler thread did not survive the fork and nothing else of it remains.  The GC
paused by a dump is put back by ``diag.collect.gc_pause`` the same way.
"""

from __future__ import annotations

import os
import sys
import threading


def stop_inherited_profile() -> None:
    """In a forked child: undo a profile the parent's agent was taking at the fork."""
    profiler = sys.modules.get("diag.collect.profiler")
    if profiler is None:  # never imported: no profile can have run
        return
    busy = getattr(profiler, "_busy", None)
    profiling = busy is not None and busy.locked()
    setattr(profiler, "_busy", threading.Lock())
    yappi = sys.modules.get("yappi")
    # A diag profile starts yappi only when nobody else runs it (profiler.py refuses
    # otherwise): running while the profile lock was held, it is ours to stop.
    if not profiling or yappi is None:
        return
    try:
        if yappi.is_running():
            yappi.stop()
            yappi.clear_stats()
    except Exception:  # never break the child
        pass


def _after_fork_in_child() -> None:
    try:
        stop_inherited_profile()
    except Exception:
        pass


os.register_at_fork(after_in_child=_after_fork_in_child)

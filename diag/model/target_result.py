"""What one of several targets gave: the process asked, and its snapshot or why there is none.

``diag.sources.multi_source`` queries the targets and makes one ``TargetResult`` each;
the analysis that merges several processes (``diag.analysis.merge``) and the renderers
that show them read these values and nothing of the transport.

Usage::

    result = TargetResult(Target("http://127.0.0.1:8081"), "ok", snapshot)
    print(result.target.label, result.status if result.ok else failure_line(result))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

#: Per-target outcomes, in the order the docs list them.
STATUSES = ("ok", "dead", "refused", "timeout", "error")


@dataclass(frozen=True)
class Target:
    """One process to ask.  ``target`` is what gets queried (URL, ``unix:`` path or saved
    file); ``pid`` is known for agent-directory entries; ``dead`` says why an entry is
    not queried at all (its process is gone, or its file is unreadable)."""

    target: str
    pid: int | None = None
    origin: str = "argument"  # or "agent_dir"
    dead: str = ""

    @property
    def label(self) -> str:
        return f"pid {self.pid} at {self.target}" if self.pid is not None else self.target


@dataclass(frozen=True)
class TargetResult(Generic[T]):
    """What one target gave: ``status`` is one of ``STATUSES``; ``value`` only when ok."""

    target: Target
    status: str
    value: T | None = None
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def failure_line(result: TargetResult[object]) -> str:
    """``pid 4242 at http://...: dead: process 4242 is not running (stale agent file)``"""
    return f"{result.target.label}: {result.status}: {result.error}"

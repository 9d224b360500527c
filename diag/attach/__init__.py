"""``diag attach``: put the agent into a Python process that is already running.

Usage::

    from diag.attach import attach
    done = attach(4129)                  # injects, or finds the agent already there
    print(done.url)                      # unix:/tmp/diag-0/4129.sock -> diag tasks <url>

The order of work: read the process from /proc and refuse early (gone, not Python, an
interpreter diag does not know, ptrace denied), stage an order, have the target load it
(``inject``), wait for its answer within the timeout, and keep a record so the next
``pid:N`` target reuses the agent (``records``).  Every failure is a ``TargetError``
with one line saying what to do.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diag.attach import inject, records
from diag.attach.process import (SUPPORTED, SUPPORTED_TEXT, ProcessFacts, alive, explain_denial,
                                 python_version, read_facts, read_ptrace_facts)
from diag.errors import TargetError, UsageError

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Attached:
    """An agent in a running process: where it answers and how it got there."""

    pid: int
    url: str
    reused: bool
    seconds: float
    python: str = ""
    attached_at: float | None = None


def importable_paths() -> list[str]:
    """What the target needs on sys.path to import this diag and the agent's dependencies."""
    paths = [str(inject.PACKAGE_DIR.parent)]
    for name in ("yappi", "objgraph", "prometheus_client"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin).resolve()
        where = str(origin.parent.parent if spec.submodule_search_locations else origin.parent)
        if where not in paths:
            paths.append(where)
    return paths


def check_timeout(timeout: float) -> None:
    if not 0 < timeout <= 600:
        raise UsageError(f"--timeout must be more than 0 and at most 600 seconds, not {timeout:g}")


def inspect(pid: int, command: str = "attach") -> tuple[ProcessFacts, tuple[int, int]]:
    """The process's facts and Python version, or the one-line reason diag cannot ``command``
    (attach or detach) there."""
    facts = read_facts(pid)
    if facts.state in ("Z", "X"):
        raise TargetError(f"pid {pid} has exited (a zombie waiting for its parent)")
    if not facts.maps and not facts.exe:
        raise inject.PtraceDenied(explain_denial(pid, read_ptrace_facts(facts.uid), command))
    version = python_version(facts)
    if version is None:
        raise TargetError(f"pid {pid} is not a Python process ({facts.exe or 'unknown executable'})")
    if version not in SUPPORTED and not (version > SUPPORTED[-1] and inject.remote_exec_usable(version)):
        newer = (f"; for {version[0]}.{version[1]}, run diag itself under Python {version[0]}.{version[1]} "
                 f"(sys.remote_exec)" if version > SUPPORTED[-1] else "")
        raise TargetError(f"pid {pid} runs Python {version[0]}.{version[1]}: diag attaches to "
                          f"{SUPPORTED_TEXT}{newer}")
    return facts, version


def attach(pid: int, address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Attached:
    """Start the agent in ``pid`` (or find the one running there) and return its address."""
    check_timeout(timeout)
    started = time.monotonic()
    facts, version = inspect(pid)
    known = records.read_record(pid, facts.start_ticks)
    if known is not None and address is None and records.answers(known["url"]):
        return Attached(pid, known["url"], True, time.monotonic() - started,
                        attached_at=known.get("attached_at"))
    order = {"action": "attach", "address": address or records.default_address(pid, facts.uid),
             "paths": importable_paths()}
    answer = _run(facts, version, order, timeout)
    url = answer.get("url")
    if not isinstance(url, str):
        raise TargetError(f"pid {pid}: the agent did not start: {answer.get('error', 'no address in its answer')}")
    records.write_record(pid, facts.start_ticks, url, answer.get("attached_at"))
    return Attached(pid, url, bool(answer.get("reused")), time.monotonic() - started,
                    str(answer.get("python", "")), answer.get("attached_at"))


def detach(pid: int, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Stop the agent in ``pid`` and remove what it installed; False when none was running."""
    check_timeout(timeout)
    facts, version = inspect(pid, "detach")
    answer = _run(facts, version, {"action": "detach", "paths": importable_paths()}, timeout)
    if "error" in answer:
        raise TargetError(f"pid {pid}: detach failed: {answer['error']}")
    records.remove_record(pid)
    return bool(answer.get("stopped"))


def _run(facts: ProcessFacts, version: tuple[int, int], order: dict[str, Any], timeout: float) -> dict[str, Any]:
    pid = facts.pid
    command = order["action"]
    started = time.monotonic()
    staged = inject.stage(order, facts.uid)
    try:
        if version > SUPPORTED[-1]:
            inject.load_with_remote_exec(pid, staged, command)
        else:
            inject.load_with_pyinjector(
                pid, staged, lambda: explain_denial(pid, read_ptrace_facts(facts.uid), command), timeout, command)
        left = max(0.1, timeout - (time.monotonic() - started))
        return inject.await_result(pid, staged, left, lambda: alive(pid, facts.start_ticks), said=timeout,
                                   command=command)
    except TargetError:
        if not alive(pid, facts.start_ticks):
            raise TargetError(f"pid {pid} exited during {command}") from None
        raise
    finally:
        staged.remove()


def pid_target(target: str) -> str:
    """``pid:N`` as a target: the agent's address, attaching on first use."""
    text = target[len("pid:"):]
    if not text.isdigit():
        raise UsageError(f"bad target {target!r}: expected pid:NUMBER")
    try:
        timeout = float(os.environ.get("DIAG_ATTACH_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        raise UsageError("DIAG_ATTACH_TIMEOUT must be a number of seconds") from None
    done = attach(int(text), timeout=timeout)
    if not done.reused:
        print(f"diag: attached to pid {done.pid}: {done.url}", file=sys.stderr)
    return done.url

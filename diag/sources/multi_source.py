"""Several targets at once: URLs given on the command line and the agent files of an
agent directory, each queried on its own thread with its own deadline.

A dead, refused or slow target becomes a ``TargetResult`` with a status and a
one-line reason instead of an exception, so one stuck worker never holds up the view
of the others.

Usage::

    targets = resolve_targets(["http://127.0.0.1:8081"], agent_dir="/run/app/diag")
    results = fetch_all(targets, lambda t: open_source(t.target, 5).tasks(query), deadline=5)
    for r in results:
        print(r.target.label, r.status, r.error or r.value)
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Sequence, TypeVar

from diag.errors import EXIT_OK, EXIT_TARGET, DiagError, TargetError, UsageError
from diag.model.target_result import Target, TargetResult, failure_line
from diag.sources.source import AgentSource, TargetRefused, TargetTimeout, agent_url, client_token, is_url

T = TypeVar("T")

#: How long past its own timeout a target's thread may run before it counts as timed out.
GRACE = 1.0


def check_target(target: str) -> None:
    """Refuse a malformed TARGET string before anything is queried (``UsageError``)."""
    if is_url(target):
        AgentSource(target)
    elif not (target.endswith(".json") or os.path.exists(target)):
        agent_url(target)


def resolve_targets(args: Sequence[str], agent_dir: str | None) -> list[Target]:
    """The command line's targets, then the agent directory's files by pid; duplicates once."""
    client_token()  # a token that cannot be sent is a usage error, before any target is asked
    out: list[Target] = []
    for arg in args:
        check_target(arg)
        out.append(Target(arg))
    if agent_dir is not None:
        from diag.agent.agent_dir import process_alive, read_records  # only here (see source.client_token)

        try:
            entries = read_records(agent_dir)
        except FileNotFoundError:
            raise TargetError(f"--agent-dir {agent_dir}: no such directory") from None
        except OSError as err:
            raise TargetError(f"--agent-dir {agent_dir}: cannot read: {err.strerror or err}") from None
        if not entries:
            raise TargetError(f"--agent-dir {agent_dir}: no agent files (start the program with "
                              "diag run --agent-dir DIR, or DIAG_AGENT_DIR set)")
        for name, record, problem in entries:
            if record is None:
                out.append(Target(os.path.join(agent_dir, name), int(name.split(".")[0]), "agent_dir", problem))
            else:
                out.append(Target(record.url, record.pid, "agent_dir", process_alive(record)))
    seen: set[tuple[str, int | None]] = set()
    unique = []
    for t in out:
        if (t.target, t.pid) not in seen:
            seen.add((t.target, t.pid))
            unique.append(t)
    return unique


def _without_name(message: str, target: Target) -> str:
    """Transport errors start with the target's name; the result already carries it."""
    return message.removeprefix(f"{target.target}: ")


def fetch_one(target: Target, fetch: Callable[[Target], T]) -> TargetResult[T]:
    """Query one target; every failure becomes a result, never an exception."""
    if target.dead:
        return TargetResult(target, "dead", error=target.dead)
    started = time.monotonic()
    status, value, error = "ok", None, ""
    try:
        value = fetch(target)
    except TargetTimeout as err:
        status, error = "timeout", _without_name(str(err), target)
    except TargetRefused as err:
        status, error = "refused", _without_name(str(err), target)
    except DiagError as err:
        status, error = "error", _without_name(str(err), target)
    except Exception as err:  # a bug in one target's answer must not lose the others
        status, error = "error", f"{type(err).__name__}: {err}"
    return TargetResult(target, status, value, error, time.monotonic() - started)


def fetch_all(targets: Sequence[Target], fetch: Callable[[Target], T], deadline: float) -> list[TargetResult[T]]:
    """Query every target concurrently, one thread each; a target that has not answered
    ``deadline`` (+ a second's grace) seconds after the start is reported as timed out
    and left behind on its daemon thread, which its socket timeout ends soon after."""
    if len(targets) == 1:
        return [fetch_one(targets[0], fetch)]
    results: list[TargetResult[T] | None] = [None] * len(targets)

    def work(i: int) -> None:
        results[i] = fetch_one(targets[i], fetch)

    threads = [threading.Thread(target=work, args=(i,), name=f"diag-fetch-{i}", daemon=True)
               for i in range(len(targets))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    end = started + deadline + GRACE
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    out: list[TargetResult[T]] = []
    for target, result in zip(targets, results):
        if result is None:
            result = TargetResult(target, "timeout", error=f"no answer within {deadline:g}s (--timeout)",
                                  seconds=time.monotonic() - started)
        out.append(result)
    return out


def require_targets(args: Sequence[str], agent_dir: str | os.PathLike[str] | None) -> None:
    """At least one TARGET or ``--agent-dir`` (``UsageError`` otherwise)."""
    if not args and agent_dir is None:
        raise UsageError("missing TARGET: give one or more targets, or --agent-dir DIR")


def report_failures(results: Sequence[TargetResult[Any]], write: Callable[[str], None]) -> int:
    """One stderr line per target that failed; ``EXIT_TARGET`` when none answered, else 0."""
    for result in results:
        if not result.ok:
            write(f"diag: warning: {failure_line(result)}")
    if not any(r.ok for r in results):
        write(f"diag: error: none of the {len(results)} targets answered")
        return EXIT_TARGET
    return EXIT_OK

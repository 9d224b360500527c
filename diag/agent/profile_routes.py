"""Agent routes of ``diag profile``: take a profile of the loop thread, and say whether one runs.

``POST {PREFIX}/profile?seconds=5&mode=yappi|sample&clock=wall|cpu&force=0&max_tasks=2000``
runs the whole window on the agent's request thread and answers the ``diag.profile/1``
snapshot, so the profiler is stopped and cleared whether or not the client is still
there.  Refusals (busy, too many tasks for wall-clock yappi, asked on the event loop's
own thread) answer 409 with the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from dataclasses import replace

from diag.agent.endpoints import Response, error, fit, json_response, shown
from diag.collect import profiler
from diag.errors import DiagError

if TYPE_CHECKING:
    from diag.agent.endpoints import Endpoints


def _options(query: Mapping[str, str]) -> profiler.ProfileOptions:
    def number(name: str, default: float) -> float:
        raw = query.get(name)
        if raw in (None, ""):
            return default
        try:
            return float(raw)
        except ValueError:
            raise DiagError(f"{name} must be a number, not {shown(raw)}") from None

    max_tasks = number("max_tasks", profiler.TASK_LIMIT)
    if not 0 <= max_tasks < 2**63:  # also NaN and infinity, which int() refuses
        raise DiagError("max_tasks must be a whole number >= 0")
    options = profiler.ProfileOptions(
        seconds=number("seconds", profiler.DEFAULT_SECONDS),
        mode=query.get("mode") or "yappi",
        clock=query.get("clock") or "wall",
        force=(query.get("force") or "0").lower() in ("1", "true", "yes"),
        max_tasks=int(max_tasks),
        hz=number("hz", profiler.SAMPLE_HZ),
    )
    options.validate()
    return options


def install(endpoints: "Endpoints") -> None:
    """Add ``profile`` (POST) and ``profile/status`` (GET) to ``endpoints``."""

    def profile(query: Mapping[str, str], exclude: frozenset[int]) -> Response:
        options = _options(query)
        if profiler.on_event_loop_thread():
            from diag.agent import current

            agent = current()
            where = f" ({agent.url})" if agent is not None else " (diag.agent.start())"
            return error(409, "refused: a profile would block this event loop; ask the agent's own "
                              f"address instead{where}")
        try:
            snap = profiler.take_profile(options, profiler.loop_thread(endpoints.watch))
        except profiler.ProfileRefused as err:
            return error(409, str(err))
        def build(keep: int | None) -> dict[str, object]:
            if keep is None:
                return snap.to_dict()
            # The busiest functions (with the edges among them) and the commonest stacks
            # stay, with only the frames those stacks use.
            stacks = snap.stacks[:keep]
            used = sorted({i for stack in stacks for i in stack.frames})
            index = {old: new for new, old in enumerate(used)}
            return replace(snap, functions=snap.functions[:keep],
                           edges=tuple(e for e in snap.edges if e.caller < keep and e.callee < keep),
                           frames=tuple(snap.frames[i] for i in used),
                           stacks=tuple(replace(st, frames=tuple(index[i] for i in st.frames)) for st in stacks),
                           ).to_dict()

        return fit(build, max(len(snap.functions), len(snap.stacks)), "functions and stacks")

    def status(query: Mapping[str, str], exclude: frozenset[int]) -> Response:
        answer: dict[str, object] = {"schema": "diag.profile-status/1", **profiler.status()}
        if profiler.on_event_loop_thread():  # an app's own port: a profile here would block its loop
            from diag.agent import current

            agent = current()
            answer["profile_here"] = False
            answer["agent"] = agent.url if agent is not None else None
        return json_response(200, answer)

    endpoints.add("profile", profile, method="POST",
                  help=f"profile the loop thread (?seconds=<= {profiler.MAX_SECONDS:g}&mode=yappi|sample"
                       "&clock=wall|cpu&force=0|1&max_tasks=N)")
    endpoints.add("profile/status", status, help="whether a profile is being taken and a profiler installed")

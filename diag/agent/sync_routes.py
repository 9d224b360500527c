"""Agent routes for ``diag sync`` and ``diag leaks``: GET {prefix}/sync[?proof=1]."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Mapping

from diag.agent_protocol import DEFAULT_PROOF_BUDGET, MAX_PROOF_BUDGET
from diag.collect import reachability
from diag.collect.sync_collector import collect_sync
from diag.collect.task_collector import paused_gc
from diag.errors import DiagError
from diag.model.task_snapshot import count_totals

if TYPE_CHECKING:
    from diag.agent.endpoints import Endpoints, Response



def install(endpoints: "Endpoints") -> None:
    from diag.agent import endpoints as api
    from diag.agent.endpoints import fit, shown

    def sync(query: Mapping[str, str], exclude: frozenset[int]) -> "Response":
        proof = query.get("proof", "0") not in ("", "0", "false", "no")
        try:
            budget = float(query.get("budget") or DEFAULT_PROOF_BUDGET)
        except ValueError:
            raise DiagError(f"budget must be a number of seconds, not {shown(query.get('budget'))}") from None
        if not 0 < budget <= MAX_PROOF_BUDGET:
            raise DiagError(f"budget must be > 0 and at most {MAX_PROOF_BUDGET:g} seconds")
        with paused_gc():  # as for a task dump: everything made here is freed before the GC runs
            snap = collect_sync(endpoints.watch, proof=proof, exclude=exclude, proof_budget=budget,
                                collect_budget=api.COLLECT_BUDGET)

            def build(keep: int | None) -> dict[str, object]:
                if keep is None:
                    return snap.to_dict()
                # Primitives someone holds or waits on come first, so they are the ones kept.
                return replace(snap, primitives=snap.primitives[:keep],
                               tasks=replace(snap.tasks, tasks=snap.tasks.tasks[:keep], totals=totals)).to_dict()

            totals = count_totals(snap.tasks.tasks)

            answer = fit(build, max(len(snap.primitives), len(snap.tasks.tasks)), "primitives and tasks")
            del snap, build
        return answer

    endpoints.add("sync", sync, help="primitives, holders, waiters (?proof=1 adds the reachability proof)",
                  paced=True, cached=True)

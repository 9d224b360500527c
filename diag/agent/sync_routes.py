"""Agent routes for ``diag sync`` and ``diag leaks``: GET {prefix}/sync[?proof=1]."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from diag.collect.sync_collector import collect_sync
from diag.errors import DiagError

if TYPE_CHECKING:
    from diag.agent.endpoints import Endpoints, Response

#: The longest a client may let the reachability proof run.
MAX_PROOF_BUDGET = 30.0


def install(endpoints: "Endpoints") -> None:
    from diag.agent.endpoints import Response

    def sync(query: Mapping[str, str], exclude: frozenset[int]) -> "Response":
        proof = query.get("proof", "0") not in ("", "0", "false", "no")
        try:
            budget = float(query.get("budget") or 10.0)
        except ValueError:
            raise DiagError(f"budget must be a number of seconds, not {query.get('budget')!r}") from None
        if not 0 < budget <= MAX_PROOF_BUDGET:
            raise DiagError(f"budget must be > 0 and at most {MAX_PROOF_BUDGET:g} seconds")
        snap = collect_sync(endpoints.watch, proof=proof, exclude=exclude, proof_budget=budget)
        return Response(200, snap.to_json().encode())

    endpoints.add("sync", sync, help="primitives, holders, waiters (?proof=1 adds the reachability proof)")

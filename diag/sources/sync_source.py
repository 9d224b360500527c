"""Where sync snapshots come from: an agent (``{prefix}/sync``) or a saved file."""

from __future__ import annotations

from diag.model.sync_snapshot import SyncSnapshot
from diag.sources.source import AgentSource, Source, open_source, read_saved


def proof_allowance(budget: float) -> tuple[float, str]:
    """The time the reachability proof may take in the target, on top of ``--timeout``,
    and its name: the agent proves twice when it finds something, each within the budget."""
    return 2 * budget, f"two proofs of --proof-budget {budget:g}s"


def load_sync(target: str, *, timeout: float, proof: bool, budget: float = 0.0) -> SyncSnapshot:
    """A sync snapshot from TARGET; with the proof, the answer may take ``--timeout``
    plus the proof's allowance (and a target that does not answer at all is reported
    after ``--timeout``).  A ``budget`` of 0 leaves the agent's default (and
    allows the proof no time of its own)."""
    return read_sync(open_source(target, timeout), proof=proof, budget=budget)


def read_sync(source: Source, *, proof: bool, budget: float = 0.0) -> SyncSnapshot:
    """``load_sync`` from a source already opened (its target parsed), such as one opened
    before a command waits, so that a bad target is reported before the wait."""
    if isinstance(source, AgentSource):
        params = {"proof": "1" if proof else "0"}
        if budget > 0:
            params["budget"] = repr(budget)
        extra, why = proof_allowance(budget) if proof and budget > 0 else (0.0, "")
        return source.snapshot(source.get("sync", params, extra=extra, extra_why=why), SyncSnapshot.from_dict)
    return read_saved(source.name, SyncSnapshot.from_json)

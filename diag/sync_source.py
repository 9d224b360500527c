"""Where sync snapshots come from: an agent (``{prefix}/sync``) or a saved file."""

from __future__ import annotations

from diag.errors import TargetError
from diag.source import AgentSource, open_source, read_saved
from diag.sync_snapshot import SyncSnapshot


def load_sync(target: str, *, timeout: float, proof: bool, budget: float = 10.0) -> SyncSnapshot:
    """A sync snapshot from TARGET; the proof's budget is added to the timeout."""
    source = open_source(target, timeout + (budget if proof else 0.0))
    if isinstance(source, AgentSource):
        params = {"proof": "1" if proof else "0", "budget": repr(budget)}
        data = source.get("sync", params)
        if not isinstance(data, dict) or "schema" not in data:
            raise TargetError(f"{target}: not a diag agent (no schema in the answer)")
        return SyncSnapshot.from_dict(data)
    return read_saved(target, SyncSnapshot.from_json)

"""The heap snapshot: how many objects of each type a process holds, and why one is alive.

Counts cover the objects the cyclic GC tracks (containers and class instances; not
plain ints, strings or bytes), as ``objgraph.typestats`` does.  A back-reference
chain leads from a root (a module or a task) to one sample object of a type, each
link saying how the previous object holds the next.  Plain data, JSON with a
``schema`` tag, unknown fields defaulted, like every diag snapshot.

Usage::

    series = HeapSeries.from_json(text)
    for snap in series.snapshots:
        print(snap.taken_at, snap.types[0].name, snap.types[0].count)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from diag.documents import finite_float, load_json, require, timestamp
from diag.errors import TargetError
from diag.model.task_snapshot import MALFORMED, NOT_JSON, ProcessInfo, check_schema

SCHEMA_NAME = "diag.objects"
SCHEMA_MAJOR = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_MAJOR}"

#: How a link's object is held by the previous one: ``d[key]``, ``obj.attr``, ``seq[i]``,
#: a member of a set, or some other reference the walker cannot name.
VIA_KINDS = ("root", "key", "attr", "index", "item", "referent")


@dataclass(frozen=True)
class TypeCount:
    """Live objects of one type; ``name`` is ``module.Qualname`` (builtins unqualified)."""

    name: str
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TypeCount:
        return cls(str(d.get("name", "?")), int(d.get("count") or 0))


@dataclass(frozen=True)
class ChainLink:
    """One object on a reference chain.

    ``type`` is its type name, ``id`` its address in hex, ``label`` a name when it has
    one (module or task name, ``module.__dict__``, function name), ``size`` its length
    for containers.  ``via_kind``/``via`` say how the previous link holds it.
    """

    type: str
    id: str
    label: str = ""
    size: int | None = None
    via_kind: str = "root"
    via: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "label": self.label, "size": self.size,
                "via_kind": self.via_kind, "via": self.via}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChainLink:
        kind = str(d.get("via_kind") or "root")
        size = d.get("size")
        return cls(str(d.get("type", "?")), str(d.get("id", "")), str(d.get("label") or ""),
                   None if size is None else int(size), kind if kind in VIA_KINDS else "referent",
                   str(d.get("via") or ""))


@dataclass(frozen=True)
class BackrefChain:
    """Why a sample object of ``type`` is alive: ``chain`` runs from a root to it.

    ``found`` says whether a root was reached; ``matched`` counts the objects of the
    type seen; ``searched_seconds`` is how long the search ran and ``cut_short`` whether
    it hit its time budget.
    """

    type: str
    found: bool
    chain: tuple[ChainLink, ...] = ()
    matched: int = 0
    max_depth: int = 0
    searched_seconds: float = 0.0
    cut_short: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "found": self.found, "chain": [c.to_dict() for c in self.chain],
                "matched": self.matched, "max_depth": self.max_depth,
                "searched_seconds": self.searched_seconds, "cut_short": self.cut_short}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BackrefChain:
        return cls(str(d.get("type", "?")), bool(d.get("found", False)),
                   tuple(ChainLink.from_dict(c) for c in d.get("chain") or ()), int(d.get("matched") or 0),
                   int(d.get("max_depth") or 0), finite_float(d.get("searched_seconds") or 0.0, "searched_seconds"),
                   bool(d.get("cut_short", False)))


@dataclass(frozen=True)
class HeapSnapshot:
    """Type counts of one process at ``taken_at`` (Unix time).

    ``objects`` is how many GC-tracked objects were counted; ``complete`` is false when
    the walk hit its time budget (counts are then partial, said in ``notes``).  ``types``
    is biggest first and may be capped (``types_total`` counts all distinct types).
    """

    taken_at: float
    process: ProcessInfo
    objects: int
    types: tuple[TypeCount, ...]
    types_total: int = 0
    complete: bool = True
    collect_seconds: float = 0.0
    notes: tuple[str, ...] = ()
    backrefs: BackrefChain | None = None
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "taken_at": self.taken_at, "process": self.process.to_dict(),
                "objects": self.objects, "types_total": self.types_total, "complete": self.complete,
                "collect_seconds": self.collect_seconds, "notes": list(self.notes),
                "types": [t.to_dict() for t in self.types],
                "backrefs": None if self.backrefs is None else self.backrefs.to_dict()}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> HeapSnapshot:
        if not isinstance(d, Mapping):
            raise TargetError("not a diag objects snapshot (expected a JSON object)")
        check_schema(d.get("schema"), SCHEMA_NAME, SCHEMA_MAJOR)
        require(d, ("taken_at", "types"), "diag objects snapshot")
        try:
            back = d.get("backrefs")
            return cls(
                taken_at=timestamp(d.get("taken_at")),
                process=ProcessInfo.from_dict(d.get("process") or {}),
                objects=int(d.get("objects") or 0),
                types=tuple(TypeCount.from_dict(t) for t in d.get("types") or ()),
                types_total=int(d.get("types_total") or 0),
                complete=bool(d.get("complete", True)),
                collect_seconds=finite_float(d.get("collect_seconds") or 0.0, "collect_seconds"),
                notes=tuple(str(n) for n in d.get("notes") or ()),
                backrefs=BackrefChain.from_dict(back) if isinstance(back, Mapping) else None,
            )
        except MALFORMED as err:
            raise TargetError(f"malformed diag objects snapshot: {err.__class__.__name__}: {err}") from None


@dataclass(frozen=True)
class HeapSeries:
    """Snapshots of one process taken ``interval`` seconds apart, oldest first (what
    ``diag objects -o FILE`` saves); a single snapshot is a series of one."""

    snapshots: tuple[HeapSnapshot, ...]
    interval: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "interval": self.interval, "snapshots": [s.to_dict() for s in self.snapshots]}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> HeapSeries:
        if not isinstance(d, Mapping):
            raise TargetError("not a diag objects snapshot (expected a JSON object)")
        check_schema(d.get("schema"), SCHEMA_NAME, SCHEMA_MAJOR)
        if "snapshots" not in d:
            return cls((HeapSnapshot.from_dict(d),))
        items = d.get("snapshots")
        if not isinstance(items, list) or not items:
            raise TargetError("malformed diag objects snapshot: no snapshots")
        try:
            interval = finite_float(d.get("interval") or 0.0, "interval")
        except (TypeError, ValueError, OverflowError):
            raise TargetError("malformed diag objects snapshot: bad interval") from None
        return cls(tuple(HeapSnapshot.from_dict(s) for s in items), interval)

    @classmethod
    def from_json(cls, text: str | bytes) -> HeapSeries:
        try:
            data = load_json(text)
        except NOT_JSON as err:
            raise TargetError(f"not a diag objects snapshot: invalid JSON ({err})") from None
        return cls.from_dict(data)


__all__ = ["SCHEMA", "VIA_KINDS", "TypeCount", "ChainLink", "BackrefChain", "HeapSnapshot", "HeapSeries"]

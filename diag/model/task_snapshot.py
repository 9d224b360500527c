"""The task snapshot: what every asyncio task of a process was doing at one instant.

Snapshots are plain data (numbers, strings, tuples), never live Task or frame objects,
so they can be saved, sent over HTTP and analysed anywhere.  Every snapshot round-trips
through JSON with a ``schema`` tag; readers ignore fields they do not know and default
the ones they miss, so older and newer writers of the same major version interoperate.

Usage::

    snap = TaskSnapshot.from_json(text)
    for task in snap.tasks:
        print(task.id, task.wait.kind, task.wait.seconds)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Mapping

from diag.documents import finite_float, load_json, require, timestamp
from diag.errors import TargetError

SCHEMA_NAME = "diag.tasks"
SCHEMA_MAJOR = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_MAJOR}"
#: What reading a document's fields may raise on a document of the right schema but the
#: wrong shape (Infinity where an int goes, strings where lists go, ...).
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError)
#: What ``json.loads`` raises on text that is not JSON (nesting too deep included).
NOT_JSON = (ValueError, UnicodeDecodeError, RecursionError)

#: The fixed vocabulary of ``Wait.kind``.
WAIT_KINDS = (
    "semaphore", "lock", "condition", "event", "queue_get", "queue_put", "future", "task",
    "gather", "sleep", "stream_read", "executor", "running", "ready", "unknown",
)
#: Task states: running (on the loop now), ready (scheduled to run), waiting (suspended).
TASK_STATES = ("running", "ready", "waiting")


@dataclass(frozen=True)
class Frame:
    """One frame of an await stack; ``source`` is the stripped source line, if known."""

    file: str
    line: int
    function: str
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "function": self.function, "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Frame:
        return cls(str(d.get("file", "?")), int(d.get("line") or 0), str(d.get("function", "?")),
                   str(d.get("source") or ""))


def _shared_name(name: str) -> bool:
    """``module.NAME``, ``Type.attr`` or ``[key]``: what holds the object, not a local."""
    return "." in name or name.startswith("[")


@dataclass(frozen=True)
class Primitive:
    """A synchronisation object a task waits on, identified so that waiters group by it.

    ``id`` is the object's address in hex: the same object has the same id in every task
    of one snapshot.  ``label`` is its name (what holds it, ``module.NAME`` or
    ``Type.attr``, else a waiting frame's local); ``aliases`` are the other names frames
    use for it (a lock that one task calls ``first`` and another ``second``).  State
    fields that do not apply to a kind are ``None``.  A queue's ``unfinished`` counts
    items put and not yet marked done (``task_done()``), queued ones included: what
    ``Queue.join()`` waits for.
    """

    kind: str
    id: str
    label: str = ""
    value: int | None = None
    capacity: int | None = None
    locked: bool | None = None
    waiters: int | None = None
    is_set: bool | None = None
    size: int | None = None
    maxsize: int | None = None
    getters: int | None = None
    putters: int | None = None
    unfinished: int | None = None
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every name of the primitive, its label first."""
        return ((self.label,) if self.label else ()) + tuple(a for a in self.aliases if a != self.label)

    def named_by(self, frame_label: str = "") -> tuple[str, tuple[str, ...]]:
        """The name to show to a task whose waiting code calls it ``frame_label``, and the
        other names.  A bare local name is only what one frame calls it, so the waiting
        frame's own name is shown first, unless the label is a name every frame shares
        (``module.NAME``, ``Type.attr``, ``[key]``) and the frame's is a bare local."""
        label = self.label or frame_label or self.kind
        shown = label
        if frame_label and (_shared_name(frame_label) or not _shared_name(label)):
            shown = frame_label
        return shown, tuple(n for n in self.names if n != shown)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "id": self.id, "label": self.label}
        if self.aliases:
            d["aliases"] = list(self.aliases)
        for name in ("value", "capacity", "locked", "waiters", "is_set", "size", "maxsize",
                     "getters", "putters", "unfinished"):
            v = getattr(self, name)
            if v is not None:
                d[name] = v
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Primitive:
        def opt_int(k: str) -> int | None:
            v = d.get(k)
            return None if v is None else int(v)

        def opt_bool(k: str) -> bool | None:
            v = d.get(k)
            return None if v is None else bool(v)

        return cls(
            kind=str(d.get("kind", "unknown")), id=str(d.get("id", "")), label=str(d.get("label") or ""),
            value=opt_int("value"), capacity=opt_int("capacity"), locked=opt_bool("locked"),
            waiters=opt_int("waiters"), is_set=opt_bool("is_set"), size=opt_int("size"),
            maxsize=opt_int("maxsize"), getters=opt_int("getters"), putters=opt_int("putters"),
            unfinished=opt_int("unfinished"),
            aliases=tuple(str(a) for a in d.get("aliases") or ()),
        )


@dataclass(frozen=True)
class ChildPipe:
    """The parent's end of a child's output pipe: bytes read and not yet consumed by the
    program, and whether reading is paused (the buffer is full: the child then blocks
    writing once the OS pipe fills)."""

    name: str  # stdout or stderr
    buffered: int
    paused: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "buffered": self.buffered, "paused": self.paused}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChildPipe:
        return cls(str(d.get("name") or ""), int(d.get("buffered") or 0), bool(d.get("paused", False)))


@dataclass(frozen=True)
class ChildProcess:
    """The child process a ``Process.wait()`` waits for, as ``/proc`` shows it: ``state``
    is the scheduler state letter (``S`` sleeping, ``R`` running, ``D`` disk, ``Z``
    exited, not reaped), ``wchan`` the kernel function it sleeps in (``pipe_read``,
    ``pipe_write``, ...; empty when not readable); ``stdin_open``: the parent has not
    closed the child's stdin."""

    pid: int
    command: str = ""
    state: str = ""
    wchan: str = ""
    stdin_open: bool = False
    outputs: tuple[ChildPipe, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "command": self.command, "state": self.state, "wchan": self.wchan,
                "stdin_open": self.stdin_open, "outputs": [o.to_dict() for o in self.outputs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChildProcess:
        return cls(int(d.get("pid") or 0), str(d.get("command") or ""), str(d.get("state") or ""),
                   str(d.get("wchan") or ""), bool(d.get("stdin_open", False)),
                   tuple(ChildPipe.from_dict(o) for o in d.get("outputs") or () if isinstance(o, Mapping)))


@dataclass(frozen=True)
class PoolLease:
    """A connection of a client pool that is in use, and what keeps it: ``holder`` is the
    object holding it (``ClientResponse``; empty while its request is still being sent),
    ``request`` what it was taken for (``GET http://host/path``), ``status`` the response
    status (0 before one came), ``reading`` whether a task waits on the response body now,
    ``body_read`` whether the program has read the whole body."""

    holder: str = ""
    request: str = ""
    status: int = 0
    reading: bool = False
    body_read: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"holder": self.holder, "request": self.request, "status": self.status,
                "reading": self.reading, "body_read": self.body_read}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PoolLease:
        return cls(str(d.get("holder") or ""), str(d.get("request") or ""), int(d.get("status") or 0),
                   bool(d.get("reading", False)), bool(d.get("body_read", False)))


@dataclass(frozen=True)
class ConnectionPool:
    """The client connection pool a task waits for a free connection of (an aiohttp
    connector): ``limit`` (0: none) and ``limit_per_host``, connections ``in_use`` and
    requests ``waiting`` for one, and what holds the ones in use (``leases``, a bounded
    sample; empty when not looked for)."""

    kind: str
    id: str
    limit: int = 0
    limit_per_host: int = 0
    in_use: int = 0
    waiting: int = 0
    leases: tuple[PoolLease, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "limit": self.limit, "limit_per_host": self.limit_per_host,
                "in_use": self.in_use, "waiting": self.waiting, "leases": [lease.to_dict() for lease in self.leases]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConnectionPool:
        return cls(str(d.get("kind") or ""), str(d.get("id") or ""), int(d.get("limit") or 0),
                   int(d.get("limit_per_host") or 0), int(d.get("in_use") or 0), int(d.get("waiting") or 0),
                   tuple(PoolLease.from_dict(x) for x in d.get("leases") or () if isinstance(x, Mapping)))


def _count(d: Mapping[str, Any], key: str) -> int | None:
    """A byte count read from a document: a non-negative int, or None (absent or not one)."""
    value = d.get(key)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class FinishedChild:
    """A task a ``gather`` waits on that has already ended: its id, coroutine and how it
    ended (``returned``, ``raised ExcType``, ``cancelled``).  Ended tasks are not in the
    dump, so what the gather still waits for is told by these."""

    id: int
    coro: str
    outcome: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "coro": self.coro, "outcome": self.outcome}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinishedChild:
        return cls(int(d.get("id") or 0), str(d.get("coro") or ""), str(d.get("outcome") or ""))


@dataclass(frozen=True)
class Traffic:
    """A TCP connection's last data each way, as the kernel keeps it (Linux's TCP_INFO):
    seconds since this end last sent data and last received data (kept in scheduler
    ticks: a request and its answer on loopback often share one), the bytes sent and
    received so far (None on kernels without them), ``unread`` bytes the stream
    reader holds (part of a message read, the rest awaited), and the connection's
    ``local`` and ``peer`` addresses ("127.0.0.1:8080"; "" when unknown)."""

    sent_ago: float
    received_ago: float
    unread: int = 0
    bytes_sent: int | None = None
    bytes_received: int | None = None
    local: str = ""
    peer: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sent_ago": self.sent_ago, "received_ago": self.received_ago, "unread": self.unread,
                             "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received}
        if self.local or self.peer:
            d["local"], d["peer"] = self.local, self.peer
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Traffic:
        return cls(finite_float(d.get("sent_ago") or 0.0, "sent_ago"),
                   finite_float(d.get("received_ago") or 0.0, "received_ago"), _count(d, "unread") or 0,
                   _count(d, "bytes_sent"), _count(d, "bytes_received"),
                   str(d.get("local") or ""), str(d.get("peer") or ""))

    @property
    def unanswered(self) -> bool:
        """This end sent data after the peer's last: a question still waiting for its answer."""
        if self.sent_ago != self.received_ago:
            return self.sent_ago < self.received_ago
        return self.bytes_received == 0 and bool(self.bytes_sent)  # sent, and never heard a byte

    @property
    def silent(self) -> bool:
        """Neither end has sent a byte since the connection opened."""
        return self.sent_ago == self.received_ago and self.bytes_sent == 0 and self.bytes_received == 0

    @property
    def answered(self) -> bool:
        """The peer sent last, after (or in the same tick as) this end's last data, and no
        message is half read: what this end asked for (if anything) was answered, and a read
        now waits for whatever the peer sends next of its own accord."""
        if self.unread or self.unanswered or self.silent:
            return False
        return self.received_ago < self.sent_ago or bool(self.bytes_received)


@dataclass(frozen=True)
class WriteBacklog:
    """What a task waiting for a connection's writes to go (``drain()``, or
    ``wait_closed()`` on a closing transport) has in front of it: ``buffered`` bytes in
    the transport's write buffer, ``high_water`` its pause mark, ``in_kernel`` bytes in
    the socket's send queue not yet acknowledged by the peer (None where the OS does not
    say), ``closing`` whether ``close()`` was called, ``peer`` the remote address."""

    peer: str = ""
    buffered: int = 0
    high_water: int | None = None
    in_kernel: int | None = None
    closing: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"peer": self.peer, "buffered": self.buffered, "high_water": self.high_water,
                "in_kernel": self.in_kernel, "closing": self.closing}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WriteBacklog:
        return cls(str(d.get("peer") or ""), _count(d, "buffered") or 0, _count(d, "high_water"),
                   _count(d, "in_kernel"), bool(d.get("closing", False)))


@dataclass(frozen=True)
class Wait:
    """What a task is waiting on.

    ``seconds`` is a lower bound of how long it has waited on the same awaited object
    (see ``TaskSnapshot.wait_clock``); ``tasks`` lists awaited task ids for ``task`` and
    ``gather`` waits; ``time_left`` is the remaining delay of a ``sleep``.

    ``deadline`` is what can end the wait on its own, in seconds from the snapshot (an
    ``asyncio.timeout``, ``wait_for``, a timer that cancels the task), with ``deadline_by``
    naming it; None when diag found none (``deadline_known`` False: not looked for).
    ``future_id`` is the awaited future's id (``Primitive.id`` form) for future and
    executor waits.  ``stream_side`` says, for a stream read, whether the stream is the
    server's end of a connection (``server``: waiting for a client's next request, idle
    by design) or a client's (``client``: waiting for an answer).
    ``owner`` describes the object that holds the awaited future when that says
    something (``Client._pending, transport closed``); empty otherwise.  ``owner_ids``
    are the ids (``Primitive.id`` form) of the objects found keeping it, nearest first,
    so that a dead task or thread that used one of them can be named.  ``child`` is the
    child process of a ``Process.wait()``; ``pool`` the client connection pool of a wait
    for a free connection.  ``backlog`` is what a wait for a connection's writes (``drain``,
    ``wait_closed``) has in front of it; ``traffic`` a TCP stream read's last data each way.
    ``frame_label`` is the name the waiting code itself uses for ``primitive`` (the local
    in ``async with second:``), which may differ from the primitive's label.  ``finished``
    are the awaited tasks of a ``gather`` wait that have ended already.  ``predicate`` is,
    for a ``Condition.wait_for``, the predicate it waits to see true and the values it
    reads (``<lambda> at app.py:74: failed_on=1, self.seq=1``); ``predicate_own`` the
    names of its closure's plain values (numbers, strings), the waiting call's own
    (``failed_on``); ``woken`` how many times a ``notify()`` woke this very ``wait_for``
    call, its predicate still false after each (0: never, or not recorded), the last
    ``woken_seconds`` before the snapshot.  ``remote_loop`` is, for a wait on a coroutine
    that ``run_coroutine_threadsafe`` handed another loop, that loop (``LoopInfo.id``),
    ``remote_task`` its task there (None: not started yet).  ``owner_tasks`` are the
    tasks running a method of the nearest object found keeping the awaited future (a
    client's reader loop, for a request's future in the client's table of pending ones),
    the waiting task itself first when it is one of them (a pool's idle worker).
    ``peer_tasks`` are, for a client's stream read whose other end is served in this same
    process (``asyncio.start_server``), the tasks that can answer there: the connection's
    handler first, then any other task holding that end's writer.
    ``users`` are, for a wait whose other side may be gone (what it waits on, or its
    keeper, was used by a task that died, or the keeper's connection is closed), the
    other live tasks whose coroutines refer to what it waits on or to a keeper of it,
    but for those waiting on the same thing, and -1 when a loop timer or ready callback,
    or a thread, holds it; None when not looked for, or when too many tasks refer to it
    to list.  Long waits with no deadline on an event, a condition, a full queue or a
    plain future kept by an object get ``users`` too, with no sign of a gone side; for
    those, ``unreached`` says that nothing outside the tasks can reach what they wait on:
    no loop callback, transport or server, pending future's callback, signal handler or
    thread refers to it, nor runs code naming a module global that keeps it.  ``relay`` marks
    a wait asked the same only because its task is a user of another's: an idle worker that,
    handed work, might end that other wait; who could hand it work are its ``users``.
    """

    kind: str
    detail: str = ""
    primitive: Primitive | None = None
    seconds: float | None = None
    tasks: tuple[int, ...] = ()
    time_left: float | None = None
    created_at: Frame | None = None
    deadline: float | None = None
    deadline_by: str = ""
    deadline_known: bool = False
    owner: str = ""
    owner_closed: bool = False
    future_id: str = ""
    stream_side: str = ""
    owner_ids: tuple[str, ...] = ()
    child: ChildProcess | None = None
    frame_label: str = ""
    pool: ConnectionPool | None = None
    backlog: WriteBacklog | None = None
    traffic: Traffic | None = None
    finished: tuple[FinishedChild, ...] = ()
    predicate: str = ""
    predicate_own: tuple[str, ...] = ()
    woken: int = 0
    woken_seconds: float | None = None
    remote_loop: str = ""
    remote_task: int | None = None
    owner_tasks: tuple[int, ...] = ()
    peer_tasks: tuple[int, ...] = ()
    users: tuple[int, ...] | None = None
    unreached: bool = False
    relay: bool = False

    @property
    def target(self) -> str:
        """The id of what is awaited: the primitive's, else the future's ("" when unknown)."""
        return self.primitive.id if self.primitive is not None else self.future_id

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "detail": self.detail, "seconds": self.seconds}
        if self.users is not None:
            d["users"] = list(self.users)
        if self.unreached:
            d["unreached"] = True
        if self.relay:
            d["relay"] = True
        if self.owner_tasks:
            d["owner_tasks"] = list(self.owner_tasks)
        if self.peer_tasks:
            d["peer_tasks"] = list(self.peer_tasks)
        if self.predicate:
            d["predicate"] = self.predicate
        if self.predicate_own:
            d["predicate_own"] = list(self.predicate_own)
        if self.woken:
            d["woken"] = self.woken
            d["woken_seconds"] = self.woken_seconds
        if self.remote_loop:
            d["remote_loop"] = self.remote_loop
            d["remote_task"] = self.remote_task
        if self.frame_label:
            d["frame_label"] = self.frame_label
        if self.future_id:
            d["future_id"] = self.future_id
        if self.stream_side:
            d["stream_side"] = self.stream_side
        if self.deadline_known:
            d["deadline"] = self.deadline
            d["deadline_by"] = self.deadline_by
        if self.owner:
            d["owner"] = self.owner
            d["owner_closed"] = self.owner_closed
        if self.owner_ids:
            d["owner_ids"] = list(self.owner_ids)
        if self.child is not None:
            d["child"] = self.child.to_dict()
        if self.pool is not None:
            d["pool"] = self.pool.to_dict()
        if self.backlog is not None:
            d["backlog"] = self.backlog.to_dict()
        if self.traffic is not None:
            d["traffic"] = self.traffic.to_dict()
        if self.finished:
            d["finished"] = [f.to_dict() for f in self.finished]
        if self.primitive is not None:
            d["primitive"] = self.primitive.to_dict()
        if self.tasks:
            d["tasks"] = list(self.tasks)
        if self.time_left is not None:
            d["time_left"] = self.time_left
        if self.created_at is not None:
            d["created_at"] = self.created_at.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Wait:
        prim = d.get("primitive")
        created = d.get("created_at")
        kind = str(d.get("kind", "unknown"))
        return cls(
            kind=kind if kind in WAIT_KINDS else "unknown",
            detail=str(d.get("detail") or ""),
            primitive=Primitive.from_dict(prim) if isinstance(prim, Mapping) else None,
            seconds=None if d.get("seconds") is None else finite_float(d["seconds"], "wait seconds"),
            tasks=tuple(int(t) for t in d.get("tasks") or ()),
            time_left=None if d.get("time_left") is None else finite_float(d["time_left"], "time_left", infinite=True),
            created_at=Frame.from_dict(created) if isinstance(created, Mapping) else None,
            deadline=None if d.get("deadline") is None else finite_float(d["deadline"], "deadline", infinite=True),
            deadline_by=str(d.get("deadline_by") or ""),
            deadline_known="deadline" in d,
            owner=str(d.get("owner") or ""),
            owner_closed=bool(d.get("owner_closed", False)),
            future_id=str(d.get("future_id") or ""),
            stream_side=str(d.get("stream_side") or ""),
            owner_ids=tuple(str(i) for i in d.get("owner_ids") or ()),
            child=ChildProcess.from_dict(d["child"]) if isinstance(d.get("child"), Mapping) else None,
            pool=ConnectionPool.from_dict(d["pool"]) if isinstance(d.get("pool"), Mapping) else None,
            backlog=WriteBacklog.from_dict(d["backlog"]) if isinstance(d.get("backlog"), Mapping) else None,
            traffic=Traffic.from_dict(d["traffic"]) if isinstance(d.get("traffic"), Mapping) else None,
            frame_label=str(d.get("frame_label") or ""),
            finished=tuple(FinishedChild.from_dict(f) for f in d.get("finished") or () if isinstance(f, Mapping)),
            predicate=str(d.get("predicate") or ""),
            predicate_own=tuple(str(n) for n in d.get("predicate_own") or ()),
            woken=max(0, int(d.get("woken") or 0)),
            woken_seconds=(None if d.get("woken_seconds") is None
                           else finite_float(d["woken_seconds"], "woken_seconds")),
            remote_loop=str(d.get("remote_loop") or ""),
            remote_task=None if d.get("remote_task") is None else int(d["remote_task"]),
            owner_tasks=tuple(int(t) for t in d.get("owner_tasks") or ()),
            peer_tasks=tuple(int(t) for t in d.get("peer_tasks") or ()),
            users=None if d.get("users") is None else tuple(int(t) for t in d["users"]),
            unreached=d.get("unreached") is True,
            relay=d.get("relay") is True,
        )


@dataclass(frozen=True)
class CreatedBy:
    """Where a task was created: the creating task (if any) and the call site."""

    task_id: int | None
    task_name: str | None
    file: str
    line: int
    function: str

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "task_name": self.task_name, "file": self.file,
                "line": self.line, "function": self.function}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CreatedBy:
        tid = d.get("task_id")
        name = d.get("task_name")
        return cls(None if tid is None else int(tid), None if name is None else str(name),
                   str(d.get("file", "?")), int(d.get("line") or 0), str(d.get("function", "?")))


@dataclass(frozen=True)
class TaskInfo:
    """One pending task, or, in a grouped snapshot, a group of identical ones.

    ``stack`` is innermost frame first, as in Go's goroutine dumps.  ``count`` and
    ``ids`` describe the group a task stands for (1 and its own id when ungrouped).
    ``main`` marks the task an ``asyncio.run``/``run_until_complete`` waits on: the
    program's own entry point, held by its runner.  ``cancel_seconds`` is how long ago
    diag first saw a cancellation requested of the task (``cancelling()`` above 0),
    None when none is pending; ``handling_cancel`` says such a task is inside the
    ``except`` or ``finally`` block that is handling its ``CancelledError`` (cleaning up
    before it re-raises, or not).
    """

    id: int
    name: str
    coro: str
    state: str
    stack: tuple[Frame, ...]
    wait: Wait
    created_by: CreatedBy | None = None
    loop: str = ""
    cancelling: bool = False
    count: int = 1
    ids: tuple[int, ...] = ()
    main: bool = False
    cancel_seconds: float | None = None
    handling_cancel: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "name": self.name, "coro": self.coro, "state": self.state,
            "stack": [f.to_dict() for f in self.stack], "wait": self.wait.to_dict(),
            "created_by": None if self.created_by is None else self.created_by.to_dict(),
            "loop": self.loop, "cancelling": self.cancelling,
        }
        if self.main:
            d["main"] = True
        if self.cancel_seconds is not None:
            d["cancel_seconds"] = self.cancel_seconds
        if self.handling_cancel:
            d["handling_cancel"] = True
        if self.count != 1 or self.ids:
            d["count"] = self.count
            d["ids"] = list(self.ids)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskInfo:
        created = d.get("created_by")
        state = str(d.get("state", "waiting"))
        return cls(
            id=int(d["id"]), name=str(d.get("name", "")), coro=str(d.get("coro", "?")),
            state=state if state in TASK_STATES else "waiting",
            stack=tuple(Frame.from_dict(f) for f in d.get("stack") or ()),
            wait=Wait.from_dict(d.get("wait") or {}),
            created_by=CreatedBy.from_dict(created) if isinstance(created, Mapping) else None,
            loop=str(d.get("loop") or ""), cancelling=bool(d.get("cancelling", False)),
            count=int(d.get("count", 1)), ids=tuple(int(i) for i in d.get("ids") or ()),
            main=bool(d.get("main", False)),
            cancel_seconds=(None if d.get("cancel_seconds") is None
                            else finite_float(d["cancel_seconds"], "cancel_seconds")),
            handling_cancel=bool(d.get("handling_cancel", False)),
        )


#: Why a loop stalled: its own thread was busy or asleep in a call (``blocked``), or it was
#: ready to turn but did not get a CPU or the GIL (``starved``); ``unknown`` when not measured.
STALL_CAUSES = ("blocked", "starved", "unknown")


def _opt_float(d: Mapping[str, Any], key: str) -> float | None:
    v = d.get(key)
    return None if v is None else float(v)


@dataclass(frozen=True)
class StallStack:
    """A loop thread's stack as sampled during stalls, innermost first; ``own_wait`` is set
    when it is the loop's own poll (selector ``select``, uvloop's run): the loop was idle."""

    frames: tuple[Frame, ...]
    own_wait: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"frames": [f.to_dict() for f in self.frames], "own_wait": self.own_wait}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StallStack:
        return cls(tuple(Frame.from_dict(f) for f in d.get("frames") or ()), bool(d.get("own_wait", False)))


@dataclass(frozen=True)
class Stall:
    """One stall of a loop: from the heartbeat's sending to its run (``seconds``).

    ``cause`` is ``blocked`` or ``starved`` (see ``STALL_CAUSES``) and ``reason`` the fact
    behind it: ``cpu`` (the loop thread ran code), ``call`` (it slept in a call that is
    not the loop's poll), ``runqueue`` (runnable, waiting for a CPU), ``throttled`` (the
    cgroup's CPU quota), ``gil`` (woken, waiting for the GIL while other threads ran),
    ``process`` (no thread of the process ran).  The figures are seconds during the stall,
    ``None`` where the platform does not give them: the loop thread's CPU time, its time
    runnable on a run queue, the cgroup's throttled time, and the CPU time of the process's
    other threads.  ``stacks`` are (index into ``LoopInfo.stall_stacks``, samples) pairs,
    most sampled first; ``samples`` counts every sample taken (about one per 0.1 s).
    """

    started_at: float
    seconds: float
    cause: str = "unknown"
    reason: str = ""
    ongoing: bool = False
    cpu_seconds: float | None = None
    runqueue_seconds: float | None = None
    throttled_seconds: float | None = None
    others_cpu_seconds: float | None = None
    samples: int = 0
    stacks: tuple[tuple[int, int], ...] = ()
    #: seconds of ``seconds`` from before diag watched the loop (attached to a loop already
    #: stalled: its overdue timers date the stall's start); the figures cover the rest only
    before_watch: float = 0.0
    #: the stall began as the loop started, before it first went idle: the program's start-up
    #: code (loading, seeding, connecting) ran on it, watched from the loop's first run
    at_start: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "seconds": self.seconds, "before_watch": self.before_watch,
                "at_start": self.at_start, "cause": self.cause,
                "reason": self.reason, "ongoing": self.ongoing, "cpu_seconds": self.cpu_seconds,
                "runqueue_seconds": self.runqueue_seconds, "throttled_seconds": self.throttled_seconds,
                "others_cpu_seconds": self.others_cpu_seconds, "samples": self.samples,
                "stacks": [list(s) for s in self.stacks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Stall:
        cause = str(d.get("cause") or "unknown")
        return cls(
            started_at=float(d.get("started_at") or 0.0), seconds=float(d.get("seconds") or 0.0),
            cause=cause if cause in STALL_CAUSES else "unknown", reason=str(d.get("reason") or ""),
            ongoing=bool(d.get("ongoing", False)), cpu_seconds=_opt_float(d, "cpu_seconds"),
            runqueue_seconds=_opt_float(d, "runqueue_seconds"),
            throttled_seconds=_opt_float(d, "throttled_seconds"),
            others_cpu_seconds=_opt_float(d, "others_cpu_seconds"), samples=int(d.get("samples") or 0),
            stacks=tuple((int(s[0]), int(s[1])) for s in d.get("stacks") or ()),
            before_watch=max(0.0, finite_float(d.get("before_watch") or 0.0, "before_watch")),
            at_start=bool(d.get("at_start", False)),
        )


@dataclass(frozen=True)
class Unwoken:
    """An episode of a loop asleep in its selector with callbacks in its ready queue and
    its thread not woken: they were scheduled from another thread without
    ``call_soon_threadsafe`` (``Future.set_result``, ``Event.set``, ``call_soon`` from a
    thread).  ``started_at`` is Unix time, ``seconds`` how long it lasted (a lower bound;
    so far, when ``ongoing``), ``callbacks`` what they would do, ``task_ids`` the tasks
    they would wake."""

    started_at: float
    seconds: float
    ongoing: bool = False
    callbacks: tuple[str, ...] = ()
    task_ids: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "seconds": self.seconds, "ongoing": self.ongoing,
                "callbacks": list(self.callbacks), "task_ids": list(self.task_ids)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Unwoken:
        return cls(finite_float(d.get("started_at") or 0.0, "started_at"),
                   finite_float(d.get("seconds") or 0.0, "seconds"), bool(d.get("ongoing", False)),
                   tuple(str(c) for c in d.get("callbacks") or ()), tuple(int(t) for t in d.get("task_ids") or ()))


@dataclass(frozen=True)
class LoopInfo:
    """Health of one event loop, as the agent's heartbeat sees it.

    ``stalled_seconds`` is how long the loop has not turned (0 when it is turning);
    ``blocking_stack`` is the loop thread's stack when stalled, innermost first.
    ``stalls`` are the stalls of the last ``stall_window`` seconds (the agent's history,
    oldest first, the current one last with ``ongoing``), their sampled stacks in
    ``stall_stacks``; ``stalls_total``/``stall_seconds_total`` and
    ``starved_total``/``starved_seconds_total`` count every stall (and the starved ones)
    since the agent started.  ``lag_peaks`` holds, for each second of the last minute
    whose worst heartbeat lag was 1 ms or more, (Unix time of that beat, its lag),
    oldest first: ``lag_seconds`` is only the latest beat's.  ``unwoken`` are the
    episodes of the window in which the loop slept with callbacks ready (asyncio's loops;
    ``unwoken_total`` counts them all since the agent started).
    """

    id: str
    thread_id: int | None
    thread_name: str
    running: bool
    lag_seconds: float | None = None
    stalled_seconds: float = 0.0
    blocking_stack: tuple[Frame, ...] = ()
    stall_window: float = 0.0
    stalls: tuple[Stall, ...] = ()
    stall_stacks: tuple[StallStack, ...] = ()
    stalls_total: int = 0
    stall_seconds_total: float = 0.0
    starved_total: int = 0
    starved_seconds_total: float = 0.0
    lag_peaks: tuple[tuple[float, float], ...] = ()
    unwoken: tuple[Unwoken, ...] = ()
    unwoken_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "thread_id": self.thread_id, "thread_name": self.thread_name,
                "running": self.running, "lag_seconds": self.lag_seconds,
                "stalled_seconds": self.stalled_seconds,
                "blocking_stack": [f.to_dict() for f in self.blocking_stack],
                "stall_window": self.stall_window, "stalls": [s.to_dict() for s in self.stalls],
                "stall_stacks": [s.to_dict() for s in self.stall_stacks],
                "stalls_total": self.stalls_total, "stall_seconds_total": self.stall_seconds_total,
                "starved_total": self.starved_total, "starved_seconds_total": self.starved_seconds_total,
                "lag_peaks": [[at, lag] for at, lag in self.lag_peaks],
                "unwoken": [u.to_dict() for u in self.unwoken], "unwoken_total": self.unwoken_total}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoopInfo:
        tid = d.get("thread_id")
        lag = d.get("lag_seconds")
        return cls(str(d.get("id", "")), None if tid is None else int(tid), str(d.get("thread_name", "")),
                   bool(d.get("running", False)), None if lag is None else finite_float(lag, "lag_seconds"),
                   finite_float(d.get("stalled_seconds") or 0.0, "stalled_seconds"),
                   tuple(Frame.from_dict(f) for f in d.get("blocking_stack") or ()),
                   stall_window=finite_float(d.get("stall_window") or 0.0, "stall_window"),
                   stalls=tuple(Stall.from_dict(s) for s in d.get("stalls") or ()),
                   stall_stacks=tuple(StallStack.from_dict(s) for s in d.get("stall_stacks") or ()),
                   stalls_total=int(d.get("stalls_total") or 0),
                   stall_seconds_total=finite_float(d.get("stall_seconds_total") or 0.0, "stall_seconds_total"),
                   starved_total=int(d.get("starved_total") or 0),
                   starved_seconds_total=finite_float(d.get("starved_seconds_total") or 0.0, "starved_seconds_total"),
                   lag_peaks=tuple((finite_float(at, "lag_peaks"), finite_float(lag, "lag_peaks"))
                                   for at, lag in d.get("lag_peaks") or ()),
                   unwoken=tuple(Unwoken.from_dict(u) for u in d.get("unwoken") or ()),
                   unwoken_total=int(d.get("unwoken_total") or 0))


@dataclass(frozen=True)
class DeadTask:
    """A task that ended badly, from the agent's bounded log.

    ``how`` is ``exception`` (it raised), ``thread_exception`` (a thread, not a task, died
    of an exception: ``name`` is the thread's, ``coro`` its function, ``id`` negative),
    ``callback_exception`` (a callback of the loop raised, a protocol's
    ``datagram_received`` say, and the loop only logged it: ``name`` is the loop's
    message, ``coro`` the program's function it called, ``id`` negative), or
    ``destroyed_pending`` (the GC destroyed it
    while it was still waiting: nothing could ever wake it, and it never ran its
    ``finally`` blocks or released what it held).  ``ended_seconds`` is how long before
    the snapshot diag saw it end; ``stack`` is where it raised (innermost first), or the
    last await stack diag saw; ``touched`` are the ids (``Primitive.id`` form) of the
    primitives and futures its last frames referred to, so a waiter on one of them can
    be told who was serving it.
    """

    id: int
    name: str
    coro: str
    how: str
    ended_seconds: float
    exception: str = ""
    stack: tuple[Frame, ...] = ()
    created_by: CreatedBy | None = None
    touched: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "coro": self.coro, "how": self.how,
                "ended_seconds": self.ended_seconds, "exception": self.exception,
                "stack": [f.to_dict() for f in self.stack],
                "created_by": None if self.created_by is None else self.created_by.to_dict(),
                "touched": list(self.touched)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeadTask:
        created = d.get("created_by")
        return cls(int(d.get("id") or 0), str(d.get("name") or ""), str(d.get("coro") or "?"),
                   str(d.get("how") or "exception"), finite_float(d.get("ended_seconds") or 0.0, "ended_seconds"),
                   str(d.get("exception") or ""), tuple(Frame.from_dict(f) for f in d.get("stack") or ()),
                   CreatedBy.from_dict(created) if isinstance(created, Mapping) else None,
                   tuple(str(t) for t in d.get("touched") or ()))


@dataclass(frozen=True)
class ThreadInfo:
    """One thread of the process other than the agent's own, as Go's dump shows every
    goroutine: its stack (innermost first) and, for an executor's worker, which executor
    and the asyncio future of the call it runs (``Primitive.id`` form of that future).
    ``waits_task`` is the task a thread blocks on with no timeout, in the ``result()``
    of the future ``run_coroutine_threadsafe`` gave it (None: not such a wait)."""

    id: int
    name: str
    stack: tuple[Frame, ...]
    daemon: bool = False
    executor: str = ""
    runs_future: str = ""
    loop: str = ""
    waits_task: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "name": self.name, "daemon": self.daemon, "executor": self.executor,
                             "runs_future": self.runs_future, "loop": self.loop,
                             "stack": [f.to_dict() for f in self.stack]}
        if self.waits_task is not None:
            d["waits_task"] = self.waits_task
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThreadInfo:
        waits = d.get("waits_task")
        return cls(int(d.get("id") or 0), str(d.get("name") or ""),
                   tuple(Frame.from_dict(f) for f in d.get("stack") or ()), bool(d.get("daemon", False)),
                   str(d.get("executor") or ""), str(d.get("runs_future") or ""), str(d.get("loop") or ""),
                   int(waits) if isinstance(waits, int) and not isinstance(waits, bool) else None)


@dataclass(frozen=True)
class ExecutorInfo:
    """A thread pool of ``concurrent.futures``: its workers, how many run a call now, and
    how many calls wait in its queue for a free worker; ``queued_futures``: the asyncio
    futures (``Primitive.id`` form) of the queued calls that tasks await
    (``run_in_executor``), a bounded sample."""

    name: str
    max_workers: int
    threads: tuple[int, ...]
    busy: int
    queued: int
    default_of_loop: str = ""
    queued_futures: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "max_workers": self.max_workers, "threads": list(self.threads),
                             "busy": self.busy, "queued": self.queued, "default_of_loop": self.default_of_loop}
        if self.queued_futures:
            d["queued_futures"] = list(self.queued_futures)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExecutorInfo:
        return cls(str(d.get("name") or ""), int(d.get("max_workers") or 0),
                   tuple(int(t) for t in d.get("threads") or ()), int(d.get("busy") or 0),
                   int(d.get("queued") or 0), str(d.get("default_of_loop") or ""),
                   tuple(str(f) for f in d.get("queued_futures") or ()))


@dataclass(frozen=True)
class ProcessInfo:
    """Which process a snapshot came from."""

    pid: int
    argv: tuple[str, ...] = ()
    python: str = ""
    diag_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "argv": list(self.argv), "python": self.python,
                "diag_version": self.diag_version}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProcessInfo:
        return cls(int(d.get("pid") or 0), tuple(str(a) for a in d.get("argv") or ()),
                   str(d.get("python") or ""), str(d.get("diag_version") or ""))


#: One task as a grouped dump first reads it: (id, state, coroutine, stack, wait, the
#: collector's handle for making its whole ``TaskInfo`` if it is the first of its group).
Sketch = tuple[int, str, str, tuple[Frame, ...], Wait, object]


@dataclass(frozen=True)
class TaskSnapshot:
    """All pending tasks of one process at ``taken_at`` (Unix time).

    ``total_tasks`` counts every pending task seen, before filters and caps; ``notes``
    says what was cut or could not be read; ``grouped`` is set when ``tasks`` holds
    groups (``TaskInfo.count``) rather than single tasks.  ``dead_tasks`` is the agent's
    log of tasks that ended badly (newest last); ``threads`` every thread but the agent's.
    ``destroyed_seen`` is set when every loop reports tasks the GC destroys while pending
    (asyncio's loops do, through the agent's hook; uvloop's cannot be hooked).  ``totals``
    counts every task by state (``running``, ``ready``, ``waiting``) and every waiting
    one by wait kind (``wait:event``, ...) when ``tasks`` was cut to fit an answer, so
    that counts stay totals.
    """

    taken_at: float
    process: ProcessInfo
    tasks: tuple[TaskInfo, ...]
    loops: tuple[LoopInfo, ...] = ()
    total_tasks: int = 0
    grouped: bool = False
    wait_clock: str = ""
    notes: tuple[str, ...] = ()
    collect_seconds: float = 0.0
    await_cycles: tuple[tuple[int, ...], ...] = ()
    dead_tasks: tuple[DeadTask, ...] = ()
    threads: tuple[ThreadInfo, ...] = ()
    executors: tuple[ExecutorInfo, ...] = ()
    destroyed_seen: bool = False
    totals: tuple[tuple[str, int], ...] = ()
    schema: str = SCHEMA

    def with_tasks(self, tasks: tuple[TaskInfo, ...], *, grouped: bool | None = None,
                   notes: tuple[str, ...] = (),
                   await_cycles: tuple[tuple[int, ...], ...] | None = None) -> TaskSnapshot:
        return replace(self, tasks=tasks, grouped=self.grouped if grouped is None else grouped,
                       notes=self.notes + notes,
                       await_cycles=self.await_cycles if await_cycles is None else await_cycles)

    def to_dict(self) -> dict[str, Any]:
        d = self.to_dict_without_tasks()
        d["tasks"] = [t.to_dict() for t in self.tasks]
        return d

    def to_dict_without_tasks(self) -> dict[str, Any]:
        """``to_dict`` but for ``tasks``: what the compact form (``diag.model.task_wire``) shares."""
        return {
            "schema": SCHEMA, "taken_at": self.taken_at, "process": self.process.to_dict(),
            "total_tasks": self.total_tasks, "grouped": self.grouped, "wait_clock": self.wait_clock,
            "notes": list(self.notes), "collect_seconds": self.collect_seconds,
            "await_cycles": [list(c) for c in self.await_cycles],
            "loops": [lp.to_dict() for lp in self.loops],
            "dead_tasks": [t.to_dict() for t in self.dead_tasks],
            "threads": [t.to_dict() for t in self.threads],
            "executors": [e.to_dict() for e in self.executors], "destroyed_seen": self.destroyed_seen,
            **({"totals": dict(self.totals)} if self.totals else {}),
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> TaskSnapshot:
        """Build from parsed JSON; raises ``TargetError`` for anything that is not a snapshot."""
        if not isinstance(d, Mapping):
            raise TargetError("not a diag task snapshot (expected a JSON object)")
        if schema_major(d.get("schema"), SCHEMA_NAME, (SCHEMA_MAJOR, 2)) == 2:
            from diag.model.task_wire import decode  # the compact form, built on these types
            return decode(d)
        require(d, ("taken_at", "tasks"), "diag task snapshot")
        try:
            return cls(
                taken_at=timestamp(d.get("taken_at")),
                process=ProcessInfo.from_dict(d.get("process") or {}),
                tasks=tuple(TaskInfo.from_dict(t) for t in d.get("tasks") or ()),
                loops=tuple(LoopInfo.from_dict(lp) for lp in d.get("loops") or ()),
                total_tasks=int(d.get("total_tasks") or 0),
                grouped=bool(d.get("grouped", False)),
                wait_clock=str(d.get("wait_clock") or ""),
                notes=tuple(str(n) for n in d.get("notes") or ()),
                collect_seconds=finite_float(d.get("collect_seconds") or 0.0, "collect_seconds"),
                await_cycles=tuple(tuple(int(i) for i in c) for c in d.get("await_cycles") or ()),
                dead_tasks=tuple(DeadTask.from_dict(t) for t in d.get("dead_tasks") or ()),
                threads=tuple(ThreadInfo.from_dict(t) for t in d.get("threads") or ()),
                executors=tuple(ExecutorInfo.from_dict(e) for e in d.get("executors") or ()),
                destroyed_seen=bool(d.get("destroyed_seen", False)),
                totals=tuple((str(k), int(v)) for k, v in (d.get("totals") or {}).items()),
            )
        except MALFORMED as err:
            raise TargetError(f"malformed diag task snapshot: {err.__class__.__name__}: {err}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskSnapshot:
        try:
            data = load_json(text)
        except NOT_JSON as err:
            raise TargetError(f"not a diag task snapshot: invalid JSON ({err})") from None
        return cls.from_dict(data)


def schema_major(tag: object, name: str, majors: tuple[int, ...]) -> int:
    """The major version of ``tag`` when it is ``name/N`` with N one of ``majors``; other
    documents, older and newer majors are refused as ``check_schema`` does."""
    if isinstance(tag, str):
        got_name, _, got_major = tag.partition("/")
        try:
            got = int(got_major.split(".")[0])
        except ValueError:
            got = -1
        if got_name == name and got in majors:
            return got
    check_schema(tag, name, max(majors))
    if isinstance(tag, str) and tag.partition("/")[0] == name:  # older than all of them
        raise TargetError(f"{tag} is older than this diag reads ({name}/{min(majors)})")
    raise TargetError(f"not a {name} document")


def check_schema(tag: object, name: str, major: int) -> None:
    """Accept ``name/major``; refuse other documents and newer majors with a clear message."""
    if not isinstance(tag, str) or "/" not in tag:
        raise TargetError(f"not a {name} document (no schema tag)")
    got_name, _, got_major = tag.partition("/")
    if got_name != name:
        raise TargetError(f"expected a {name} document, got {got_name!r}")
    try:
        got = int(got_major.split(".")[0])
    except ValueError:
        raise TargetError(f"unreadable schema version {tag!r}") from None
    if got > major:
        raise TargetError(f"{tag} is newer than this diag understands ({name}/{major}); upgrade diag")
    if got < major:
        raise TargetError(f"{tag} is older than this diag reads ({name}/{major})")


__all__ = [
    "SCHEMA", "count_totals", "WAIT_KINDS", "TASK_STATES", "Frame", "Primitive", "ChildPipe", "ChildProcess", "PoolLease",
    "ConnectionPool", "Traffic", "WriteBacklog", "Wait", "CreatedBy", "TaskInfo",
    "LoopInfo", "Stall", "StallStack", "STALL_CAUSES", "ProcessInfo", "TaskSnapshot", "DeadTask", "ThreadInfo",
    "ExecutorInfo", "check_schema", "MALFORMED", "NOT_JSON",
]


def count_totals(tasks: tuple[TaskInfo, ...]) -> tuple[tuple[str, int], ...]:
    """``TaskSnapshot.totals`` of ``tasks``: by state, and waiting tasks by wait kind."""
    counts: dict[str, int] = {state: 0 for state in TASK_STATES}
    for task in tasks:
        counts[task.state] = counts.get(task.state, 0) + task.count
        if task.state == "waiting":
            key = f"wait:{task.wait.kind}"
            counts[key] = counts.get(key, 0) + task.count
    return tuple(counts.items())


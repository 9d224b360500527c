"""The agent's HTTP API, independent of which server carries it.

``dispatch(method, path, query)`` is shared by the agent's own thread server and by the
aiohttp integration, so both answer the same paths with the same bytes.  Every
failure becomes a JSON error response; nothing raises out of here.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Generator, Mapping, Sequence

import diag
from diag.agent_protocol import PREFIX
from diag.analysis.task_groups import TaskQuery, filter_tasks, find_cycles, grouped_view, sketch_query, task_view
from diag.collect import gc_pause
from diag.collect.loop_watch import LoopWatch
from diag.collect.task_collector import (
    CollectOptions, TaskSketches, TaskStream, collect_tasks, collect_loops, paused_gc, process_info, _FrameCache,
)
from diag.collect.loop_watch import iter_all_tasks
from diag.collect.safe_read import future_done
from diag.model import task_wire
from diag.errors import DiagError
from diag.model.task_snapshot import TaskInfo, TaskSnapshot

AGENT_SCHEMA = "diag.agent/1"
#: A second dump waits this long for the first before answering 503 busy.
BUSY_WAIT = 10.0
#: A snapshot younger than this is served again instead of collecting a new one.
SNAPSHOT_REUSE = 0.25
#: Snapshots of more tasks than this are not kept for reuse (see ``Endpoints.tasks``).
MAX_CACHED_SNAPSHOT_TASKS = 10_000
#: An answer to the same GET of a cached route (same query, same excluded tasks) is sent
#: again for this long, so clients polling in a loop cost the target the HTTP exchange
#: only, not a new view and JSON encoding each.
ANSWER_REUSE = SNAPSHOT_REUSE
#: Cached answers kept at once (distinct queries).
MAX_CACHED_ANSWERS = 32
#: The largest answer the agent sends.  A bigger one keeps its first entries (biggest
#: groups, interesting primitives, busiest functions) and says so: ``"truncated": true``
#: and a note starting "cut:".
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
#: How long a task collection may run; past it the dump stops and says how far it got.
COLLECT_BUDGET = 5.0
#: A full dump (``debug=2``, compact) of more pending tasks than this is collected as it is
#: sent, a slice at a time (``TaskStream``): the target holds one slice of descriptions,
#: not a snapshot of every task (about 370 bytes a task).
STREAM_TASKS = 20_000
#: How long a streamed collection may run: it describes every task (about 10-30 us each,
#: a million in under a minute), the loop turning between its slices.
STREAM_COLLECT_BUDGET = 120.0
#: Why ``filter=`` is refused: the client matches its regex (see ``parse_task_query``).
FILTER_REFUSED = ("filter= is not matched by the agent (a regex can backtrack for hours holding the "
                  "target's GIL): fetch the tasks and filter them in the client, as the diag CLI does "
                  "(upgrade an older one)")
#: The longest a streamed task dump keeps the cyclic GC paused while it is sent.
STREAM_GC_PAUSE = 2.0
#: Entries of a long list encoded per call of the JSON encoder, which holds the GIL for
#: the whole call: the target's loop waits that long (2,000 tasks: a few milliseconds).
ENCODE_SLICE = 2000


@dataclass(frozen=True)
class Response:
    """An answer: ``body``, or, for an answer sent as it is built, ``stream``: its pieces
    (a generator run by the server while it sends; ``body`` is then empty)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    stream: GcPausedStream | None = None

    def whole(self) -> bytes:
        """The body, the stream's pieces joined (for a server that cannot stream)."""
        if self.stream is None:
            return self.body
        try:
            return b"".join(self.stream)
        finally:
            self.stream.close()


class _Full(Exception):
    """The text being built passed its limit."""


@dataclass(frozen=True)
class Rows:
    """A list member of a document whose entries are made as they are encoded:
    ``convert(item)`` for each of ``items``, a slice at a time.  Made whole, the entries
    of a 60,000-task dump are 88 MB of dicts besides their 51 MB of text; made a slice
    at a time, only one slice's dicts exist at once."""

    items: Sequence[Any]
    convert: Callable[[Any], Any]

    def __len__(self) -> int:
        return len(self.items)


def encode(doc: Mapping[str, Any], limit: int | None = None) -> tuple[bytes | None, int]:
    """``json.dumps(doc).encode()`` byte for byte, and its size; ``(None, estimated size)``
    as soon as it is sure to pass ``limit`` bytes.

    Long lists are encoded a slice at a time, at any depth (a sync answer's tasks sit
    inside its ``tasks`` member): in between, the target's own threads get the GIL.  In
    one call (and a few copies of the whole text), a 100,000-task dump held it, so
    stalled the target's loop, for a third of a second; a 200,000-task sync answer for
    over a second."""
    encoder = _Encoder(limit)
    try:
        encoder.value(dict(doc))
    except _Full:
        return None, max(encoder.size, encoder.estimate)
    return b"".join(encoder.pieces), encoder.size


class _Encoder:
    """The state of one ``encode``.  A class, not nested functions: a function that
    calls itself through its closure is a reference cycle, and the pieces it closes over
    (the whole answer) would then live until the cyclic GC's next full collection, which
    a large program (and a GC paused while dumps are taken) may not run for a long time:
    the program grew by the size of every answer, 65 MB a dump at 60,000 tasks."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.pieces: list[bytes] = []
        self.size = 0
        self.estimate = 0

    def add(self, piece: bytes) -> None:
        self.pieces.append(piece)
        self.size += len(piece)
        if self.limit is not None and self.size > self.limit:
            raise _Full

    def value(self, value: Any) -> None:
        if type(value) is dict and _has_long_list(value):
            self.add(b"{")
            for n, (key, member) in enumerate(value.items()):
                self.add((b"" if n == 0 else b", ") + f"{json.dumps(key)}: ".encode())
                self.value(member)
            self.add(b"}")
        elif type(value) is Rows or (type(value) is list and len(value) > ENCODE_SLICE):
            self.add(b"[")
            for i in range(0, len(value), ENCODE_SLICE):
                part = ([value.convert(item) for item in value.items[i:i + ENCODE_SLICE]]
                        if isinstance(value, Rows) else value[i:i + ENCODE_SLICE])
                piece = json.dumps(part)[1:-1].encode()
                del part
                try:
                    self.add(piece if i == 0 else b", " + piece)
                except _Full:
                    done = min(i + ENCODE_SLICE, len(value))
                    self.estimate = self.size * len(value) // done
                    raise
            self.add(b"]")
        else:
            self.add(json.dumps(value).encode())


def _has_long_list(value: Mapping[str, Any], depth: int = 3) -> bool:
    """Whether a long list sits in ``value``, within ``depth`` levels of members."""
    for member in value.values():
        if type(member) is Rows or (type(member) is list and len(member) > ENCODE_SLICE):
            return True
        if depth > 1 and type(member) is dict and _has_long_list(member, depth - 1):
            return True
    return False


def json_response(status: int, data: object) -> Response:
    return Response(status, json.dumps(data).encode())


def error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


def shown(raw: object, limit: int = 60) -> str:
    """A client-sent value quoted in an error message, clipped: errors stay one short line."""
    text = repr(raw)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _float(query: Mapping[str, str], name: str) -> float | None:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise DiagError(f"{name} must be a number, not {shown(raw)}") from None
    if value != value or value < 0:
        raise DiagError(f"{name} must be a number >= 0")
    return value


def _int(query: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = query.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:  # also digit strings too long to convert
        raise DiagError(f"{name} must be an integer, not {shown(raw)}") from None


def fit(build: Callable[[int | None], dict[str, Any]], count: int, what: str) -> Response:
    """A 200 answer of ``build(None)`` (the whole document) within ``MAX_RESPONSE_BYTES``.

    Too big, it is rebuilt with ``build(keep)``, the first ``keep`` of its ``count``
    entries, shrinking until it fits; the document then says ``"truncated": true`` and
    its notes say what was cut.  Documents that cannot fit become an error.
    """
    doc = build(None)
    doc["truncated"] = False
    body, size = encode(doc, MAX_RESPONSE_BYTES)
    keep = count
    while body is None and keep > 0:
        keep = min(keep - 1, int(keep * MAX_RESPONSE_BYTES / size * 0.9))
        doc = build(keep)
        doc["truncated"] = True
        doc["notes"] = [*doc.get("notes", ()), f"cut: kept {keep} of {count} {what} to stay under "
                                                f"{MAX_RESPONSE_BYTES} bytes (the agent's answer budget)"]
        body, size = encode(doc, MAX_RESPONSE_BYTES)
    if body is None:
        return error(507, f"the answer would be {size} bytes or more, over the agent's budget of "
                          f"{MAX_RESPONSE_BYTES}; narrow the request")
    return Response(200, body)


def _task_document(view: TaskSnapshot) -> dict[str, Any]:
    """``view.to_dict()``, its tasks made as they are encoded (see ``Rows``)."""
    doc = view.to_dict_without_tasks()
    doc["tasks"] = Rows(view.tasks, TaskInfo.to_dict)
    return doc


def parse_task_query(query: Mapping[str, str]) -> TaskQuery:
    """Query string -> ``TaskQuery``; ``DiagError`` with a clear message on bad values."""
    states = tuple(s for s in (query.get("state") or "").split(",") if s)
    if query.get("filter"):
        # No user-supplied computation that can run unbounded runs on the agent's thread:
        # clients fetch the tasks and match their regex themselves (diag/cli/tasks_cmd.py).
        raise DiagError(FILTER_REFUSED)
    tq = TaskQuery(
        debug=_int(query, "debug", 1) or 1,
        states=states,
        min_wait=_float(query, "min_wait"),
        limit=_int(query, "limit", TaskQuery.limit),
    )
    tq.validate()
    return tq


class GcPausedStream:
    """The pieces of a streamed answer, made with the cyclic GC paused (see ``paused_gc``).

    It starts holding a pause taken where its snapshot was collected, and keeps it while
    the pieces are sent, for up to ``STREAM_GC_PAUSE`` seconds: a collection while the
    snapshot is alive walks it and every task of the program, holding the GIL for a third
    of a second at 100,000 tasks, and the objects made in the pause would count towards
    one as soon as it ended.  The snapshot is freed in a pause too.  Past the limit (a
    slow client) the GC runs between pieces again: no client keeps it off for long.
    ``close`` (or the end of the pieces) gives the pause back, whatever happened."""

    def __init__(self, pieces: Generator[bytes, None, None], on_close: Callable[[], None] | None = None) -> None:
        gc_pause.pause()
        self._held = True
        self._pieces: Generator[bytes, None, None] | None = pieces
        self._start = time.monotonic()
        self._on_close = on_close  # called once, when the pieces end or are given up

    def __iter__(self) -> GcPausedStream:
        return self

    def __next__(self) -> bytes:
        if self._pieces is None:
            raise StopIteration
        if not self._held:
            gc_pause.pause()
        try:
            piece = next(self._pieces, None)
        except BaseException:
            if not self._held:
                gc_pause.resume()
            self.close()
            raise
        if not self._held:
            gc_pause.resume()
        if piece is None:
            self.close()
            raise StopIteration
        if self._held and time.monotonic() - self._start > STREAM_GC_PAUSE:
            self._held = False
            gc_pause.resume()
        return piece

    def close(self) -> None:
        pieces, self._pieces = self._pieces, None
        if pieces is None:
            return
        if not self._held:
            gc_pause.pause()
        self._held = False
        try:
            pieces.close()
            del pieces  # the snapshot goes with it, freed while the GC is paused
        finally:
            gc_pause.resume()
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()

    def __del__(self) -> None:
        self.close()


def _pending_more_than(count: int, exclude: frozenset[int]) -> bool:
    """Whether this process has more than ``count`` pending tasks (not counting ``exclude``)."""
    n = 0
    for task in iter_all_tasks():
        if not future_done(task) and id(task) not in exclude:
            n += 1
            if n > count:
                return True
    return False


def _stream_pieces(stream: TaskStream, tq: TaskQuery, sliced: bool = False) -> Generator[bytes, None, None]:
    """The compact document of ``stream``'s tasks as ``tq`` keeps them (states, least wait,
    limit), a slice at a time; the await cycles and the limit's note come with the rest."""
    matched = sent = 0
    everything = not tq.states and tq.min_wait is None  # every task matches: counted without describing

    def kept() -> Generator[tuple[TaskInfo, ...], None, None]:
        nonlocal matched, sent
        for infos in stream.slices():
            keep = filter_tasks(infos, tq)
            matched += len(keep)
            if tq.limit is not None:
                keep = keep[:max(0, tq.limit - sent)]
            sent += len(keep)
            yield keep
            if everything and tq.limit is not None and sent >= tq.limit:
                stream.stop()
        if stream.stopped:
            matched = len(stream) - stream.ended

    def finish() -> TaskSnapshot:
        rest = stream.snapshot()
        notes = (f"showing {tq.limit} of {matched} tasks (--limit)",) if matched > sent else ()
        return replace(rest, notes=rest.notes + notes, await_cycles=tuple(find_cycles(stream.edges)))

    head = {"taken_at": stream.run.taken_at, "process": process_info().to_dict()}
    return task_wire.stream_slices(kept(), finish, head, sliced)


def parse_wire(query: Mapping[str, str]) -> int:
    """The form of a task dump a client asks for with ``wire=``: 1 (``diag.tasks/1``, the
    default: what older clients read) or 2 (``diag.tasks/2``, compact, see ``diag.model.task_wire``)."""
    raw = query.get("wire") or "1"
    if raw not in ("1", "2"):
        raise DiagError(f"wire must be 1 or 2, not {shown(raw)}")
    return int(raw)


def parse_layout(query: Mapping[str, str]) -> bool:
    """Whether a client asks for a compact task dump laid out in slices (``layout=slices``,
    see ``diag.model.task_wire``), to read it as it comes; ``plain`` is the default."""
    raw = query.get("layout") or "plain"
    if raw not in ("plain", "slices"):
        raise DiagError(f"layout must be plain or slices, not {shown(raw)}")
    return raw == "slices"


def shown_error(err: Exception, limit: int = 300) -> str:
    """An error's message, clipped (it may quote what the client sent)."""
    text = str(err)
    return text if len(text) <= limit else text[: limit - 3] + "..."


RouteHandler = Callable[[Mapping[str, str], frozenset[int]], Response]


@dataclass(frozen=True)
class Route:
    """``paced``: the agent's own server spaces out answers to it (see server.py);
    ``cached``: an identical GET within ``ANSWER_REUSE`` gets the same answer."""

    handler: RouteHandler
    method: str
    help: str
    paced: bool = False
    cached: bool = False


class Endpoints:
    """Routes of one agent; ``exclude`` names tasks of the server carrying the API.

    Each feature adds its routes with ``add`` (see ``diag.agent.features``), so the
    agent's thread server and the aiohttp integration serve the same set.
    """

    def __init__(self, watch: LoopWatch | None) -> None:
        self.watch = watch
        self._dump_lock = threading.Lock()
        self._last: tuple[float, frozenset[int], TaskSnapshot] | None = None
        self._answers: dict[tuple[str, tuple[tuple[str, str], ...], frozenset[int]], tuple[float, Response]] = {}
        self._answers_lock = threading.Lock()
        self.routes: dict[str, Route] = {}
        self.add("tasks", self.tasks, help="task dump (?debug=1|2&state=&min_wait=&limit=&wire=1|2&layout=plain|slices)",
                 paced=True, cached=True)
        self.add("health", self.health, help="event loop health")
        from diag.agent.features import install_features

        install_features(self)

    def add(self, name: str, handler: RouteHandler, *, method: str = "GET", help: str = "",
            paced: bool = False, cached: bool = False) -> None:
        """Serve ``handler`` at ``{PREFIX}/{name}``; mutating operations use POST.  Routes
        that walk the target's tasks or heap are ``paced``; ``cached`` ones also reuse
        an identical answer for ``ANSWER_REUSE`` seconds."""
        self.routes[name] = Route(handler, method, help, paced, cached and method == "GET")

    def route(self, path: str) -> Route | None:
        """The route serving ``path``, if any."""
        route = path.rstrip("/")
        if not route.startswith(PREFIX + "/"):
            return None
        return self.routes.get(route[len(PREFIX) + 1:])

    def sweep(self) -> None:
        """Drop the cached answers and snapshot once too old to be served again.  Kept to
        the next request instead, a 100,000-task dump would hold tens of megabytes (and
        give the cyclic GC a heap that much bigger to walk) for as long as nobody asks."""
        now = time.monotonic()
        with self._answers_lock:
            for key in [k for k, (t, _) in self._answers.items() if now - t >= ANSWER_REUSE]:
                del self._answers[key]
        last = self._last
        if last is None or now - last[0] < SNAPSHOT_REUSE or not self._dump_lock.acquire(blocking=False):
            return
        try:
            with paused_gc():  # freed where it was made: no debt left to the next collection
                if self._last is last:
                    self._last = None
                del last
        finally:
            self._dump_lock.release()

    def _cached(self, found: Route, path: str, query: Mapping[str, str],
                exclude: frozenset[int]) -> Response:
        key = (path.rstrip("/"), tuple(sorted(query.items())), exclude)
        now = time.monotonic()
        with self._answers_lock:
            hit = self._answers.get(key)
            if hit is not None and now - hit[0] < ANSWER_REUSE:
                return hit[1]
        resp = found.handler(query, exclude)
        if resp.status == 200 and resp.stream is None:  # a stream is sent once, as it is built
            with self._answers_lock:
                if len(self._answers) >= MAX_CACHED_ANSWERS:
                    stale = [k for k, (t, _) in self._answers.items() if now - t >= ANSWER_REUSE]
                    for k in stale or list(self._answers)[: MAX_CACHED_ANSWERS // 2]:
                        del self._answers[k]
                self._answers[key] = (time.monotonic(), resp)
        return resp

    def dispatch(self, method: str, path: str, query: Mapping[str, str],
                 exclude: frozenset[int] = frozenset()) -> Response:
        try:
            route = path.rstrip("/")
            if route in ("", PREFIX):
                return self.index() if method in ("GET", "HEAD") else error(405, f"{PREFIX}/ takes GET")
            if not route.startswith(PREFIX + "/"):
                return error(404, f"no such endpoint {shown(path)}; try {PREFIX}/")
            found = self.routes.get(route[len(PREFIX) + 1:])
            if found is None:
                return error(404, f"no such endpoint {shown(path)}; try {PREFIX}/")
            if method != found.method and not (method == "HEAD" and found.method == "GET"):
                return error(405, f"{shown(path)} takes {found.method}")
            if found.cached:
                return self._cached(found, path, query, exclude)
            return found.handler(query, exclude)
        except DiagError as err:
            return error(400, shown_error(err))
        except Exception as err:  # the agent must answer, whatever happened
            return error(500, f"agent error: {type(err).__name__}: {shown_error(err)}")

    def index(self) -> Response:
        return json_response(200, {
            "schema": AGENT_SCHEMA, "diag_version": diag.__version__, "pid": process_info().pid,
            "endpoints": {f"{route.method} {PREFIX}/{name}": route.help for name, route in self.routes.items()},
        })

    def tasks(self, query: Mapping[str, str], exclude: frozenset[int]) -> Response:
        tq = parse_task_query(query)
        wire = parse_wire(query)
        sliced = parse_layout(query)
        # Streamed from the agent's own threads only: an endpoint the program serves on its
        # loop (diag.aiohttp) joins the answer there, so its walk keeps the 5 s budget.
        if wire == 2 and tq.debug == 2 and asyncio._get_running_loop() is None \
                and _pending_more_than(STREAM_TASKS, exclude):
            return self._streamed_tasks(tq, exclude, sliced)
        # The cyclic GC waits until the dump's objects are freed: a collection on the way
        # (the snapshot makes a few objects per task) would walk them all while holding
        # the GIL, a quarter of a second for 100,000 tasks, during which the loop stops.
        with paused_gc():
            if not self._dump_lock.acquire(timeout=BUSY_WAIT):
                return error(503, "busy: another dump is being taken; retry shortly")
            try:
                # Clients asking within SNAPSHOT_REUSE of each other share one collection, so
                # a dashboard or a script in a loop cannot make the agent eat the target's CPU.
                now = time.monotonic()
                cached = self._last
                if cached is not None and cached[1] == exclude and now - cached[0] < SNAPSHOT_REUSE:
                    snap = cached[2]
                elif sketch_query(tq) and _pending_more_than(MAX_CACHED_SNAPSHOT_TASKS, exclude):
                    # A snapshot of this size would not be kept: the grouped answer reads each
                    # task only as far as its group needs, and describes one task a group.
                    snap = None
                    with TaskSketches(self.watch, CollectOptions(exclude=exclude, budget=COLLECT_BUDGET)) as sketches:
                        view = grouped_view(sketches, sketches.describe, sketches.snapshot, tq)
                else:
                    snap = collect_tasks(self.watch, CollectOptions(exclude=exclude, budget=COLLECT_BUDGET))
                    # A big snapshot is not kept: alive once the GC runs again, it would be
                    # the walk of a quarter of a second this block avoids.
                    reusable = len(snap.tasks) <= MAX_CACHED_SNAPSHOT_TASKS
                    self._last = (time.monotonic(), exclude, snap) if reusable else None
                del cached
            finally:
                self._dump_lock.release()
            if snap is not None:
                view = task_view(snap, tq)
            del snap
            if wire == 2:  # sent as it is encoded: never cut for size (see task_wire.stream)
                return Response(200, b"", stream=GcPausedStream(task_wire.stream(view, ENCODE_SLICE, sliced)))
            what = "groups" if view.grouped else "tasks"
            answer = fit(lambda keep: _task_document(view if keep is None else replace(view, tasks=view.tasks[:keep])),
                         len(view.tasks), what)
            del view
        return answer

    def _streamed_tasks(self, tq: TaskQuery, exclude: frozenset[int], sliced: bool) -> Response:
        """A full dump of many tasks, collected as it is sent (see ``STREAM_TASKS``): the
        dump lock is held until the last piece is sent or the answer is given up."""
        if not self._dump_lock.acquire(timeout=BUSY_WAIT):
            return error(503, "busy: another dump is being taken; retry shortly")
        try:
            stream = TaskStream(self.watch, CollectOptions(exclude=exclude, budget=STREAM_COLLECT_BUDGET),
                                ENCODE_SLICE)
            pieces = _stream_pieces(stream, tq, sliced)
            return Response(200, b"", stream=GcPausedStream(pieces, on_close=self._dump_lock.release))
        except BaseException:
            self._dump_lock.release()
            raise

    def health(self, query: Mapping[str, str], exclude: frozenset[int]) -> Response:
        loops = collect_loops(self.watch, set(self.watch.loops()) if self.watch else set(), _FrameCache(True))
        return json_response(200, {"schema": "diag.health/1", "process": process_info().to_dict(),
                                   "loops": [lp.to_dict() for lp in loops]})

"""Serve diag's endpoints from an existing aiohttp app, as importing net/http/pprof does.

Usage::

    app = web.Application()
    diag.aiohttp.setup(app)             # GET /debug/diag/tasks and GET /metrics on the app's own port

Requests are answered on the app's event loop (metrics are collected on a short-lived
``diag-metrics-scrape`` thread, so the loop keeps turning); when that loop is blocked,
the agent's own thread (``diag.agent.start``) still answers, so services usually run both.
``setup`` also counts the app's handled requests by status class, for
``diag_aiohttp_requests_total`` in both metrics outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from diag.agent import current
from diag.agent.endpoints import ANSWER_REUSE, Endpoints, Response
from diag.agent.server import GZIP_MIN_BYTES
from diag.agent_protocol import PREFIX
from diag.agent.metrics_routes import REQUESTS

_METRICS = PREFIX + "/metrics"
#: Marks an app already set up, so a second ``setup`` changes nothing.
_SET_UP = web.AppKey("diag_set_up", str)


def status_class(status: int) -> str:
    """200 -> "2xx"; statuses outside 100-599 count as "5xx" (what a client would make of them)."""
    return f"{status // 100}xx" if 100 <= status < 600 else "5xx"


def _request_counter(own_paths: tuple[str, ...]) -> Middleware:
    subtrees = tuple(p.rstrip("/") + "/" for p in own_paths)

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in own_paths or path.startswith(subtrees):  # monitoring traffic is not the app's load
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # raised responses (404, 405, redirects, ...)
            REQUESTS.add(status_class(exc.status))
            raise
        except asyncio.CancelledError:  # the client went away or the server stops
            REQUESTS.add("cancelled")
            raise
        except Exception:  # aiohttp answers these with a 500
            REQUESTS.add("5xx")
            raise
        REQUESTS.add(status_class(response.status))
        return response

    return count_requests


def setup(app: web.Application, *, prefix: str = PREFIX, metrics_path: str | None = "/metrics") -> None:
    """Add ``{prefix}/`` routes and ``metrics_path`` (None: none) to ``app``, and count its
    requests; uses the process agent's watch if one runs.  Idempotent per app."""
    if _SET_UP in app:
        return
    app[_SET_UP] = prefix

    async def dispatch(request: web.Request, method: str, path: str) -> web.Response:
        agent = current()
        endpoints = agent.endpoints if agent is not None else _fallback
        if agent is not None:
            agent.watch.add_loop(asyncio.get_running_loop())
        # The dump leaves out the tasks serving this very request: the handler's own and
        # its connection's (aiohttp keeps it on the protocol), whose state differs between
        # Python versions and would otherwise show up as a group of its own.
        own_tasks = (asyncio.current_task(), getattr(request.protocol, "_task_handler", None))
        query = dict(request.query)
        exclude = frozenset(id(t) for t in own_tasks if t is not None)
        if path.rstrip("/") == _METRICS:
            resp = await _on_own_thread(lambda: endpoints.dispatch(method, path, query, exclude))
            body = resp.whole()
        else:
            # On the loop's thread, all of it is diag's work, not the program's: the analysis
            # and encoding around the collections too, so that a stall it causes is told
            # apart from the program's (a busy machine stretches these parts most).
            with agent.watch.own_work() if agent is not None else contextlib.nullcontext():
                resp = endpoints.dispatch(method, path, query, exclude)
                # a streamed answer is joined here: this server answers on the app's loop,
                # not from a thread of its own that could send it piece by piece
                body = resp.whole()
        if agent is None:  # no agent thread to drop the caches once stale: a timer does
            asyncio.get_running_loop().call_later(ANSWER_REUSE + 0.05, endpoints.sweep)
        # As a header: Prometheus's content type carries a version parameter besides the charset.
        answer = web.Response(status=resp.status, body=body, headers={"Content-Type": resp.content_type})
        if resp.status == 200 and len(answer.body or b"") >= GZIP_MIN_BYTES:  # type: ignore[arg-type]
            answer.enable_compression()  # gzip or deflate, when the client takes them
        return answer

    async def handle(request: web.Request) -> web.Response:
        return await dispatch(request, request.method, PREFIX + request.path[len(prefix):])

    async def metrics(request: web.Request) -> web.Response:
        return await dispatch(request, "GET", _METRICS)  # HEAD too

    app.router.add_route("GET", prefix, handle)
    app.router.add_route("*", prefix + "/{tail:.*}", handle)
    own: tuple[str, ...] = (prefix,)
    if metrics_path is not None:
        app.router.add_get(metrics_path, metrics)
        own += (metrics_path,)
    if os.environ.get("DIAG_COUNT_REQUESTS", "1") != "0":
        app.middlewares.insert(0, _request_counter(own))  # outermost: counts the status the client gets
        REQUESTS.enabled = True


async def _on_own_thread(work: Callable[[], Response]) -> Response:
    """Run ``work`` on a short-lived ``diag-`` thread and await its answer: a metrics
    collection reads every task, and the app's loop should keep turning meanwhile."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Response] = loop.create_future()

    def deliver(resp: Response) -> None:
        if not done.done():  # the request may have been cancelled meanwhile
            done.set_result(resp)

    def run() -> None:
        resp = work()  # Endpoints.dispatch never raises
        try:
            loop.call_soon_threadsafe(deliver, resp)
        except RuntimeError:  # the loop closed meanwhile
            pass

    thread = threading.Thread(target=run, name="diag-metrics-scrape", daemon=True)
    thread.start()
    resp = await done
    thread.join(1.0)  # it has handed over its answer and is exiting
    return resp


_fallback = Endpoints(None)

"""Serve diag's endpoints from an existing aiohttp app, as importing net/http/pprof does.

Usage::

    app = web.Application()
    diag.aiohttp.setup(app)             # GET /debug/diag/tasks and GET /metrics on the app's own port

Requests are answered on the app's event loop; when that loop is blocked, the agent's
own thread (``diag.agent.start``) still answers, so services usually run both.
``setup`` also counts the app's handled requests by status class, for
``diag_aiohttp_requests_total`` in both metrics outputs.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from diag.agent import current
from diag.agent.endpoints import PREFIX, Endpoints
from diag.agent.metrics_routes import REQUESTS

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

    def dispatch(request: web.Request, method: str, path: str) -> web.Response:
        agent = current()
        endpoints = agent.endpoints if agent is not None else _fallback
        if agent is not None:
            agent.watch.add_loop(asyncio.get_running_loop())
        me = asyncio.current_task()
        resp = endpoints.dispatch(method, path, dict(request.query),
                                  exclude=frozenset({id(me)}) if me is not None else frozenset())
        # As a header: Prometheus's content type carries a version parameter besides the charset.
        return web.Response(status=resp.status, body=resp.body, headers={"Content-Type": resp.content_type})

    async def handle(request: web.Request) -> web.Response:
        return dispatch(request, request.method, PREFIX + request.path[len(prefix):])

    async def metrics(request: web.Request) -> web.Response:
        return dispatch(request, "GET", PREFIX + "/metrics")  # HEAD too

    app.router.add_route("GET", prefix, handle)
    app.router.add_route("*", prefix + "/{tail:.*}", handle)
    own: tuple[str, ...] = (prefix,)
    if metrics_path is not None:
        app.router.add_get(metrics_path, metrics)
        own += (metrics_path,)
    app.middlewares.insert(0, _request_counter(own))  # outermost: counts the status the client gets
    REQUESTS.enabled = True


_fallback = Endpoints(None)

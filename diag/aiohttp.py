"""Serve diag's endpoints from an existing aiohttp app, as importing net/http/pprof does.

Usage::

    app = web.Application()
    diag.aiohttp.setup(app)             # GET /debug/diag/tasks on the app's own port

Requests are answered on the app's event loop; when that loop is blocked, the agent's
own thread (``diag.agent.start``) still answers, so services usually run both.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from diag.agent import current
from diag.agent.endpoints import PREFIX, Endpoints


def setup(app: web.Application, *, prefix: str = PREFIX) -> None:
    """Add ``{prefix}/`` routes to ``app``; uses the process agent's watch if one runs."""

    async def handle(request: web.Request) -> web.Response:
        agent = current()
        endpoints = agent.endpoints if agent is not None else _fallback
        if agent is not None:
            agent.watch.add_loop(asyncio.get_running_loop())
        me = asyncio.current_task()
        path = PREFIX + request.path[len(prefix):]
        resp = endpoints.dispatch(request.method, path, dict(request.query),
                                  exclude=frozenset({id(me)}) if me is not None else frozenset())
        return web.Response(status=resp.status, body=resp.body, content_type=resp.content_type)

    app.router.add_route("GET", prefix, handle)
    app.router.add_route("*", prefix + "/{tail:.*}", handle)


_fallback = Endpoints(None)

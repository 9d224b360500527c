"""The target server under gunicorn, one app per worker process::

    gunicorn target_server.gunicorn_app:app --worker-class aiohttp.GunicornWebWorker \\
        -w 3 --bind 127.0.0.1:8080

gunicorn binds the port; ``TARGET_SERVER_ARGS`` takes the other options of
``python -m target_server`` (``TARGET_SERVER_ARGS="--leak-cap 50 --no-diag"``).  Each
worker builds its own application (its own leaks, work pool and counters) and starts
its own diag agent, or keeps the one ``diag run --agent-dir DIR`` already gave it.
"""

from __future__ import annotations

import logging
import os
import shlex

from aiohttp import web

import diag.agent

from .__main__ import parse_args
from .app import make_app
from .logs import fields, setup_logging

log = logging.getLogger("target_server")


async def app() -> web.Application:
    """The app factory gunicorn's aiohttp worker awaits once in each worker."""
    config = parse_args(shlex.split(os.environ.get("TARGET_SERVER_ARGS", "")))
    setup_logging(config.log_level)
    if not config.no_diag:
        try:
            agent = diag.agent.start(config.diag_agent)
        except Exception:
            log.exception("diag agent not started", extra=fields(address=config.diag_agent))
        else:
            log.info("diag agent listening", extra=fields(url=agent.url, pid=os.getpid()))
    return make_app(config)

"""The target server under gunicorn, one app per worker process::

    gunicorn target_server.gunicorn_app:app --worker-class aiohttp.GunicornWebWorker \\
        -w 3 --bind 127.0.0.1:8080

gunicorn binds the port; ``TARGET_SERVER_ARGS`` takes the other options of
``python -m target_server`` (``TARGET_SERVER_ARGS="--leak-cap 50 --no-diag"``).  Each
worker builds its own application (its own leaks, work pool and counters) and starts
its own diag agent, or keeps the one ``diag run --agent-dir DIR`` already gave it.
"""

from __future__ import annotations

import os
import shlex

from aiohttp import web

from .__main__ import parse_args, start_agent
from .app import make_app
from .logs import setup_logging


async def app() -> web.Application:
    """The app factory gunicorn's aiohttp worker awaits once in each worker."""
    config = parse_args(shlex.split(os.environ.get("TARGET_SERVER_ARGS", "")))
    setup_logging(config.log_level)
    start_agent(config)
    return make_app(config)

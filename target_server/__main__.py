"""Command line: ``python -m target_server --host 127.0.0.1 --port 8080 [options]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import asdict
from collections.abc import Callable, Sequence

from aiohttp import web

import diag.agent

from . import __version__
from .app import make_app
from .config import Config
from .logs import fields, setup_logging

log = logging.getLogger("target_server")


def _number(kind: Callable[[str], float], minimum: float) -> Callable[[str], float]:
    """An argparse type: ``kind`` of the text, rejected below ``minimum``."""
    def parse(text: str) -> float:
        value = kind(text)
        if not value >= minimum:  # also rejects NaN
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {text}")
        return value
    return parse


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Parse the command line into a :class:`Config`."""
    d = Config()
    p = argparse.ArgumentParser(prog="python -m target_server",
                                description="Serve the target server: an aiohttp service with deliberately leaky endpoints.")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=_number(int, 0), default=d.port)
    p.add_argument("--shutdown-timeout", type=_number(float, 0), default=d.shutdown_timeout,
                   help="seconds in-flight requests get to finish on SIGINT/SIGTERM (default %(default)s)")
    p.add_argument("--rate", type=_number(float, 0.001), default=d.rate,
                   help="token-bucket refill in requests/s, per client bucket (default %(default)s)")
    p.add_argument("--burst", type=_number(int, 1), default=d.burst, help="token-bucket size (default %(default)s)")
    p.add_argument("--max-concurrency", type=_number(int, 1), default=d.max_concurrency,
                   help="work-pool semaphore size (default %(default)s)")
    p.add_argument("--pool-wait", type=_number(float, 0), default=d.pool_wait,
                   help="seconds to wait for a work-pool slot or the shared lock before 503 (default %(default)s)")
    p.add_argument("--request-timeout", type=_number(float, 0.001), default=d.request_timeout,
                   help="per-request deadline in seconds before 504 (default %(default)s)")
    p.add_argument("--leak-cap", type=_number(int, 0), default=d.leak_cap,
                   help="most things each leaky endpoint may leak before 429 (default %(default)s)")
    p.add_argument("--upstream-pool", type=_number(int, 1), default=d.upstream_pool,
                   help="connections of the client pool /leak/upstream-pool shares (default %(default)s)")
    p.add_argument("--no-diag", action="store_true", help="run without the diagnostics agent")
    p.add_argument("--diag-agent", default=d.diag_agent,
                   help="address of the diag agent's own thread: HOST:PORT or unix:/PATH (default %(default)s)")
    p.add_argument("--log-level", default=d.log_level, type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--version", action="version", version=f"target_server {__version__}")
    args = p.parse_args(argv)
    return Config(**{name.replace("-", "_"): value for name, value in vars(args).items()})


def start_agent(config: Config) -> None:
    """Start the diag agent unless ``--no-diag``; a failure is logged, never fatal.

    The agent's own thread answers even while a handler blocks the event loop; the same
    endpoints are also on the app's port (/debug/diag/), see make_app.
    """
    if config.no_diag:
        return
    try:
        agent = diag.agent.start(config.diag_agent)
    except Exception:
        log.exception("diag agent not started", extra=fields(address=config.diag_agent))
    else:
        log.info("diag agent listening", extra=fields(url=agent.url, pid=os.getpid()))


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then shut down gracefully and return the exit status."""
    config = parse_args(argv)
    setup_logging(config.log_level)
    log.info("starting", extra=fields(version=__version__, **asdict(config)))
    start_agent(config)
    # run_app on SIGINT/SIGTERM: stop accepting, give in-flight requests up to shutdown_timeout,
    # run the cleanup contexts (which cancel leaked tasks), then cancel whatever task is left.
    try:
        web.run_app(
            make_app(config), host=config.host, port=config.port, shutdown_timeout=config.shutdown_timeout,
            access_log=None,  # access_middleware writes the JSON access log
            print=lambda _banner: log.info("listening", extra=fields(host=config.host, port=config.port)),
        )
    except OSError:  # typically the port is taken; say so in the log format everything else uses
        log.exception("cannot serve", extra=fields(host=config.host, port=config.port))
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

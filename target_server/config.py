"""Settings of one server run, fixed at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the command line controls; defaults match the CLI defaults."""

    host: str = "127.0.0.1"
    port: int = 8080
    shutdown_timeout: float = 5.0  # seconds in-flight requests get to finish on SIGINT/SIGTERM
    rate: float = 1000.0  # token-bucket refill, requests per second (per bucket)
    burst: int = 200  # token-bucket capacity
    max_concurrency: int = 16  # size of the shared work pool (an asyncio.Semaphore)
    pool_wait: float = 2.0  # seconds a request waits for a pool slot or the shared lock before 503
    request_timeout: float = 10.0  # per-request deadline before 504
    leak_cap: int = 100  # most things each leaky endpoint may leak before it answers 429
    upstream_pool: int = 4  # connections of the shared client's pool (TCPConnector limit) to the upstream
    no_diag: bool = False  # run without the diagnostics agent
    diag_agent: str = "127.0.0.1:0"  # where the agent's own thread listens (port 0: a free one)
    log_level: str = "INFO"


CONFIG = web.AppKey("config", Config)

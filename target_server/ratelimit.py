"""Token-bucket rate limiting: one bucket for anonymous traffic, one per ``X-Client-ID``."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

# Key of the bucket shared by every request that names no client.
ANONYMOUS = ""


class TokenBucket:
    """Holds up to ``burst`` tokens and regains ``rate`` tokens per second; each request takes one."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        """Take a token; return 0 on success, else the seconds until one will be available."""
        # Refill lazily from the elapsed time instead of running a ticker task per bucket.
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """Buckets by client key, the least recently used ones evicted past ``max_clients``.

    The bound keeps a client that invents a new ID per request from growing memory without limit.
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self.clock = clock
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, client: str = ANONYMOUS) -> int:
        """Admit one request from ``client``: 0 if allowed, else the whole seconds to wait (>= 1)."""
        now = self.clock()
        bucket = self.buckets.get(client)
        if bucket is None:
            bucket = self.buckets[client] = TokenBucket(self.rate, self.burst, now)
            if len(self.buckets) > self.max_clients:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(client)
        wait = bucket.take(now)
        return 0 if wait == 0.0 else max(1, math.ceil(wait))

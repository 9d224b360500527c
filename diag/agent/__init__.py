"""The in-process agent: serves task dumps from its own thread.

Usage::

    import diag.agent
    agent = diag.agent.start()          # 127.0.0.1 on a free port
    print(agent.url)                    # http://127.0.0.1:40123 -> diag tasks <url>

``start`` is idempotent and never raises into the program for anything but a bad
address: a diagnostics agent must not be the reason a service fails.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading

from diag.agent.endpoints import Endpoints
from diag.agent.server import AgentServer
from diag.collect import holders
from diag.collect.loop_watch import LoopWatch

DEFAULT_ADDRESS = "127.0.0.1:0"


class Agent:
    """A running agent: a loop watch (heartbeat, wait sampler, task factory) and a server."""

    def __init__(self, address: str = DEFAULT_ADDRESS, token: str | None = None,
                 record_creators: bool = True, track_holders: bool = True) -> None:
        self.watch = LoopWatch(install_factories=record_creators)
        self.track_holders = track_holders
        self.endpoints = Endpoints(self.watch)
        self.server = AgentServer(self.endpoints, address, token)
        self.pid = os.getpid()

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> "Agent":
        if self.track_holders:
            holders.install()
        self.watch.hook_running_loop()
        try:
            self.watch.add_loop(asyncio.get_running_loop())
        except RuntimeError:
            pass
        self.watch.start()
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.watch.stop()
        if self.track_holders:
            holders.uninstall()


_agent: Agent | None = None
_agent_lock = threading.Lock()


def start(address: str | None = None, *, token: str | None = None, announce: bool = False,
          address_file: str | None = None, record_creators: bool | None = None,
          track_holders: bool | None = None) -> Agent:
    """Start the process's agent (or return the running one).

    ``address`` is ``HOST:PORT`` (port 0 picks a free one) or ``unix:/PATH``; default
    ``$DIAG_AGENT`` or 127.0.0.1 on a free port.  ``announce`` prints the address on
    stderr; ``address_file`` receives it, for scripts that start the process.
    ``record_creators`` (default on; ``DIAG_CREATORS=0`` turns it off) installs the task
    factory behind "created by": about 1-3 us per ``create_task`` (docs/benchmarks.md).
    ``track_holders`` (default on; ``DIAG_HOLDERS=0`` turns it off) records who holds
    each asyncio Lock and Semaphore permit, for ``diag sync`` and ``diag leaks``.
    """
    global _agent
    with _agent_lock:
        if _agent is not None and _agent.pid == os.getpid():
            return _agent
        address = address or os.environ.get("DIAG_AGENT") or DEFAULT_ADDRESS
        token = token or os.environ.get("DIAG_AGENT_TOKEN") or None
        if record_creators is None:
            record_creators = _env_flag("DIAG_CREATORS")
        if track_holders is None:
            track_holders = _env_flag("DIAG_HOLDERS")
        agent = Agent(address, token, record_creators, track_holders).start()
        _agent = agent
    if announce:
        try:
            print(f"diag agent: {agent.url} (pid {agent.pid}); run: diag tasks {agent.url}",
                  file=sys.stderr, flush=True)
        except Exception:
            pass
    if address_file:
        try:
            tmp = f"{address_file}.{os.getpid()}.tmp"
            with open(tmp, "w") as fh:
                fh.write(agent.url + "\n")
            os.replace(tmp, address_file)
        except OSError as err:
            print(f"diag agent: cannot write {address_file}: {err}", file=sys.stderr)
    return agent


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def current() -> Agent | None:
    """The running agent of this process, if any."""
    return _agent if _agent is not None and _agent.pid == os.getpid() else None


def stop() -> None:
    """Stop the agent and remove everything it installed (hooks, task factories)."""
    global _agent
    with _agent_lock:
        agent, _agent = _agent, None
    if agent is not None:
        agent.stop()


def _after_fork_in_child() -> None:
    # The child has no agent threads: forget the parent's agent instead of serving a half-dead one.
    global _agent
    _agent = None


os.register_at_fork(after_in_child=_after_fork_in_child)

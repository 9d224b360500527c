"""The in-process agent: serves task dumps from its own thread.

Usage::

    import diag.agent
    agent = diag.agent.start()          # 127.0.0.1 on a free port
    print(agent.url)                    # http://127.0.0.1:40123 -> diag tasks <url>

``start`` is idempotent and never raises into the program for anything but a bad
address: a diagnostics agent must not be the reason a service fails.

On ``fork`` the child never keeps the parent's agent: its threads did not survive the
fork, so the child closes its copy of the parent's listening socket, drops the hooks
that would feed the parent's (now dead) watchdog, and forgets it.  An agent started
with an agent directory on an ephemeral TCP port (``127.0.0.1:0``) then starts afresh
in the child, with its own port and its own ``<pid>.json``: this is how each gunicorn
worker gets an agent.  Any other child has no agent until it calls ``start()``
(docs/many-processes.md).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
import threading

from diag.agent import agent_dir as agent_files
from diag.agent import fork_safety  # noqa: F401  (registers its fork handler first)
from diag.agent.endpoints import Endpoints
from diag.agent.server import AgentServer
from diag.agent_protocol import parse_address
from diag.collect import holders
from diag.collect.loop_watch import LoopWatch

DEFAULT_ADDRESS = "127.0.0.1:0"


class Agent:
    """A running agent: a loop watch (heartbeat, wait sampler, task factory) and a server."""

    def __init__(self, address: str = DEFAULT_ADDRESS, token: str | None = None,
                 record_creators: bool = True, track_holders: bool = True) -> None:
        self.address = address
        self.token = token
        self.record_creators = record_creators
        self.watch = LoopWatch(install_factories=record_creators)
        self.track_holders = track_holders
        self.endpoints = Endpoints(self.watch)
        self.server = AgentServer(self.endpoints, address, token)
        self.pid = os.getpid()
        #: The agent directory this agent announces itself in, and its own file there.
        self.agent_dir: str | None = None
        self.record_file: str | None = None
        self.announce = False

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
        self.forget_record()

    def forget_record(self) -> None:
        if self.record_file is not None and self.pid == os.getpid():
            agent_files.remove_record(self.record_file)
        self.record_file = None

    def restarts_in_children(self) -> bool:
        """An agent directory and an ephemeral TCP port: a forked child can have its own."""
        if self.agent_dir is None:
            return False
        try:
            _host, port = parse_address(self.address)
        except Exception:
            return False
        return port == 0

    def abandon_after_fork(self, keep_holders: bool) -> None:
        """In a forked child: let go of the parent's agent without touching its threads
        (they do not exist here) or its locks (a dead thread may have held one)."""
        try:
            srv = getattr(self.server, "_server", None)
            sock = getattr(srv, "socket", None)
            if sock is not None:
                # Our copy of the parent's listening socket: kept open, it would keep the
                # port bound after the parent exits and connections would hang unanswered.
                sock.close()
        except Exception:
            pass
        try:
            self.watch.unhook_running_loop()
        except Exception:
            pass
        if self.track_holders and not keep_holders:
            holders.uninstall()
        self.record_file = None  # the parent's file is the parent's to remove


_agent: Agent | None = None
_agent_lock = threading.Lock()


def start(address: str | None = None, *, token: str | None = None, announce: bool = False,
          address_file: str | None = None, record_creators: bool | None = None,
          track_holders: bool | None = None, agent_dir: str | None = None) -> Agent:
    """Start the process's agent (or return the running one).

    ``address`` is ``HOST:PORT`` (port 0 picks a free one) or ``unix:/PATH``; default
    ``$DIAG_AGENT`` or 127.0.0.1 on a free port.  ``announce`` prints the address on
    stderr; ``address_file`` receives it, for scripts that start the process.
    ``agent_dir`` (default ``$DIAG_AGENT_DIR``) receives ``<pid>.json`` with the address,
    removed at exit, so that ``diag tasks --agent-dir DIR`` finds every process; with an
    ephemeral port, forked children (gunicorn workers) start their own agent there too.
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
        agent_dir = agent_dir or os.environ.get("DIAG_AGENT_DIR") or None
        if record_creators is None:
            record_creators = _env_flag("DIAG_CREATORS")
        if track_holders is None:
            track_holders = _env_flag("DIAG_HOLDERS")
        agent = Agent(address, token, record_creators, track_holders).start()
        agent.announce = announce
        agent.agent_dir = os.path.abspath(agent_dir) if agent_dir else None
        _agent = agent
    if announce:
        try:
            print(f"diag agent: {agent.url} (pid {agent.pid}); run: diag tasks {agent.url}",
                  file=sys.stderr, flush=True)
        except Exception:
            pass
    if address_file:
        try:
            agent_files.write_atomically(address_file, agent.url + "\n")
        except OSError as err:
            print(f"diag agent: cannot write {address_file}: {err}", file=sys.stderr)
    if agent.agent_dir is not None:
        _write_own_record(agent)
    return agent


def _write_own_record(agent: Agent) -> None:
    assert agent.agent_dir is not None
    try:
        agent.record_file = agent_files.write_record(agent.agent_dir, agent_files.own_record(agent.url))
    except OSError as err:
        try:
            print(f"diag agent: cannot write to the agent directory {agent.agent_dir}: {err}",
                  file=sys.stderr)
        except Exception:
            pass


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


def _remove_record_at_exit() -> None:
    # Registered once and inherited by forked children: each process removes only its own
    # files (its <pid>.json, the unix socket it bound).
    agent = _agent
    if agent is not None and agent.pid == os.getpid():
        agent.forget_record()
        agent.server.remove_socket_file()


def _after_fork_in_child() -> None:
    # The parent's agent threads did not survive the fork: never serve a half-dead agent.
    global _agent, _agent_lock
    parent, _agent = _agent, None
    _agent_lock = threading.Lock()  # a parent thread may have held it at the fork
    if parent is None:
        return
    again = parent.restarts_in_children()
    parent.abandon_after_fork(keep_holders=again)
    if not again:
        return
    try:
        start(parent.address, token=parent.token, announce=parent.announce,
              record_creators=parent.record_creators, track_holders=parent.track_holders,
              agent_dir=parent.agent_dir)
    except Exception as err:  # never break the child
        try:
            print(f"diag agent: not started in child {os.getpid()}: {err}", file=sys.stderr)
        except Exception:
            pass


atexit.register(_remove_record_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)

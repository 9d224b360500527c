"""``diag run``: start any Python program with the agent injected, no code change."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer

import diag
from diag.agent_protocol import check_agent_address
from diag.cli import option_checks as checks
from diag.errors import UsageError

BOOTSTRAP_DIR = str(Path(diag.__file__).resolve().parent / "bootstrap")
PACKAGE_PARENT = str(Path(diag.__file__).resolve().parent.parent)


def agent_environment(env: dict[str, str], address: str, address_file: str | None,
                      agent_dir: str | None = None) -> dict[str, str]:
    """The environment that makes a Python process start the agent at ``address``."""
    out = dict(env)
    out["DIAG_AGENT"] = address
    if address_file:
        out["DIAG_AGENT_FILE"] = address_file
    if agent_dir:
        out["DIAG_AGENT_DIR"] = agent_dir
    # Our sitecustomize first; diag itself last, so the program's own packages win.
    parts = [BOOTSTRAP_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p] + [PACKAGE_PARENT]
    out["PYTHONPATH"] = os.pathsep.join(parts)
    return out


EXAMPLES = (
    ("start a program with the agent on a free loopback port", "diag run -- python app.py --port 8000"),
    ("the agent on a unix socket, its address written for scripts",
     "diag run --agent unix:/tmp/app-diag.sock --agent-file agent.txt -- python app.py"),
    ("gunicorn workers, each with its own agent, found by diag tasks --agent-dir",
     "diag run --agent-dir /tmp/diag-agents -- gunicorn app:app -w 4"),
    ("the environment for processes started some other way", "diag run --print-env"),
)


def run(
    ctx: typer.Context,
    command: list[str] = typer.Argument(None, metavar="COMMAND", show_default=False,
                                        help="the program to run, after --: python app.py ARGS"),
    agent: str = typer.Option("127.0.0.1:0", "--agent", metavar="ADDRESS",
                              help="agent address: HOST:PORT (0: free port) or unix:/PATH"),
    agent_file: Optional[Path] = typer.Option(None, "--agent-file", metavar="FILE", show_default="not written",
                                              help="write the agent address to this file"),
    agent_dir: Optional[Path] = typer.Option(None, "--agent-dir", metavar="DIR", show_default="none",
                                             help="every process (and forked worker) writes <pid>.json with its "
                                                  "agent address here; read it with diag tasks --agent-dir DIR"),
    print_env: bool = typer.Option(False, "--print-env", show_default="off",
                                   help="print the environment that injects the agent (for processes started "
                                        "another way: eval \"$(diag run --print-env)\") and exit"),
) -> int:
    """Run a Python program with the diag agent injected; its address is printed on stderr."""
    argv = list(command or []) + list(ctx.args)
    # What the agent would refuse is refused here, before the program starts: a person
    # asked for this agent and should not find the program running without it.
    checks.writable_file("--agent-file", agent_file)
    _host, port = check_agent_address(agent, os.environ.get("DIAG_AGENT_TOKEN") or None)
    directory = _agent_directory(agent_dir, port) if agent_dir is not None else None
    if print_env:
        env = agent_environment({"PYTHONPATH": os.environ.get("PYTHONPATH", "")}, agent,
                                str(agent_file) if agent_file else None, directory)
        for name in ("DIAG_AGENT", "DIAG_AGENT_FILE", "DIAG_AGENT_DIR", "PYTHONPATH"):
            if name in env:
                print(f"export {name}={shlex.quote(env[name])}")
        return 0
    if not argv:
        raise UsageError("nothing to run: diag run -- python app.py ARGS")
    exe = shutil.which(argv[0])
    if exe is None:
        raise UsageError(f"command not found: {argv[0]}")
    env = agent_environment(dict(os.environ), agent, str(agent_file) if agent_file else None, directory)
    sys.stdout.flush()  # nothing written so far may be lost with this process's image
    os.execve(exe, argv, env)
    return 0  # pragma: no cover - execve does not return


def _agent_directory(agent_dir: Path, port: str | int) -> str:
    """The agent directory as an absolute path, created (0700) when missing."""
    if port != 0:
        raise UsageError("--agent-dir needs an ephemeral agent port (--agent 127.0.0.1:0, the default): "
                         "every process gets its own agent")
    path = agent_dir.resolve()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--agent-dir {agent_dir}: {err.strerror or err}") from None
    if not path.is_dir():
        raise UsageError(f"--agent-dir {agent_dir}: not a directory")
    return str(path)

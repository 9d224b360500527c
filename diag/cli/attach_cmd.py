"""``diag attach PID`` and ``diag detach PID``: the agent in a process already running."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from diag import attach as attaching
from diag.agent_protocol import parse_address
from diag.cli import option_checks as checks
from diag.cli.console import stderr
from diag.errors import UsageError


def _pid(text: str) -> int:
    digits = text[len("pid:"):] if text.startswith("pid:") else text
    if not digits.isdigit():
        raise UsageError(f"bad PID {text!r}: expected a process id such as 4129 (or pid:4129)")
    return int(digits)


ATTACH_EXAMPLES = (
    ("attach to process 4129; its agent's address is printed", "diag attach 4129"),
    ("on a port of your choice, the address also written to a file",
     "diag attach pid:4129 --agent 127.0.0.1:0 --agent-file agent.txt"),
    ("then any command takes the process itself as its target", "diag tasks pid:4129"),
)
DETACH_EXAMPLES = (
    ("take the agent out of process 4129 again", "diag detach 4129"),
    ("the same, waiting up to 20 seconds for the process to let diag in", "diag detach pid:4129 --timeout 20"),
)
#: The longest wait for a process to let diag in.
MAX_TIMEOUT = 600.0


def attach(
    pid: str = typer.Argument(..., metavar="PID", show_default=False,
                              help="the running Python process (3.11+): N or pid:N"),
    agent: Optional[str] = typer.Option(None, "--agent", metavar="ADDRESS",
                                        show_default="a 0600 unix socket in /tmp/diag-UID/",
                                        help="agent address: HOST:PORT (0: free port) or unix:/PATH"),
    agent_file: Optional[Path] = typer.Option(None, "--agent-file", metavar="FILE", show_default="not written",
                                              help="write the agent address to this file"),
    timeout: float = typer.Option(attaching.DEFAULT_TIMEOUT, "--timeout", metavar="SECONDS",
                                  help=f"seconds to wait for the process to let diag in (at most {MAX_TIMEOUT:g})"),
) -> int:
    """Put the diag agent into a running Python process and print its address."""
    number = _pid(pid)
    checks.seconds("--timeout", timeout, at_most=MAX_TIMEOUT)
    checks.writable_file("--agent-file", agent_file)
    if agent is not None:
        parse_address(agent)
    done = attaching.attach(number, agent, timeout)
    if agent_file is not None:
        try:
            tmp = f"{agent_file}.{os.getpid()}.tmp"
            Path(tmp).write_text(done.url + "\n")
            os.replace(tmp, agent_file)
        except OSError as err:
            raise UsageError(f"--agent-file {agent_file}: {err.strerror or err}") from None
    print(done.url)
    if done.python and done.python.rsplit(".", 1)[0] != "%d.%d" % sys.version_info[:2]:
        stderr.print(f"diag: note: pid {done.pid} runs Python {done.python} and this diag "
                     f"{sys.version_info[0]}.{sys.version_info[1]}: its C accelerator and yappi are not built for it, "
                     f"so diag profile needs --mode sample; a diag installed for {done.python.rsplit('.', 1)[0]} "
                     f"gives everything", markup=False, highlight=False)
    how = "already attached" if done.reused else f"attached in {done.seconds:.2f}s"
    stderr.print(f"diag agent: {done.url} (pid {done.pid}, {how}); run: diag tasks {done.url} "
                 f"or diag tasks pid:{done.pid}", markup=False, highlight=False)
    return 0


def detach(
    pid: str = typer.Argument(..., metavar="PID", show_default=False,
                              help="the process diag attach was used on: N or pid:N"),
    timeout: float = typer.Option(attaching.DEFAULT_TIMEOUT, "--timeout", metavar="SECONDS",
                                  help=f"seconds to wait for the process to let diag in (at most {MAX_TIMEOUT:g})"),
) -> int:
    """Stop the agent in a running process and remove what it installed."""
    number = _pid(pid)
    checks.seconds("--timeout", timeout, at_most=MAX_TIMEOUT)
    stopped = attaching.detach(number, timeout)
    stderr.print(f"diag: pid {number}: " + ("agent stopped" if stopped else "no agent was running"),
                 markup=False, highlight=False)
    return 0

"""What ``diag`` imports to start: ``diag --help`` none of the commands, a command its own
module only, and a usage error none of the renderers or the agent.  The suite runs the CLI
as a subprocess hundreds of times, and each import here was a tenth of a second of each.

The modules are read from ``sys.modules`` in a fresh interpreter after ``main(argv)``
returns: what was imported, not how long it took."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.cli import ROOT, diag_env

COMMANDS = ["tasks", "profile", "objects", "sync", "leaks", "check", "top", "attach", "detach", "run"]
#: What the CLI itself never needs: the agent's profiler and heap walker, the web framework.
NEVER = ("aiohttp", "yappi", "objgraph")

_PROBE = """
import contextlib, io, json, sys
from diag.cli.app import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def imported(*argv: str) -> tuple[int, set[str]]:
    """(exit code, modules imported) of ``diag ARGV`` run in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=ROOT, env=diag_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    return found["code"], set(found["modules"])


def under(modules: set[str], *packages: str) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def commands_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith("diag.cli.") and m.endswith("_cmd"))


def test_top_level_help_imports_no_command_and_nothing_heavy() -> None:
    code, modules = imported("--help")
    assert code == 0
    assert commands_in(modules) == []
    assert under(modules, "diag.agent", "diag.analysis", "diag.collect", "diag.render", "diag.sources",
                 "diag.model", "diag.attach", "rich", "pydantic", "asyncio", "importlib.metadata", *NEVER) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_a_commands_help_imports_its_own_module_only(command: str) -> None:
    code, modules = imported(command, "--help")
    assert code == 0
    own = "diag.cli.attach_cmd" if command in ("attach", "detach") else f"diag.cli.{command}_cmd"
    assert commands_in(modules) == [own]
    assert under(modules, *NEVER) == []


@pytest.mark.parametrize("argv", [["tasks", "--limit", "0", "unix:/nowhere"],
                                  ["sync", "--timeout", "0", "unix:/nowhere"],
                                  ["tasks", "--format", "html", "unix:/nowhere"]])
def test_a_usage_error_imports_no_renderer_and_not_the_agent(argv: list[str]) -> None:
    code, modules = imported(*argv)
    assert code == 2
    assert under(modules, "diag.agent", "diag.collect", "diag.analysis.merge", *NEVER) == []
    assert under(modules, "diag.render") in ([], ["diag.render", "diag.render.formatting", "diag.render.jsonout"])


def test_an_unreachable_target_imports_no_renderer() -> None:
    code, modules = imported("tasks", "--format", "text", "unix:/nowhere/diag.sock")
    assert code == 3
    assert under(modules, "diag.render.tasks_text", "diag.render.tasks_table", "diag.render.many_tasks",
                 "diag.analysis.merge", *NEVER) == []


@pytest.mark.parametrize("argv", [["tasks", "http://127.0.0.1:9"], ["leaks", "http://127.0.0.1:9"],
                                  ["check", "http://127.0.0.1:9"]])
def test_asking_a_target_never_imports_the_agent(argv: list[str]) -> None:
    # the agent package starts with the whole agent (collectors, server): a client needs only
    # diag.agent_protocol from it
    code, modules = imported(*argv)
    assert code == 3
    assert under(modules, "diag.agent", "diag.collect") == []
    assert "diag.agent_protocol" in modules

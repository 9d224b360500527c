"""Every recipe's commands, run against a live target server: the lines the recipe
tells the reader to look for must still be in the output.

A recipe is read as the reader would follow it:

- ``<!-- lab: KEY=VALUE; ... -->`` sets up a target server for the commands that follow
  it, up to the next lab comment (a recipe may have several, each on a fresh server):
  ``server=ARGS`` (its command line), ``get=PATH [xN] ...`` (requests sent first, one
  after another; ``xN`` repeats the path before it), ``background=PATH ...`` (one request
  each, left running: they may hang on purpose), ``load=PATH ...`` (one client per entry
  requesting its path over and over until the commands are done), ``wait=SECONDS``
  (before the first command; default 1.5).
- ``$ diag ...``, ``$ pytest ...``, ``$ grep ...`` and ``$ head ...`` lines are run by
  bash from the repository's root, with this interpreter's scripts first on PATH; the lab
  comment stands for the other lines (starting the server, curl).  127.0.0.1:8080 is the
  test's server, 127.0.0.1:8081 its diag agent, and ``/tmp/`` a directory of the test's.
- A command ending in ``# exit N`` must exit N; others 0 or 1 (1: findings).
- Every backticked line under ``**Look for**`` must be in what the commands printed
  (stdout and stderr: warnings and progress go to stderr).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import ROOT, diag_env
from tests.support.target import TargetServer, http

RECIPES = sorted((ROOT / "recipes").glob("*.md"))
LAB = re.compile(r"<!-- lab: (.*?) -->")
RUN = ("diag", "pytest", "grep", "head")  # the programs whose ``$`` lines are run
EXIT = re.compile(r"#\s*exit (\d+)\s*$")
RECIPE_URL = "http://127.0.0.1:8080"
RECIPE_AGENT_URL = "http://127.0.0.1:8081"  # the agent's own thread, in recipes that need it
DEFAULT_WAIT = 1.5
LOAD_PAUSE = 0.01  # between one load client's requests
LOAD_LIMIT = 60.0  # no load client runs longer than this, whatever happens to the test
COMMAND_TIMEOUT = 120.0


@dataclass
class Phase:
    """One lab set-up and the shell lines run against it."""

    lab: dict[str, list[str]]
    commands: list[str]


def parse(text: str) -> tuple[list[Phase], list[str]]:
    """The phases (lab set-up and commands) and the look-for strings of a recipe."""
    labs = list(LAB.finditer(text))
    assert labs, "a recipe needs a <!-- lab: ... --> line"
    assert not _commands(text[:labs[0].start()]), "commands before the first lab comment"
    phases = []
    for i, match in enumerate(labs):
        end = labs[i + 1].start() if i + 1 < len(labs) else len(text)
        lab: dict[str, list[str]] = {}
        for part in match.group(1).split(";"):
            key, _, value = part.strip().partition("=")
            lab[key.strip()] = value.split()
        phases.append(Phase(lab, _commands(text[match.end():end])))
    look_for = re.findall(r"^- `([^`]+)`$", text.split("**Look for**", 1)[1], re.M)
    return phases, look_for


def _commands(text: str) -> list[str]:
    return [line[2:] for line in text.splitlines() if line.startswith("$ ") and line[2:].split(" ", 1)[0] in RUN]


def expand(paths: list[str]) -> list[str]:
    """``/a x3 /b`` -> ``/a /a /a /b``."""
    out: list[str] = []
    for word in paths:
        repeat = re.fullmatch(r"x(\d+)", word)
        if repeat:
            assert out, f"{word} repeats nothing"
            out.extend([out[-1]] * (int(repeat.group(1)) - 1))
        else:
            out.append(word)
    return out


def test_parse_reads_phases_repeats_and_exit_codes() -> None:
    text = ("<!-- lab: get=/a x3 /b -->\n$ diag tasks http://127.0.0.1:8080\n$ curl x\n"
            "<!-- lab: load=/c; wait=0 -->\n$ pytest t.py  # exit 1\n\n**Look for**:\n\n- `one`\n")
    phases, look_for = parse(text)
    assert [p.commands for p in phases] == [["diag tasks http://127.0.0.1:8080"], ["pytest t.py  # exit 1"]]
    assert expand(phases[0].lab["get"]) == ["/a", "/a", "/a", "/b"]
    assert phases[1].lab == {"load": ["/c"], "wait": ["0"]}
    assert look_for == ["one"]


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.name != "README.md"], ids=lambda p: p.stem)
def test_recipe_output_still_shows_what_it_says(recipe: Path, tmp_path: Path) -> None:
    phases, look_for = parse(recipe.read_text())
    assert look_for and all(p.commands for p in phases)
    output = "".join(run_phase(phase, tmp_path) for phase in phases)
    missing = [s for s in look_for if s not in output]
    assert not missing, f"{recipe.name}: no longer in the output: {missing}\n{output}"


def run_phase(phase: Phase, tmp: Path) -> str:
    """Start a server, set up its lab, run the commands; what they printed."""
    with target_server(phase.lab.get("server", [])) as server:
        # Asked before the lab starts: a recipe may block the app's own port on purpose.
        agent = json.loads(http("GET", server.url + "/healthz")[2])["diag_agent"]
        for path in expand(phase.lab.get("get", [])):
            http("GET", server.url + path)
        stop = threading.Event()
        threads = [threading.Thread(target=_request_ignoring_errors, args=(server.url + p,), daemon=True)
                   for p in phase.lab.get("background", [])]
        threads += [threading.Thread(target=_load, args=(server.url + p, stop), daemon=True)
                    for p in phase.lab.get("load", [])]
        for t in threads:
            t.start()
        try:
            time.sleep(float(phase.lab.get("wait", [DEFAULT_WAIT])[0]))
            output = ""
            for line in phase.commands:
                proc = run_line(line, server.url, agent, tmp)
                expected = EXIT.search(line)
                if expected:
                    assert proc.returncode == int(expected.group(1)), (line, proc.returncode, proc.stdout, proc.stderr)
                else:
                    assert proc.returncode in (0, 1), (line, proc.returncode, proc.stdout, proc.stderr)
                output += proc.stdout + proc.stderr
            return output
        finally:
            stop.set()
            # A lab that blocks the loop (time.sleep for 12 s) answers this only once the
            # sleep is over, however soon the commands finished: wait for it, not 10 s.
            http("POST", server.url + "/admin/release", timeout=60)
            for t in threads:
                t.join(10)


@contextmanager
def target_server(args: list[str], attempts: int = 3) -> Iterator[TargetServer]:
    """A started target server; tried again when another process took its free port first."""
    for attempt in range(attempts):
        server = TargetServer(*args)
        try:
            server.__enter__()
        except RuntimeError as err:
            server.__exit__(None, None, None)
            if "address already in use" in str(err) and attempt + 1 < attempts:
                continue
            raise
        try:
            yield server
        finally:
            server.__exit__(None, None, None)
        return


def run_line(line: str, url: str, agent: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """One ``$`` line of a recipe, as the reader would type it, against this test's server."""
    line = line.replace(RECIPE_URL, url).replace(RECIPE_AGENT_URL, agent).replace("/tmp/", f"{tmp}/")
    env = diag_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in list(env):  # a nested pytest must not inherit this run's settings
        if name.startswith("PYTEST_") or name == "DIAG_LEAKS":
            del env[name]
    return subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT)


def _request_ignoring_errors(url: str) -> None:
    """A request the recipe leaves hanging; how it ends does not matter to the test."""
    try:
        http("GET", url, timeout=60)
    except OSError:
        pass


def _load(url: str, stop: threading.Event) -> None:
    """Request ``url`` over and over until ``stop`` (or LOAD_LIMIT); errors do not stop it."""
    deadline = time.monotonic() + LOAD_LIMIT
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            http("GET", url, timeout=30)
        except OSError:
            pass
        stop.wait(LOAD_PAUSE)

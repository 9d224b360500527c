"""Every recipe's commands, run against a live target server: the lines the recipe
tells the reader to look for must still be in the output."""

from __future__ import annotations

import json
import re
import shlex
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import run_diag
from tests.support.target import TargetServer, http

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.md"))
LAB = re.compile(r"<!-- lab: (.*?) -->")
RECIPE_URL = "http://127.0.0.1:8080"
RECIPE_AGENT_URL = "http://127.0.0.1:8081"  # the agent's own thread, in recipes that need it


def parse(text: str) -> tuple[dict[str, list[str]], list[list[str]], list[str]]:
    """The lab set-up, the ``$ diag ...`` commands and the look-for strings of a recipe."""
    match = LAB.search(text)
    assert match, "a recipe needs a <!-- lab: ... --> line"
    lab: dict[str, list[str]] = {}
    for part in match.group(1).split(";"):
        key, _, value = part.strip().partition("=")
        lab[key.strip()] = value.split()
    commands = [shlex.split(line[2:]) for line in text.splitlines() if line.startswith("$ diag ")]
    look_for = re.findall(r"^- `([^`]+)`$", text.split("**Look for**", 1)[1], re.M)
    return lab, commands, look_for


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.name != "README.md"], ids=lambda p: p.stem)
def test_recipe_output_still_shows_what_it_says(recipe: Path) -> None:
    lab, commands, look_for = parse(recipe.read_text())
    assert commands and look_for
    with TargetServer(*lab.get("server", [])) as server:
        # Asked before the lab starts: a recipe may block the app's own port on purpose.
        agent = json.loads(http("GET", server.url + "/healthz")[2])["diag_agent"]
        for path in lab.get("get", []):
            http("GET", server.url + path)
        threads = [threading.Thread(target=_request_ignoring_errors, args=(server.url + p,), daemon=True)
                   for p in lab.get("background", [])]
        for t in threads:
            t.start()
        try:
            time.sleep(1.5)
            output = ""
            for argv in commands:
                args = [server.url if a == RECIPE_URL else agent if a == RECIPE_AGENT_URL else a for a in argv[1:]]
                proc = run_diag(*args)
                assert proc.returncode in (0, 1), proc.stderr  # 1: findings, as the recipe shows
                output += proc.stdout
            missing = [s for s in look_for if s not in output]
            assert not missing, f"{recipe.name}: no longer in the output: {missing}\n{output}"
        finally:
            http("POST", server.url + "/admin/release")
            for t in threads:
                t.join(10)


def _request_ignoring_errors(url: str) -> None:
    """A request the recipe leaves hanging; how it ends does not matter to the test."""
    try:
        http("GET", url, timeout=60)
    except OSError:
        pass

"""``diag sync`` says which primitives it shows: with ``--all`` it shows every one and no
longer suggests ``--all``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cli import run_diag
from tests.support.target import TargetServer

HINT = "--all for every one"


@pytest.fixture(scope="module")
def server() -> Iterator[TargetServer]:
    with TargetServer("--log-level", "WARNING") as srv:
        yield srv


@pytest.mark.parametrize("fmt", ["text", "table"])
@pytest.mark.parametrize("many", [False, True], ids=["one-target", "two-targets"])
def test_the_all_hint_only_where_all_is_missing(server: TargetServer, fmt: str, many: bool) -> None:
    targets = [server.url, server.url] if many else [server.url]
    hinted = run_diag("sync", *targets, "--format", fmt)
    assert hinted.returncode == 0, hinted.stderr
    assert HINT in hinted.stdout.splitlines()[0], hinted.stdout[:300]
    everything = run_diag("sync", *targets, "--format", fmt, "--all")
    assert everything.returncode == 0, everything.stderr
    first = everything.stdout.splitlines()[0]
    assert HINT not in everything.stdout and "shown (every one, --all)" in first, first

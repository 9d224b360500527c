"""Suite-wide checks: diag must leave nothing behind in the process that runs it."""

from __future__ import annotations

import asyncio
import asyncio.events
import sys
import threading
from collections.abc import Iterator

import pytest

_ORIGINAL_SET_RUNNING_LOOP = asyncio.events._set_running_loop


@pytest.fixture(autouse=True)
def diag_leaves_nothing_behind() -> Iterator[None]:
    """After every test: no profiler installed, asyncio's hooks as they were, no diag threads."""
    yield
    assert sys.getprofile() is None, "a profiler was left installed"
    assert asyncio.events._set_running_loop is _ORIGINAL_SET_RUNNING_LOOP, "the running-loop hook was left"
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("diag-") and t.is_alive()]
    assert not leftover, f"diag threads left running: {leftover}"

"""Unit tests of the target server's handlers, the way a service's own suite calls them:
a mocked request, the handler awaited in ``asyncio.run``.  Each leaky handler has a test,
and so does its fixed twin; with ``--diag-leaks`` only the leaky ones fail."""

import asyncio

from aiohttp.test_utils import make_mocked_request

from target_server import fixed, leaks
from target_server.app import make_app
from target_server.config import Config


def call(handler, path):
    """Await ``handler`` on a GET of ``path`` against a fresh app; return the response status."""
    async def main():
        request = make_mocked_request("GET", path, app=make_app(Config(no_diag=True)))
        return (await handler(request)).status
    return asyncio.run(main())


def test_forgotten_task():
    assert call(leaks.forgotten_task_handler, "/leak/forgotten-task") == 202


def test_forgotten_task_fixed():
    assert call(fixed.fixed_forgotten_task_handler, "/fixed/forgotten-task") == 200


def test_semaphore():
    assert call(leaks.semaphore_leak_handler, "/leak/semaphore") == 502


def test_semaphore_fixed():
    assert call(fixed.fixed_semaphore_handler, "/fixed/semaphore") == 502

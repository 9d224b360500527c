"""The same checks without the plugin: ``diag.testing`` inside the tests themselves."""

import asyncio

from aiohttp.test_utils import make_mocked_request

from diag.testing import assert_no_leaks_async, no_leaks
from target_server import fixed, leaks
from target_server.app import make_app
from target_server.config import Config


def serve(handler, path):
    """Run ``handler`` in a task of its own, as the server runs each request."""
    request = make_mocked_request("GET", path, app=make_app(Config(no_diag=True)))
    return asyncio.create_task(handler(request))


def test_forgotten_task():
    async def main():
        async with no_leaks():
            await serve(leaks.forgotten_task_handler, "/leak/forgotten-task")
    asyncio.run(main())


def test_fixed_twins():
    async def main():
        await serve(fixed.fixed_forgotten_task_handler, "/fixed/forgotten-task")
        await serve(fixed.fixed_semaphore_handler, "/fixed/semaphore")
        await assert_no_leaks_async()
    asyncio.run(main())

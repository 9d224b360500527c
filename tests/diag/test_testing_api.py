"""``diag.testing`` without pytest's help: ``no_leaks`` and ``assert_no_leaks``."""

from __future__ import annotations

import asyncio

import pytest

from diag.render.leftovers_text import PREFIX
from diag.testing import LeakError, assert_no_leaks, ignore_top_function, no_leaks


async def _forever() -> None:
    await asyncio.Event().wait()


def test_no_leaks_sync_block_reports_what_asyncio_run_would_have_cancelled() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(LeakError) as info:
            with no_leaks(timeout=0.1):
                loop.run_until_complete(asyncio.sleep(0))
                task = loop.create_task(_forever(), name="stuck")
                loop.run_until_complete(asyncio.sleep(0))
        assert str(info.value).startswith(f"{PREFIX} the no_leaks() block: 1 task still pending")
        assert '"stuck" [Event.wait' in str(info.value) and len(info.value.report.tasks.tasks) == 1
        task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


def test_async_no_leaks_waits_for_work_that_is_finishing() -> None:
    async def main() -> None:
        async with no_leaks(timeout=1.0):
            asyncio.create_task(asyncio.sleep(0.05))
        with pytest.raises(LeakError):
            async with no_leaks(timeout=0.05):
                stuck = asyncio.create_task(_forever())
        stuck.cancel()
        async with no_leaks(ignore_top_function("Event.wait"), timeout=0.05):
            other = asyncio.create_task(_forever())
            await asyncio.sleep(0)
        other.cancel()
    asyncio.run(main())


def test_decorator_and_assert_no_leaks() -> None:
    @no_leaks(timeout=0.05)
    async def leaky() -> asyncio.Task[None]:
        return asyncio.create_task(_forever())

    async def main() -> None:
        with pytest.raises(LeakError) as info:
            await leaky()
        assert "test_decorator_and_assert_no_leaks.<locals>.leaky" in str(info.value)
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
    asyncio.run(main())
    assert_no_leaks(timeout=0.05)

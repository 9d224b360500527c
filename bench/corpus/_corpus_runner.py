"""Runs a corpus program's ``main`` on asyncio's loop or uvloop (``CORPUS_LOOP=uvloop``), for at most
``CORPUS_SECONDS`` (default 120) so that no program outlives its scorer."""
import asyncio, os, sys

def run(main):
    seconds = float(os.environ.get("CORPUS_SECONDS", "120"))
    async def bounded():
        try:
            await asyncio.wait_for(main(), seconds)
        except asyncio.TimeoutError:
            pass
    if os.environ.get("CORPUS_LOOP") == "uvloop":
        import uvloop
        uvloop.run(bounded())
    else:
        asyncio.run(bounded())
    sys.exit(0)

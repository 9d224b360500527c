"""Runs a corpus program's ``main`` on asyncio's loop or uvloop (``CORPUS_LOOP=uvloop``), for at most
``CORPUS_SECONDS`` (default 120) so that no program outlives its scorer: ``main`` is cancelled
then, and a program whose bug keeps that cancel from ending it (a swallowed cancel, a drain
that never returns) is ended ``HARD_STOP_GRACE`` seconds later all the same."""
import asyncio, os, sys, threading

HARD_STOP_GRACE = 5.0

def run(main):
    seconds = float(os.environ.get("CORPUS_SECONDS", "120"))
    hard_stop = threading.Timer(seconds + HARD_STOP_GRACE, os._exit, (0,))
    hard_stop.daemon = True
    hard_stop.start()
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

"""An assistant gateway whose tool session drops error replies that carry the request id as a string.

Modelled on modelcontextprotocol/python-sdk #1720: "Fix JSON-RPC error response ID
matching": the client keyed its pending requests by the integer id it sent; a server that
answered with the id as a string ("id": "0") had its response looked up under the wrong key,
the lookup failed silently and the caller waited for a response that had already arrived
(the SDK has no read timeout by default).  The fix normalises the response id before the
lookup.

Here ``ToolSession.call`` keeps each caller's future in ``pending`` under the integer id it
sent and awaits it with no timeout; ``ToolSession.receive_loop`` pops the future by the id of
each response and logs and drops a response whose id it does not know.  The tool server
echoes the id as sent in its results, but its error path rebuilds the envelope from the raw
request line and quotes the id.  The "personal" calendar's token has expired, so
``import_calendar`` for that account gets an error reply under the quoted id, which matches
no pending request, and waits for ever on a future still filed under the integer id.  Beside it the question answerer,
the forecast refresher and the "team" calendar import get their results, a progress worker
idles on its queue and the server's connection handler waits for the next request.  The fix
turns a numeric string id back into an int before the lookup.
"""
import asyncio
import itertools
import json
import logging
import re
import signal

log = logging.getLogger("gateway")


class ToolError(Exception):
    pass


# --- the tool server ----------------------------------------------------------------------

class ToolServer:
    def __init__(self):
        self.calendars = {"team": ["standup 09:30", "retro 16:00"], "personal": None}  # None: token expired
        self.inflight = set()

    async def search_docs(self, query):
        await asyncio.sleep(0.05)
        return {"hits": [f"{query}-guide.md", f"{query}-faq.md"]}

    async def forecast(self, city):
        await asyncio.sleep(0.1)
        return {"city": city, "sky": "overcast", "high": 14}

    async def read_calendar(self, account):
        await asyncio.sleep(0.1)
        events = self.calendars[account]
        if events is None:
            raise PermissionError(f"calendar token for {account!r} expired")
        return {"account": account, "events": events}

    async def handle(self, reader, writer):
        try:
            while line := await reader.readline():
                task = asyncio.create_task(self.dispatch(line.decode(), writer))
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)
        except OSError:
            pass
        finally:
            writer.close()

    async def dispatch(self, raw, writer):
        try:
            request = json.loads(raw)
            params = request["params"]
            if request["method"] == "search_docs":
                writer.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/progress",
                                         "params": {"query": params["query"], "done": 0.5}}).encode() + b"\n")
            result = await getattr(self, request["method"])(**params)
            reply = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result})
        except Exception as exc:  # the request may not even have parsed: take the id from the raw line
            found = re.search(r'"id":\s*"?([^",}]+)', raw)
            reply = json.dumps({"jsonrpc": "2.0", "id": found.group(1) if found else None,
                                "error": {"code": -32000, "message": str(exc)}})
        if not writer.is_closing():
            writer.write(reply.encode() + b"\n")


# --- the client session -------------------------------------------------------------------

class ToolSession:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.ids = itertools.count()
        self.pending = {}
        self.notifications = asyncio.Queue()

    async def call(self, method, **params):
        request_id = next(self.ids)
        future = self.pending[request_id] = asyncio.get_running_loop().create_future()
        self.writer.write(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method,
                                      "params": params}).encode() + b"\n")
        return await future

    async def receive_loop(self):
        while line := await self.reader.readline():
            message = json.loads(line)
            if "id" not in message:
                self.notifications.put_nowait(message)
                continue
            response_id = message["id"]
            future = self.pending.pop(response_id, None)
            if future is None:
                log.warning("dropping response to unknown request %r", response_id)
                continue
            if "error" in message:
                future.set_exception(ToolError(message["error"]["message"]))
            else:
                future.set_result(message["result"])


# --- the gateway's jobs -------------------------------------------------------------------

async def import_calendar(session, account, agenda):
    while True:
        try:
            agenda[account] = (await session.call("read_calendar", account=account))["events"]
        except ToolError as exc:
            log.warning("calendar import for %s failed: %s", account, exc)
        await asyncio.sleep(30.0)


async def answer_questions(session, answers):
    for n in itertools.count():
        answers.append(await session.call("search_docs", query=("billing", "sso", "exports")[n % 3]))
        del answers[:-20]
        await asyncio.sleep(0.3)


async def refresh_forecast(session, board):
    while True:
        board["forecast"] = await session.call("forecast", city="Lyon")
        await asyncio.sleep(1.0)


async def track_progress(session, progress):
    while True:
        message = await session.notifications.get()
        progress[message["params"]["query"]] = message["params"]["done"]


async def main():
    logging.basicConfig(level=logging.WARNING)
    tools = ToolServer()
    server = await asyncio.start_server(tools.handle, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    session = ToolSession(reader, writer)
    agenda, answers, board, progress = {}, [], {}, {}
    tasks = [asyncio.create_task(session.receive_loop()),
             asyncio.create_task(track_progress(session, progress)),
             asyncio.create_task(refresh_forecast(session, board)),
             asyncio.create_task(answer_questions(session, answers))]
    await asyncio.sleep(0.2)
    tasks += [asyncio.create_task(import_calendar(session, account, agenda)) for account in ("team", "personal")]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

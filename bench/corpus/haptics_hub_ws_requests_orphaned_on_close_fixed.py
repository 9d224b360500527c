"""A device-hub websocket client whose reader ends on the server's close without failing the requests in flight.

Modelled on Siege-Wizard/buttplug-py #14: "Send message hangs on disconnection": the client
registered a future per message id and awaited the server's reply; when the server
disconnected while a message was in flight, the connector's receive loop just ended, and
the task awaiting that reply never completed.

Here ``HubClient.send`` stores a future in ``HubClient._pending`` and
``HubClient._handle_messages`` resolves it when the reply arrives.  About 1 s in, the
hub's Bluetooth read of the massage chair's battery hangs; the commands queued behind it
for the same device wait, and 0.4 s later the hub's watchdog restarts that session's
device manager and closes the websocket (1011).  The client's receive loop ends, marks
the client disconnected, and the supervisor reconnects; but the battery read and the
vibration command that were waiting for replies on the old connection stay in
``_pending`` for good, so ``battery_monitor`` and ``pattern_player`` never run again.  A
second app on its own connection and the hub keep working.  The fix fails every pending
future with ``Disconnected`` when the receive loop ends.
"""
import asyncio
import itertools
import json
import signal

import aiohttp
from aiohttp import web

COMMAND_WATCHDOG = 0.4


class Disconnected(ConnectionError):
    pass


class HubSession:
    """One client app's session on the hub: a command queue and worker per device."""

    def __init__(self, ws, flaky_battery):
        self.ws = ws
        self.flaky_battery = flaky_battery
        self.battery_reads = 0
        self.queues = {index: asyncio.Queue() for index in (1, 2, 3)}
        self.busy_since = {}
        self.tasks = [asyncio.create_task(self.device_worker(index)) for index in self.queues]
        self.tasks += [asyncio.create_task(self.watchdog()), asyncio.create_task(self.push_status())]

    def dispatch(self, message):
        (kind, fields), = message.items()
        self.queues[fields.get("DeviceIndex", 3)].put_nowait((kind, fields))

    async def reply(self, message):
        if not self.ws.closed:
            await self.ws.send_str(json.dumps([message]))

    async def device_worker(self, index):
        while True:
            kind, fields = await self.queues[index].get()
            self.busy_since[index] = asyncio.get_running_loop().time()
            if kind == "BatteryLevelCmd":
                self.battery_reads += 1
                if self.flaky_battery and index == 1 and self.battery_reads == 3:
                    await asyncio.sleep(30)  # the BLE read never completes; the stack's own timeout is long
                await asyncio.sleep(0.02)
                answer = {"BatteryLevelReading": {"Id": fields["Id"], "DeviceIndex": index, "BatteryLevel": 0.8}}
            else:
                await asyncio.sleep(0.005)
                answer = {"Ok": {"Id": fields["Id"]}}
            self.busy_since.pop(index, None)
            await self.reply(answer)

    async def watchdog(self):
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.1)
            if any(loop.time() - since > COMMAND_WATCHDOG for since in self.busy_since.values()):
                await self.ws.close(code=aiohttp.WSCloseCode.INTERNAL_ERROR, message=b"device manager restart")
                return

    async def push_status(self):
        for n in itertools.count():
            await asyncio.sleep(0.5)
            await self.reply({"DeviceStatus": {"Id": 0, "Rssi": -60 - n % 7}})

    def stop(self):
        for task in self.tasks:
            task.cancel()


class Hub:
    def __init__(self):
        self.flaky_sessions = 1  # the first wellness session meets the hanging battery read

    async def websocket(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        flaky = request.query.get("app") == "wellness" and self.flaky_sessions > 0
        self.flaky_sessions -= flaky
        session = HubSession(ws, flaky_battery=flaky)
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    for message in json.loads(msg.data):
                        session.dispatch(message)
        finally:
            session.stop()
        return ws


class HubClient:
    def __init__(self, http, url):
        self.http, self.url = http, url
        self._ws = None
        self._ids = itertools.count(1)
        self._pending = {}
        self._connected = False
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.status = {}
        self._reader = None

    async def connect(self):
        self._ws = await self.http.ws_connect(self.url)
        self._connected = True
        self.disconnected.clear()
        self.connected.set()
        self._reader = asyncio.create_task(self._handle_messages())
        await self.send("RequestServerInfo", ClientName="home-app", MessageVersion=3)

    async def send(self, kind, **fields):
        if not self._connected:
            raise Disconnected(kind)
        message_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self._ws.send_str(json.dumps([{kind: {"Id": message_id, **fields}}]))
        return await future

    async def _handle_messages(self):
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            for message in json.loads(msg.data):
                (kind, fields), = message.items()
                if fields["Id"] == 0:
                    self.status[kind] = fields
                    continue
                future = self._pending.pop(fields["Id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(Disconnected("connection closed before the reply"))
        self._connected = False
        self.connected.clear()
        self.disconnected.set()

    async def keep_connected(self, reconnects):
        while True:
            await self.disconnected.wait()
            await asyncio.sleep(0.3)
            await self.connect()
            reconnects.append(self.url)


async def pattern_player(client, device, steps):
    for speed in itertools.cycle([0.2, 0.5, 0.8, 0.5]):
        try:
            await client.send("VibrateCmd", DeviceIndex=device, Speeds=[speed])
            steps.append(speed)
            del steps[:-50]
        except Disconnected:
            await client.connected.wait()
        await asyncio.sleep(0.1)


async def battery_monitor(client, device, levels):
    while True:
        try:
            reply = await client.send("BatteryLevelCmd", DeviceIndex=device)
            levels.append(reply["BatteryLevelReading"]["BatteryLevel"])
            del levels[:-20]
        except Disconnected:
            await client.connected.wait()
        await asyncio.sleep(0.5)


async def device_list_watch(client, seen):
    while True:
        await client.send("RequestDeviceList")
        seen.append(len(client.status))
        del seen[:-20]
        await asyncio.sleep(0.5)


async def main():
    loop = asyncio.get_running_loop()
    hub = Hub()
    app = web.Application()
    app.router.add_get("/ws", hub.websocket)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    http = aiohttp.ClientSession()
    try:
        wellness = HubClient(http, f"http://127.0.0.1:{port}/ws?app=wellness")
        media = HubClient(http, f"http://127.0.0.1:{port}/ws?app=media")
        await wellness.connect()
        await media.connect()
        steps, levels, media_steps, seen, reconnects = [], [], [], [], []
        tasks = [asyncio.create_task(wellness.keep_connected(reconnects)),
                 asyncio.create_task(media.keep_connected(reconnects)),
                 asyncio.create_task(pattern_player(wellness, 1, steps)),
                 asyncio.create_task(battery_monitor(wellness, 1, levels)),
                 asyncio.create_task(pattern_player(media, 2, media_steps)),
                 asyncio.create_task(device_list_watch(media, seen))]
        await asyncio.sleep(1.0)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        del tasks
    finally:
        await http.close()
        await runner.cleanup()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

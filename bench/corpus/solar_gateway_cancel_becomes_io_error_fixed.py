"""A solar monitoring gateway whose watchdog cannot restart a Modbus poller: the client turns the cancel into an I/O error.

Modelled on pymodbus-dev/pymodbus #3009: "`Task.cancel()` can't cancel async clients,
`TransactionManager.execute` swallows `CancelledError`": the async request path caught
``asyncio.CancelledError`` while waiting for a response and raised a ``ModbusIOException``
in its place; that is an ``Exception``, so a caller's "log and skip" handler took it and
kept polling, and cancelling the task from outside had no effect.

Here three ``DevicePoller.run`` tasks read holding registers from an inverter, a meter and a
battery (Modbus TCP devices served on 127.0.0.1) every 0.2 s and skip a failed read with
``except Exception``.  About 1 s in, the battery's TCP-to-RS485 gateway wedges: it keeps
the connection open but stops answering on it.  When the battery's last reading is 1 s
old, ``Supervisor.watchdog`` cancels its poller to reconnect, and awaits it.  The cancel
lands in ``TransactionManager.execute`` while it waits for the reply; execute converts it
to ``ModbusIOException``, the poller logs a failed read and goes on polling the wedged
connection, and the watchdog waits for it forever (the battery is never reconnected).
The fix lets ``CancelledError`` propagate out of execute.
"""
import asyncio
import itertools
import logging
import signal
import struct
import time

log = logging.getLogger("solar.gateway")
READ_HOLDING = 0x03
RESPONSE_TIMEOUT = 3.0
RETRIES = 1
POLL_INTERVAL = 0.2
STALE_AFTER = 1.0


class ModbusIOException(Exception):
    pass


def mbap(tid, unit, pdu):
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


class ModbusDevice:
    """A Modbus TCP device (or gateway) answering 'read holding registers'."""

    def __init__(self, name, base, wedge_after=None):
        self.name, self.base = name, base
        self.wedge_after = wedge_after  # requests answered on the first connection before it wedges
        self.connections = 0

    async def handle(self, reader, writer):
        self.connections += 1
        wedge_after = self.wedge_after if self.connections == 1 else None
        try:
            for served in itertools.count():
                header = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                if wedge_after is not None and served >= wedge_after:
                    continue  # the RS485 side hangs: requests are read and never answered
                _, start, count = struct.unpack(">BHH", pdu)
                await asyncio.sleep(0.01)
                values = [(self.base + start + i + int(time.monotonic() * 10)) & 0xFFFF for i in range(count)]
                body = struct.pack(">BB", READ_HOLDING, 2 * count) + struct.pack(f">{count}H", *values)
                writer.write(mbap(tid, unit, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class TransactionManager(asyncio.Protocol):
    def __init__(self):
        self.transport = None
        self.buffer = b""
        self.response_future = None
        self.expected_tid = None
        self.next_tid = itertools.count(1)
        self.lock = asyncio.Lock()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        while len(self.buffer) >= 7:
            tid, _, length, _ = struct.unpack(">HHHB", self.buffer[:7])
            if len(self.buffer) < 6 + length:
                return
            pdu, self.buffer = self.buffer[7:6 + length], self.buffer[6 + length:]
            future = self.response_future
            if tid == self.expected_tid and future is not None and not future.done():
                future.set_result(pdu)

    def connection_lost(self, exc):
        if self.response_future is not None and not self.response_future.done():
            self.response_future.set_exception(ModbusIOException("connection lost"))

    async def execute(self, unit, pdu):
        async with self.lock:
            for attempt in range(RETRIES + 1):
                self.expected_tid = next(self.next_tid) & 0xFFFF
                self.response_future = asyncio.get_running_loop().create_future()
                self.buffer = b""
                self.transport.write(mbap(self.expected_tid, unit, pdu))
                try:
                    return await asyncio.wait_for(self.response_future, RESPONSE_TIMEOUT)
                except asyncio.TimeoutError:
                    log.debug("no response (attempt %d)", attempt + 1)
            raise ModbusIOException(f"no response after {RETRIES + 1} attempts")


class ModbusClient:
    def __init__(self, port):
        self.port = port
        self.protocol = None

    async def connect(self):
        _, self.protocol = await asyncio.get_running_loop().create_connection(
            TransactionManager, "127.0.0.1", self.port)

    def close(self):
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()

    async def read_holding_registers(self, address, count, unit=1):
        pdu = await self.protocol.execute(unit, struct.pack(">BHH", READ_HOLDING, address, count))
        return list(struct.unpack(f">{pdu[1] // 2}H", pdu[2:]))


class DevicePoller:
    def __init__(self, name, client, readings):
        self.name, self.client, self.readings = name, client, readings
        self.last_ok = time.monotonic()
        self.errors = 0
        self.running = True
        self.task = None

    async def run(self):
        while self.running:
            try:
                registers = await self.client.read_holding_registers(40000, 8)
                self.readings[self.name] = registers
                self.last_ok = time.monotonic()
            except Exception as exc:  # skip this cycle, the device may be busy
                self.errors += 1
                log.info("%s: read failed: %s", self.name, exc)
            await asyncio.sleep(POLL_INTERVAL)


class Supervisor:
    def __init__(self, ports, readings):
        self.ports, self.readings = ports, readings
        self.pollers = {}
        self.restarts = 0

    async def start_poller(self, name):
        client = ModbusClient(self.ports[name])
        await client.connect()
        poller = self.pollers[name] = DevicePoller(name, client, self.readings)
        poller.task = asyncio.create_task(poller.run())

    async def restart(self, name):
        poller = self.pollers[name]
        poller.task.cancel()
        try:
            await poller.task
        except asyncio.CancelledError:
            pass
        poller.client.close()
        self.restarts += 1
        await self.start_poller(name)

    async def watchdog(self):
        while True:
            await asyncio.sleep(0.25)
            for name, poller in list(self.pollers.items()):
                if time.monotonic() - poller.last_ok > STALE_AFTER:
                    log.warning("%s: no reading for %.1f s, reconnecting", name, time.monotonic() - poller.last_ok)
                    await self.restart(name)


class StatusApi:
    def __init__(self, readings, supervisor):
        self.readings, self.supervisor = readings, supervisor

    async def handle(self, reader, writer):
        while line := await reader.readline():
            name = line.decode().strip()
            writer.write(f"{name} {self.readings.get(name, [])[:2]} restarts={self.supervisor.restarts}\n".encode())
            await writer.drain()
        writer.close()


async def dashboard(port, names, shown):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in itertools.count():
        writer.write(names[n % len(names)].encode() + b"\n")
        shown.append(await reader.readline())
        del shown[:-30]
        await asyncio.sleep(0.3)


async def energy_export(readings, exported):
    while True:
        await asyncio.sleep(0.5)
        exported.append(sum(regs[0] for regs in readings.values() if regs))
        del exported[:-30]


async def main():
    loop = asyncio.get_running_loop()
    devices = {"inverter": ModbusDevice("inverter", 1000), "meter": ModbusDevice("meter", 2000),
               "battery": ModbusDevice("battery", 3000, wedge_after=5)}
    servers, ports = [], {}
    for name, device in devices.items():
        server = await asyncio.start_server(device.handle, "127.0.0.1", 0)
        servers.append(server)
        ports[name] = server.sockets[0].getsockname()[1]
    readings = {}
    supervisor = Supervisor(ports, readings)
    for name in devices:
        await supervisor.start_poller(name)
    api = StatusApi(readings, supervisor)
    api_server = await asyncio.start_server(api.handle, "127.0.0.1", 0)
    servers.append(api_server)
    shown, exported = [], []
    tasks = [asyncio.create_task(supervisor.watchdog()),
             asyncio.create_task(dashboard(api_server.sockets[0].getsockname()[1], list(devices), shown)),
             asyncio.create_task(energy_export(readings, exported))]
    try:
        await asyncio.sleep(1.0)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        for poller in supervisor.pollers.values():
            poller.running = False  # graceful stop: each poller ends after its current cycle
        for server in servers:
            server.close()
        del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

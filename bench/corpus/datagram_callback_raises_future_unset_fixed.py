"""A UDP poller whose response callback raises before it resolves the request's future.

Modelled on pysnmp #83, "[PATCH] asyncio cmdgen-s let exceptions fall through to the base event
loop; commands hang": when a response could not be resolved, the exception escaped the receive
callback to the event loop (which only logs it), and the caller's future was left unmet, so the
command hung forever.

Mechanism: a monitoring service polls three devices over UDP (simulated agents on 127.0.0.1), one
client endpoint per device, matching responses to requests by id.  One device answers a load OID
with an ``Opaque`` value the decoder does not know; ``datagram_received`` raises KeyError before it
resolves the request, whose future stays in ``_pending``; the loop logs "Exception in callback" and
that device's poller waits on the future forever.  The other pollers keep polling.

Fix: decode inside ``try`` and hand a decoding error to the request's future with
``set_exception``, so the poller logs it and carries on.
"""
import asyncio
import itertools
import logging
import signal

DECODERS = {"INTEGER": int, "Counter32": int, "TimeTicks": int, "OctetString": str}
MIB = {"sysUpTime": ("TimeTicks", "81234"), "ifInOctets": ("Counter32", "99812"),
       "hrProcessorLoad": ("INTEGER", "7"), "sysName": ("OctetString", "edge")}


class AgentSimulator(asyncio.DatagramProtocol):
    """A device's agent: answers GETs; ``opaque_load`` models firmware that wraps the load in Opaque."""

    def __init__(self, opaque_load=False):
        self.opaque_load = opaque_load

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        req_id, oid = data.decode().split()
        kind, value = MIB[oid]
        if oid == "hrProcessorLoad" and self.opaque_load:
            kind, value = "Opaque", "9f780441200000"
        self.transport.sendto(f"{req_id} {oid} {kind} {value}".encode(), addr)


class SnmpClient(asyncio.DatagramProtocol):
    def __init__(self):
        self._ids = itertools.count(1)
        self._pending = {}
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        req_id, oid, kind, raw = data.decode().split(" ", 3)
        fut = self._pending.get(int(req_id))
        if fut is None or fut.done():
            return
        try:
            value = DECODERS[kind](raw)
        except KeyError:
            del self._pending[int(req_id)]
            fut.set_exception(ValueError(f"cannot decode a {kind} value for {oid}"))
            return
        del self._pending[int(req_id)]
        fut.set_result((oid, value))

    async def get(self, oid):
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        self.transport.sendto(f"{req_id} {oid}".encode())
        return await fut


async def poll_device(name, client, samples):
    while True:
        for oid in ("sysUpTime", "ifInOctets", "hrProcessorLoad"):
            try:
                samples.append((name, await client.get(oid)))
            except ValueError as exc:
                samples.append((name, exc))
        await asyncio.sleep(0.3)


async def alert_worker(alerts):
    log = logging.getLogger("alerts")
    while True:
        device, message = await alerts.get()
        try:
            log.warning("%s: %s", device, message)
        finally:
            alerts.task_done()


async def main():
    loop = asyncio.get_running_loop()
    samples, alerts, pollers = [], asyncio.Queue(), []
    for name, opaque in (("router-1", False), ("switch-2", False), ("printer-3", True)):
        agent, _ = await loop.create_datagram_endpoint(lambda o=opaque: AgentSimulator(o), local_addr=("127.0.0.1", 0))
        _, client = await loop.create_datagram_endpoint(SnmpClient, remote_addr=agent.get_extra_info("sockname"))
        pollers.append(asyncio.create_task(poll_device(name, client, samples), name=f"poll-{name}"))
    workers = [asyncio.create_task(alert_worker(alerts), name=f"alerts-{i}") for i in range(2)]
    while not any(name == "printer-3" for name, _ in samples):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in (*pollers, *workers):
            task.cancel()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

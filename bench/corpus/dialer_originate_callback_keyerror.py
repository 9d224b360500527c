"""A failed originate makes the call manager's done-callback raise; the dialer waits forever.

Modelled on gawel/panoramisk #37, "script freezing than send originate failed": when an
``Async: true`` originate failed, the program froze on ``yield from
callmanager.send_originate(...)``.  ``CallManager.send_originate`` returns a bare future
that a done-callback on the action's response future resolves, after looking the call up
by the ``Uniqueid`` of the final ``OriginateResponse`` event; a failed call's event carries
no real id (Asterisk sends ``Uniqueid: <null>``), so the look-up raises ``KeyError`` inside
the callback (the "Exception in callback CallManager.set_result(...) ... KeyError" tracebacks
of #61 and #64), the loop only logs it, and the caller's future stays pending.

Story: an appointment-reminder dialer keeps one manager connection to its PBX (a small
server on 127.0.0.1 speaking an AMI-like protocol), read by an ``asyncio.Protocol``.  At
0.3 s the campaign starts one ``dial_patient`` task per number.  Each awaits the future
from ``send_originate``, then the call's events until hang-up.  Two of the six numbers are
busy: their ``OriginateResponse`` carries ``Uniqueid: <null>``, ``_set_result`` raises
``KeyError`` on the loop (the exception goes only to the loop's exception handler), and
the futures those two tasks await are never resolved; after the callback ran, nothing but
the waiting tasks refers to them.

Stuck: two ``dial_patient`` tasks, each on a bare future.  Healthy: the four other calls
complete; the keep-alive pinger sends a Ping action every 0.3 s over the same connection
and gets its answer; the PBX's connection handler waits on stream reads; the campaign
sleeps until its next window; the status ticker; main on its stop event.

Fix: a final event whose call is unknown fails the caller's future with
``OriginateFailed``, and ``dial_patient`` records the failure.
"""
import asyncio
import itertools
import signal
from functools import partial

BUSY = {"5550102", "5550105"}


def encode(fields):
    return "".join(f"{key}: {value}\r\n" for key, value in fields.items()).encode() + b"\r\n"


class Pbx:
    """The telephony server: answers actions and reports call progress as events."""

    def __init__(self):
        self.uniqueids = itertools.count(1)
        self.dials = set()

    async def handle(self, reader, writer):
        try:
            while message := await reader.readuntil(b"\r\n\r\n"):
                fields = dict(line.split(": ", 1) for line in message.decode().strip().split("\r\n"))
                action_id = fields["ActionID"]
                if fields["Action"] == "Originate":
                    writer.write(encode({"Response": "Success", "ActionID": action_id,
                                         "Message": "Originate successfully queued"}))
                    dial = asyncio.create_task(self.dial(writer, action_id, fields["Channel"]))
                    self.dials.add(dial)
                    dial.add_done_callback(self.dials.discard)
                else:
                    writer.write(encode({"Response": "Success", "ActionID": action_id, "Ping": "Pong"}))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def dial(self, writer, action_id, channel):
        await asyncio.sleep(0.1)
        if channel.rsplit("/", 1)[1] in BUSY:
            writer.write(encode({"Event": "OriginateResponse", "ActionID": action_id, "Response": "Failure",
                                 "Reason": "5", "Channel": channel, "Uniqueid": "<null>"}))
            return
        uniqueid = f"1733.{next(self.uniqueids)}"
        writer.write(encode({"Event": "Newchannel", "Channel": channel, "Uniqueid": uniqueid}))
        writer.write(encode({"Event": "OriginateResponse", "ActionID": action_id, "Response": "Success",
                             "Reason": "4", "Channel": channel, "Uniqueid": uniqueid}))
        await asyncio.sleep(0.25)
        writer.write(encode({"Event": "Hangup", "Channel": channel, "Uniqueid": uniqueid, "Cause": "16"}))


class ManagerProtocol(asyncio.Protocol):
    def __init__(self, manager):
        self.manager = manager
        self.buffer = b""

    def connection_made(self, transport):
        self.manager.transport = transport

    def data_received(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.manager.dispatch(dict(line.split(": ", 1) for line in raw.decode().split("\r\n")))


class Action:
    def __init__(self, fields, future):
        self.fields = fields
        self.future = future
        self.messages = []

    def add(self, message):
        """Keep a message for this action; True once the action's answer is complete."""
        self.messages.append(message)
        if self.fields["Action"] == "Originate":
            return message.get("Event") == "OriginateResponse"
        return "Response" in message


class Call:
    def __init__(self, uniqueid):
        self.uniqueid = uniqueid
        self.events = asyncio.Queue()


class OriginateFailed(Exception):
    pass


class CallManager:
    def __init__(self):
        self.transport = None
        self.action_ids = itertools.count(1)
        self.pending = {}
        self.calls = {}

    async def connect(self, port):
        loop = asyncio.get_running_loop()
        await loop.create_connection(partial(ManagerProtocol, self), "127.0.0.1", port)

    def send_action(self, fields):
        action_id = f"action/{next(self.action_ids)}"
        action = Action({**fields, "ActionID": action_id}, asyncio.get_running_loop().create_future())
        self.pending[action_id] = action
        self.transport.write(encode(action.fields))
        return action.future

    def dispatch(self, message):
        action = self.pending.get(message.get("ActionID"))
        if action is not None:
            if action.add(message):
                del self.pending[message["ActionID"]]
                action.future.set_result(action.messages)
            return
        uniqueid = message.get("Uniqueid")
        if uniqueid:
            self.calls.setdefault(uniqueid, Call(uniqueid)).events.put_nowait(message)

    def _set_result(self, future, answered):
        final = answered.result()[-1]
        call = self.calls[final["Uniqueid"]]
        if not future.done():
            future.set_result(call)

    def send_originate(self, fields):
        future = asyncio.get_running_loop().create_future()
        self.send_action({"Action": "Originate", "Async": "true", **fields}).add_done_callback(
            partial(self._set_result, future))
        return future


async def dial_patient(manager, number, outcomes):
    call = await manager.send_originate({"Channel": f"PJSIP/{number}", "Context": "reminders", "Exten": "s"})
    while (await call.events.get())["Event"] != "Hangup":
        pass
    manager.calls.pop(call.uniqueid, None)
    outcomes[number] = "delivered"


async def run_campaign(manager, numbers, outcomes, dialing):
    await asyncio.sleep(0.3)
    for number in numbers:
        task = asyncio.create_task(dial_patient(manager, number, outcomes), name=f"dial-{number}")
        dialing.add(task)
        task.add_done_callback(dialing.discard)
        await asyncio.sleep(0.03)
    await asyncio.sleep(3600)  # the next reminder window


async def keepalive(manager, pongs):
    while True:
        answer = await manager.send_action({"Action": "Ping"})
        pongs.append(answer[-1]["Ping"])
        del pongs[:-20]
        await asyncio.sleep(0.3)


async def status_ticker(outcomes, dialing, samples):
    while True:
        samples.append((len(outcomes), len(dialing)))
        del samples[:-20]
        await asyncio.sleep(0.25)


async def main():
    loop = asyncio.get_running_loop()
    pbx = Pbx()
    server = await asyncio.start_server(pbx.handle, "127.0.0.1", 0)
    manager = CallManager()
    await manager.connect(server.sockets[0].getsockname()[1])
    numbers = ["5550101", "5550102", "5550103", "5550104", "5550105", "5550106"]
    outcomes, dialing, pongs, samples = {}, set(), [], []
    tasks = [asyncio.create_task(run_campaign(manager, numbers, outcomes, dialing), name="campaign"),
             asyncio.create_task(keepalive(manager, pongs), name="keepalive"),
             asyncio.create_task(status_ticker(outcomes, dialing, samples), name="status")]
    await asyncio.sleep(1.2)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

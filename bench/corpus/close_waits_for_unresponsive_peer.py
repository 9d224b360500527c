"""A device API client whose close() waits, with no deadline, for a connection that cannot finish closing.

Modelled on luqasz/librouteros #384: "AsyncApiProtocol.close() can hang forever on an
unresponsive peer": ``close()`` awaited ``writer.wait_closed()`` with no timeout, unlike
every other I/O method of the protocol, so on a peer that stopped responding ``close()``
never returned.

Here ``apply_config`` pushes a large configuration to a router whose API process has hung
(the kernel accepted the connection, nothing reads it), gives up waiting for the answer
after a second and closes the session.  The transport still holds unsent bytes the peer
will never take, so it never finishes closing and ``wait_closed()`` waits forever.  A
healthy router's keep-alive session idles alongside, with a poller.  The fix bounds the
wait for the close and aborts the connection when it runs out.
"""
import asyncio
import signal
import socket


class RouterApi:
    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port):
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def call(self, command, timeout):
        self.writer.write(command + b"\n")
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def close(self):
        self.writer.close()
        await self.writer.wait_closed()


async def apply_config(port, log):
    api = await RouterApi.connect(port)
    try:
        log.append(await api.call(b"/import " + b"ip route add 10.0.0.0/8 " * 400_000, timeout=1.0))
    except asyncio.TimeoutError:
        log.append(b"timeout")
    finally:
        await api.close()


async def answer(reader, writer):
    while line := await reader.readline():
        writer.write(b"!done " + line[:16] + b"\n")
        await writer.drain()
    writer.close()


async def poll_health(api, log):
    while True:
        log.append(await api.call(b"/system/health/print", timeout=5.0))
        del log[:-10]
        await asyncio.sleep(0.5)


async def main():
    hung = socket.socket()
    hung.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hung.bind(("127.0.0.1", 0))
    hung.listen()  # the router's API process hangs: connections are queued, never read
    healthy = await asyncio.start_server(answer, "127.0.0.1", 0)
    log = []
    session = await RouterApi.connect(healthy.sockets[0].getsockname()[1])
    tasks = [asyncio.create_task(poll_health(session, log)),
             asyncio.create_task(apply_config(hung.getsockname()[1], log))]
    await asyncio.sleep(1.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    hung.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)

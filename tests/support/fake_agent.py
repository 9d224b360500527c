"""A fake diag agent on 127.0.0.1 that answers every request with the bytes, the shape
and the speed a test asks for: a drip of one byte every 50 ms, a body with no end, a
Content-Length of 99999999999, silence.  ``diag`` is pointed at it to show that its
deadlines and size limits hold whatever comes back.

Usage::

    with FakeAgent(Answer(head=http_head(200, length=None), filler=b"[", endless=True)) as fake:
        run_diag("tasks", fake.url, "--timeout", "2")
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Callable

#: Paths answered properly when ``Answer.alive`` is set, so that the misbehaviour hits the
#: request that does the work (the probe before a proof, the status before a profile).
ALIVE_PATHS = {"/health": {"schema": "diag.health/1", "loops": []},
               "/profile/status": {"schema": "diag.profile-status/1", "busy": False}}


def http_head(status: int = 200, length: int | str | None = None, *, extra: tuple[str, ...] = (),
              content_type: str = "application/json") -> bytes:
    """A status line and headers; ``length`` None leaves Content-Length out."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", "Connection: close", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def accept_loop(sock: socket.socket, stop: threading.Event, conns: list[socket.socket],
                serve: Callable[[socket.socket], None]) -> list[threading.Thread]:
    """Accept until ``stop``, each connection served on its own daemon thread; the threads."""
    threads = []
    sock.settimeout(0.05)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except OSError:
            continue
        conns.append(conn)
        thread = threading.Thread(target=serve, args=(conn,), name="fake-agent-answer", daemon=True)
        threads.append(thread)
        thread.start()
    return threads


@dataclass(frozen=True)
class Answer:
    """``head``, then ``body``, then ``filler`` again and again while ``endless``; written
    ``chunk`` bytes at a time with ``delay`` seconds in between; then the connection is
    closed, or held open without a word (``hang``)."""

    head: bytes = b""
    body: bytes = b""
    filler: bytes = b""
    endless: bool = False
    chunk: int = 1 << 16
    delay: float = 0.0
    hang: bool = False
    alive: bool = False


def answer(status: int, body: bytes, *, length: int | str | None | bool = True, **kwargs: object) -> Answer:
    """An answer with ``body``; ``length`` True gives its true Content-Length."""
    declared = len(body) if length is True else (None if length is False else length)
    return Answer(head=http_head(status, declared), body=body, **kwargs)  # type: ignore[arg-type]


class FakeAgent:
    """The fake agent's listening socket and one thread per connection; everything ends
    on exit, including an answer still dripping or hanging."""

    def __init__(self, how: Answer) -> None:
        self.how = how
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.requests: list[str] = []
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        self.acceptor = threading.Thread(target=self._accept, name="fake-agent", daemon=True)

    def __enter__(self) -> FakeAgent:
        self.acceptor.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop.set()
        self.acceptor.join(5)
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self.threads:
            thread.join(5)
        for conn in self.conns:
            conn.close()
        self.sock.close()

    def _accept(self) -> None:
        self.threads += accept_loop(self.sock, self.stop, self.conns, self._serve)

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 1 << 16:
                got = conn.recv(4096)
                if not got:
                    return
                request += got
            line = request.split(b"\r\n", 1)[0].decode("latin-1")
            self.requests.append(line)
            path = line.split(" ")[1].split("?")[0] if line.count(" ") >= 2 else ""
            alive = next((doc for suffix, doc in ALIVE_PATHS.items() if path.endswith(suffix)), None)
            if self.how.alive and alive is not None:
                body = json.dumps(alive).encode()
                conn.sendall(http_head(200, len(body)) + body)
                return
            self._write(conn)
            if self.how.hang:
                self.stop.wait(60)
        except OSError:
            pass  # the client gave up, as it should
        finally:
            conn.close()

    def _write(self, conn: socket.socket) -> None:
        how = self.how
        pending = how.head + how.body
        while pending or (how.endless and how.filler):
            if not pending:
                pending = how.filler * max(1, how.chunk // max(1, len(how.filler)))
            piece, pending = pending[:how.chunk], pending[how.chunk:]
            conn.settimeout(5)
            conn.sendall(piece)
            if how.delay and self.stop.wait(how.delay):
                return
            if self.stop.is_set():
                return

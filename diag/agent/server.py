"""The agent's own HTTP server: a daemon thread, loopback TCP or a 0600 unix socket.

It uses only the standard library and never touches the target's event loop, so it
answers while that loop is blocked.
"""

from __future__ import annotations

import hmac
import http.server
import io
import os
import socket
import socketserver
import stat
import threading
import time
import urllib.parse
import weakref
import zlib
from typing import Any

from diag.agent.endpoints import Endpoints, GcPausedStream, error
from diag.agent_protocol import check_agent_address, unix_path_problem
from diag.errors import UsageError

#: A connection waiting for a request (just opened, or kept alive after an answer) is
#: closed after this long; so is one whose client stops reading or writing this long.
IDLE_TIMEOUT = 10.0
#: A request's line and headers (and a body to discard) must arrive in full within this
#: long of their first byte: a client trickling a byte at a time is cut, not waited for.
HEAD_TIMEOUT = 5.0
#: Connections served at once.  When all are taken, a new client takes the place of the
#: connection that has waited longest for a request, if that is EVICT_AFTER or more;
#: otherwise it gets 503 and is closed at once.  Slow or silent clients cannot keep others out.
MAX_CONNECTIONS = 32
EVICT_AFTER = 2.0
#: An answer must be taken at this rate (bytes a second) after a first SEND_GRACE
#: seconds, or the connection is cut and the answer dropped.
MIN_SEND_RATE = 1024 * 1024
SEND_GRACE = 10.0
#: Answers of paced routes (walks of the program's tasks or heap) are built one at a
#: time: building one takes several times its size (a 26 MB dump of 30,000 tasks, about
#: 170 MB), and two builds hold the GIL in turns, so running them together is no faster.
#: Built answers then wait until the answers being sent total at most MAX_SENDING_BYTES
#: (an answer is at most endpoints.MAX_RESPONSE_BYTES, 32 MiB).  A request waits for its
#: turn at either step up to MAX_HEAVY_WAIT, then gets 503 and Retry-After.
MAX_SENDING_BYTES = 64 * 1024 * 1024
MAX_HEAVY_WAIT = 20.0
#: Query parameters a request may carry.
MAX_QUERY_FIELDS = 64
#: A request body (the API takes none) up to this size is read and dropped; a larger
#: one, or a chunked one, ends the connection after the answer.
MAX_DISCARDED_BODY = 64 * 1024
#: Answers of paced routes (task, sync and heap walks) served per second, all clients
#: together: twenty clients dumping in a loop then cost the target a bounded share of
#: its CPU instead of all the GIL time they can get.  A request waits for its turn (in
#: this thread, without the GIL) up to MAX_PACE_WAIT, then gets 503 and Retry-After.
PACED_ANSWERS_PER_SECOND = 20.0
MAX_PACE_WAIT = 5.0
#: Connections the kernel queues before the server accepts them (the standard
#: library's default of 5 makes a sixth simultaneous client wait for a SYN retry).
LISTEN_BACKLOG = 64
#: Answers to clients that take gzip are compressed from this size on, at this level
#: (1: the fastest; JSON of task dumps still shrinks about tenfold).
GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 1
_BUSY_BODY = b'{"error": "busy: too many connections to the agent; retry shortly"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Retry-After: 1\r\n"
         b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


def authorized(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, the scheme in any case, one space, then the token
    exactly as configured (compared in constant time)."""
    scheme, space, given = (header or "").partition(" ")
    # http.server decodes header values as latin-1, so this gives back the bytes sent.
    match = hmac.compare_digest(given.encode("latin-1", "replace"), token.encode("ascii", "replace"))
    return bool(space) and scheme.lower() == "bearer" and match


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"
    server_version = "diag-agent"
    default_request_version = "HTTP/1.0"  # a malformed request line still gets a status line back
    #: The longest any one read or write waits (the socket's timeout).
    timeout = IDLE_TIMEOUT
    #: When the request being read must be in: each read waits at most until then.
    deadline = 0.0

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the standard reader: ours bounds each read by the deadline
        self.rfile = self.reader = io.BufferedReader(_ReadsBefore(self))

    def handle_one_request(self) -> None:
        """Wait (up to IDLE_TIMEOUT) for a request to begin, then read its head within
        HEAD_TIMEOUT; meanwhile this connection may give its place to a new client."""
        waiting = self.server.waiting
        self.deadline = time.monotonic() + IDLE_TIMEOUT
        waiting.add(self.connection)
        try:
            if not self.reader.peek(1):
                self.close_connection = True  # the client hung up (or was let go)
                return
            self.deadline = time.monotonic() + HEAD_TIMEOUT
            super().handle_one_request()
        except OSError:  # TimeoutError included: nothing came in time
            self.close_connection = True
        finally:
            waiting.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: never write into the target's stderr
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests, unknown methods and oversized lines get JSON too, never HTML."""
        self.close_connection = True
        if code == 501:  # a method the agent does not serve
            code, message = 405, f"method {str(self.command)[:20]!r} not allowed; the agent takes GET and POST"
        resp = error(code, _clip(message or self.responses.get(code, ("error",))[0]))
        self._send(resp.status, resp.body, resp.content_type)

    def address_string(self) -> str:
        return "unix" if not isinstance(self.client_address, tuple) else str(self.client_address[0])

    def _gzip_wanted(self) -> bool:
        """The client takes gzip (``Accept-Encoding: gzip``, not with ``q=0``)."""
        for item in (self.headers.get("Accept-Encoding") or "").split(","):
            coding, _, params = item.partition(";")
            if coding.strip().lower() not in ("gzip", "x-gzip"):
                continue
            weight = 1.0
            for param in params.split(";"):
                key, _, value = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        weight = float(value)
                    except ValueError:
                        weight = 0.0
            return weight > 0
        return False

    def _send(self, status: int, body: bytes, content_type: str, stream: GcPausedStream | None = None) -> None:
        """Send one answer: ``body``, or the pieces of ``stream`` as they are made (chunked
        transfer encoding), gzip-compressed when the client takes it and it is worth it."""
        gzip = status == 200 and self._gzip_wanted() and (stream is not None or len(body) >= GZIP_MIN_BYTES)
        streamed = stream is not None
        if self.command == "HEAD" and stream is not None:  # the head a GET gets, without the pieces
            stream.close()
            stream = None
        try:
            if gzip and not streamed:
                body = _gzip(body)  # zlib lets go of the GIL while it compresses
            chunked = streamed and self.request_version == "HTTP/1.1"
            if streamed and not chunked:
                self.close_connection = True  # an HTTP/1.0 client reads to the end
            # Since Python 3.5 a socket's timeout bounds a whole sendall: the answer must
            # go out at MIN_SEND_RATE or better.
            self.connection.settimeout(SEND_GRACE + len(body) / MIN_SEND_RATE)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if gzip:
                self.send_header("Content-Encoding", "gzip")
            if status == 200:
                self.send_header("Vary", "Accept-Encoding")
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            elif not streamed:
                self.send_header("Content-Length", str(len(body)))
            if status == 503:
                self.send_header("Retry-After", "1")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if stream is not None:
                self._send_stream(stream, gzip, chunked)
            elif self.command != "HEAD":
                self.wfile.write(body)
        except OSError:  # the client went away: nothing to free, the answer is dropped
            self.close_connection = True
        finally:
            if stream is not None:
                stream.close()

    def _send_stream(self, stream: GcPausedStream, gzip: bool, chunked: bool) -> None:
        """The pieces of ``stream`` as they come, each compressed (``gzip``) and framed as a
        chunk (``chunked``).  The client must take them at MIN_SEND_RATE after SEND_GRACE,
        as a whole answer, counting the time its writes wait.  A stream that fails midway ends the connection without the
        last chunk: the client sees an answer cut short, never a complete-looking one."""
        packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31) if gzip else None
        sent = 0
        blocked = 0.0  # time spent waiting for the client to take what was sent

        def put(data: bytes) -> None:
            nonlocal sent, blocked
            if not data:  # an empty chunk would end the answer
                return
            # the rule of a whole answer, on the time the client makes the agent wait (the
            # time spent making the pieces is the agent's own, not held against the client)
            left = SEND_GRACE + (sent + len(data)) / MIN_SEND_RATE - blocked
            if left <= 0:
                raise TimeoutError("the client takes the answer too slowly")
            self.connection.settimeout(left)
            began = time.monotonic()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            blocked += time.monotonic() - began
            sent += len(data)

        try:
            for piece in stream:
                put(packer.compress(piece) if packer is not None else piece)
            if packer is not None:
                put(packer.flush())
        except OSError:
            raise
        except Exception:  # the answer cannot be finished: cut, so that it is not taken as whole
            self.close_connection = True
            return
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _discard_body(self) -> None:
        """Read and drop a request body, so that it is not taken for the next request."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return
        raw = self.headers.get("Content-Length")
        if raw is None:
            return
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_DISCARDED_BODY:
            self.close_connection = True
            return
        if length:
            self.rfile.read(length)

    def _handle(self, method: str) -> None:
        # Named so that diag's own threads are never mistaken for the program's.
        threading.current_thread().name = "diag-agent-request"
        self.server.waiting.discard(self.connection)  # the head is in: no longer idle
        try:
            self.deadline = time.monotonic() + HEAD_TIMEOUT
            self._discard_body()
            token = self.server.token
            if token is not None:
                if not authorized(self.headers.get("Authorization"), token):
                    resp = error(401, "missing or wrong agent token")
                    self._send(resp.status, resp.body, resp.content_type)
                    return
            url = urllib.parse.urlsplit(self.path)
            fields = urllib.parse.parse_qs(url.query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
            query = {k: v[-1] for k, v in fields.items()}
        except ValueError:  # an unparsable URL, or too many parameters
            resp = error(400, f"bad request: expected PATH?NAME=VALUE&... with at most {MAX_QUERY_FIELDS} parameters")
        except (OSError, TimeoutError):
            self.close_connection = True
            return
        else:
            route = self.server.endpoints.route(url.path)
            if route is not None and route.paced and method in ("GET", "HEAD"):
                self._paced(method, url.path, query)
                return
            resp = self.server.endpoints.dispatch(method, url.path, query)
        self._send(resp.status, resp.body, resp.content_type, resp.stream)

    def _paced(self, method: str, path: str, query: dict[str, str]) -> None:
        """A walk of the program's tasks or heap: built alone, paced, then sent within
        the bytes budget of answers in flight."""
        busy = error(503, "busy: the agent builds one big answer at a time and sends at most "
                          f"{MAX_SENDING_BYTES >> 20} MiB of them at once; retry shortly")
        sending = 0
        if not self.server.building.acquire(timeout=MAX_HEAVY_WAIT):
            resp = busy
        else:
            try:
                if self._client_left():  # gave up while waiting: build nothing for nobody
                    self.close_connection = True
                    return
                if not self.server.pacer.wait():
                    resp = error(503, f"busy: the agent answers at most {PACED_ANSWERS_PER_SECOND:g} dumps a "
                                      "second; retry shortly")
                else:
                    resp = self.server.endpoints.dispatch(method, path, query)
                    if resp.stream is not None:
                        # built while it is sent, one slice at a time: still one build at once
                        self._send(resp.status, resp.body, resp.content_type, resp.stream)
                        return
                    if self.server.sending.take(len(resp.body), MAX_HEAVY_WAIT):
                        sending = len(resp.body)
                    else:
                        resp = busy
            finally:
                self.server.building.release()
        if resp.status == 503:
            self.close_connection = True
        try:
            self._send(resp.status, resp.body, resp.content_type)
        finally:
            self.server.sending.give(sending)

    def _client_left(self) -> bool:
        try:
            self.connection.settimeout(0.0)  # a look, not a wait
            return not self.connection.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_HEAD(self) -> None:
        self._handle("HEAD")


class _ReadsBefore(socket.SocketIO):
    """The handler's socket for reading: each read waits at most until the handler's
    ``deadline`` (and never more than its ``timeout``).  It refers to the handler weakly:
    the handler holds it, and a cycle would keep each connection's objects in the
    program's memory until its cyclic GC next runs."""

    def __init__(self, handler: _Handler) -> None:
        super().__init__(handler.connection, "rb")
        self.handler = weakref.proxy(handler)

    def readinto(self, b: Any) -> int | None:
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.handler.connection.settimeout(min(left, self.handler.timeout))
        return super().readinto(b)


def _gzip(body: bytes) -> bytes:
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return packer.compress(body) + packer.flush()


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Pacer:
    """Spaces out answers: each caller gets the next free slot, ``gap`` seconds after the
    one before, and sleeps until then; ``wait`` is False when that is too far off."""

    def __init__(self, per_second: float, max_wait: float) -> None:
        self.gap = 1.0 / per_second
        self.max_wait = max_wait
        self.lock = threading.Lock()
        self.next_slot = 0.0

    def wait(self) -> bool:
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_slot)
            if slot - now > self.max_wait:
                return False
            self.next_slot = slot + self.gap
        if slot > now:
            time.sleep(slot - now)
        return True


class _Budget:
    """A total (bytes) shared by threads: ``take`` waits until there is room."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.room = threading.Condition()

    def take(self, amount: int, wait: float) -> bool:
        with self.room:
            # One answer alone always fits, whatever its size.
            if not self.room.wait_for(lambda: self.used == 0 or self.used + amount <= self.total, wait):
                return False
            self.used += amount
            return True

    def give(self, amount: int) -> None:
        if amount:
            with self.room:
                self.used -= amount
                self.room.notify_all()


class _Waiting:
    """Connections waiting for a request, and since when."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: dict[socket.socket, float] = {}

    def add(self, conn: socket.socket) -> None:
        with self.lock:
            self.since[conn] = time.monotonic()

    def discard(self, conn: socket.socket) -> None:
        with self.lock:
            self.since.pop(conn, None)

    def evict_oldest(self, min_age: float) -> bool:
        """Hang up on the connection that has waited longest, if ``min_age`` or more: its
        request thread sees the end of the stream, ends and frees its place."""
        with self.lock:
            if not self.since:
                return False
            conn, since = min(self.since.items(), key=lambda item: item[1])
            if time.monotonic() - since < min_age:
                return False
            del self.since[conn]
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True


class _Server(socketserver.ThreadingMixIn):
    """What both servers share: a cap on connections, paced dumps and no output on the
    target's stderr."""

    endpoints: Endpoints
    token: str | None
    slots: threading.BoundedSemaphore
    building: threading.Lock
    sending: _Budget
    pacer: _Pacer
    waiting: _Waiting
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False) and not (
                self.waiting.evict_oldest(EVICT_AFTER) and self.slots.acquire(timeout=1.0)):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread to serve it: give the slot back
            self.slots.release()
            self.shutdown_request(request)  # type: ignore[attr-defined]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the default prints a traceback into the target's stderr

    def service_actions(self) -> None:
        # serve_forever calls this after each request and every poll interval (0.5 s)
        try:
            self.endpoints.sweep()
        except Exception:
            pass


class _TCPServer(_Server, http.server.HTTPServer):
    allow_reuse_address = True


class _UnixServer(_Server, socketserver.UnixStreamServer):
    def server_bind(self) -> None:
        # Restrict the socket before listen(): nobody can connect in between.
        socketserver.UnixStreamServer.server_bind(self)
        os.chmod(self.server_address, 0o600)  # type: ignore[arg-type]


class AgentServer:
    """Serves ``endpoints`` on ``address`` from a daemon thread."""

    def __init__(self, endpoints: Endpoints, address: str, token: str | None = None) -> None:
        host, port = check_agent_address(address, token)
        self.unix_path: str | None = None
        #: (device, inode) of the socket file this server made: only that is ever unlinked.
        self._socket_file: tuple[int, int] | None = None
        srv: Any
        if port == "unix":
            self.unix_path = str(host)
            if os.path.lexists(self.unix_path):
                _remove_stale_socket(self.unix_path)
            srv = _UnixServer(self.unix_path, _Handler)
            st = os.lstat(self.unix_path)
            self._socket_file = (st.st_dev, st.st_ino)
        else:
            family = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
            _TCPServer.address_family = family
            srv = _TCPServer((str(host), int(port)), _Handler)
        srv.endpoints = endpoints
        srv.token = token
        srv.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        srv.building = threading.Lock()
        srv.sending = _Budget(MAX_SENDING_BYTES)
        srv.waiting = _Waiting()
        srv.pacer = _Pacer(PACED_ANSWERS_PER_SECOND, MAX_PACE_WAIT)
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="diag-agent", daemon=True)

    @property
    def url(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host, port = self._server.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)
        self.remove_socket_file()

    def remove_socket_file(self) -> None:
        """Unlink the unix socket this server made, if it is still there (not a file that
        replaced it since)."""
        if self.unix_path is None or self._socket_file is None:
            return
        try:
            st = os.lstat(self.unix_path)
            if (st.st_dev, st.st_ino) == self._socket_file:
                os.unlink(self.unix_path)
        except OSError:
            pass
        self._socket_file = None


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket left by an agent that is gone; refuse anything else."""
    problem = unix_path_problem(path)
    if problem:
        raise UsageError(f"refusing unix:{path}: {problem}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

"""Where snapshots come from: an agent over HTTP or a unix socket, or a saved file.

Each ``Source`` answers the same question the same way, so commands never need to know
which one they hold.  Transport failures become ``TargetError`` with one clear line.

Usage::

    source = open_source("http://127.0.0.1:8080", timeout=10)
    snapshot = source.tasks(TaskQuery(debug=1))
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Protocol, Sequence, TypeVar, cast

from diag.agent_protocol import PREFIX, check_token
from diag.analysis.task_groups import TaskQuery, task_view
from diag.documents import MAX_DOCUMENT_BYTES, load_json, read_file, size_text
from diag.errors import TargetError, UsageError
from diag.model import task_wire
from diag.model.task_snapshot import NOT_JSON, TaskSnapshot


class TargetTimeout(TargetError):
    """The target accepted the connection (or not) but did not answer in time."""


class TargetRefused(TargetError):
    """Nothing listens at the target's address."""


T = TypeVar("T")


class Source(Protocol):
    """Something that can produce task snapshots."""

    name: str

    def tasks(self, query: TaskQuery) -> TaskSnapshot: ...

    def tasks_feed(self, query: TaskQuery, feed: Feed) -> None:
        """The document of the snapshot ``tasks`` would give, in the cheapest form the source
        has (an agent's compact ``diag.tasks/2`` answer as it came, otherwise the
        ``diag.tasks/1`` document), handed to ``feed`` as it comes: ``feed("whole", document)``, or,
        for an agent's answer laid out in slices, ``feed("head", first_line)``, then
        ``feed("slice", slice)`` for each slice as it arrives, then ``feed("tail",
        last_line)`` (see ``diag.model.task_wire``).  What ``feed`` raises names the source."""
        ...


class Feed(Protocol):
    """What takes a task document a part at a time (``Source.tasks_feed``)."""

    def __call__(self, kind: str, part: dict[str, Any]) -> None: ...


def _query_params(query: TaskQuery) -> dict[str, str]:
    params = {"debug": str(query.debug)}
    if query.pattern:
        params["filter"] = query.pattern
    if query.states:
        params["state"] = ",".join(query.states)
    if query.min_wait is not None:
        params["min_wait"] = repr(query.min_wait)
    params["limit"] = str(query.limit) if query.limit is not None else "1000000000"
    params["wire"] = "2"  # the compact form (an older agent ignores it and answers diag.tasks/1)
    return params


#: The longest wait for an answer (a day); more is a typo, and past the platform's clock
#: range sockets refuse it.
MAX_TIMEOUT = 86_400.0
#: The most diag reads of one answer: twice the 32 MiB the agent ever sends.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
#: The most diag reads of a task dump (compact, streamed whole by the agent): as much as
#: it reads of a saved one.
MAX_TASKS_BYTES = MAX_DOCUMENT_BYTES
#: The forms of a live target, and of any target (a live one or a saved file).
LIVE_FORMS = "http://HOST:PORT, HOST:PORT, unix:/PATH or pid:N"
ACCEPTED = "http://HOST:PORT, HOST:PORT, unix:/PATH, pid:N or a saved .json file"
#: ``HOST:PORT`` without a scheme: a host name, an IPv4 or a bracketed IPv6 address.
HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]+")
_READ_SIZE = 1 << 16
#: The most one inflating step of a gzip answer makes at once.
_INFLATE_SIZE = 1 << 20


class Deadline:
    """One deadline for a whole exchange: resolving, connecting, sending and every read
    of the answer share it, so an answer dripped a byte at a time still ends on time.

    ``why`` says what the seconds are made of, for the message: ``--timeout``, or
    ``--timeout 5 plus two proofs of --proof-budget 10s``."""

    def __init__(self, seconds: float, why: str = "--timeout") -> None:
        self.seconds = seconds
        self.why = why
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; ``_Expired`` once there are none."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise _Expired
        return left


#: A busy agent (503) is asked again after this pause, doubled each time up to the maximum,
#: while the command's deadline leaves at least ``BUSY_MIN_LEFT`` seconds after the pause.
BUSY_FIRST_PAUSE = 0.1
BUSY_MAX_PAUSE = 1.0
BUSY_MIN_LEFT = 0.5


class _Expired(Exception):
    """The exchange's deadline passed."""


class _TooLarge(Exception):
    """The answer passed the size diag reads."""


class _AnswerReader(io.RawIOBase):
    """The socket as a file whose every read waits only for what is left of the deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline, limit: int | None) -> None:
        self.sock = sock
        self.deadline = deadline
        self.limit = limit
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.sock.settimeout(self.deadline.left())
        n = self.sock.recv_into(buffer)
        self.received += n
        if self.limit is not None and self.received > self.limit:
            raise _TooLarge
        return n


class _SocketView:
    """What ``http.client.HTTPResponse`` needs of a socket: a file to read the answer from."""

    def __init__(self, reader: _AnswerReader) -> None:
        self.reader = reader

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(self.reader)


@dataclass(frozen=True)
class Address:
    """Where an HTTP server listens: TCP (with TLS for https) or a unix socket."""

    host: str
    port: int
    https: bool = False
    unix_path: str | None = None

    @property
    def host_header(self) -> str:
        if self.unix_path is not None:
            return "localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _resolve(address: Address, deadline: Deadline) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` within the deadline (a resolver that hangs is left behind on a
    daemon thread); IP literals need no lookup."""
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        pass
    else:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 0, "", (address.host, address.port))]
    found: list[Any] = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM))
        except Exception as err:  # handed to the caller
            found.append(err)

    worker = threading.Thread(target=lookup, name="diag-resolve", daemon=True)
    worker.start()
    worker.join(deadline.left())
    if not found:
        raise _Expired
    if isinstance(found[0], BaseException):
        raise found[0]
    return list(found[0])


def _connect(address: Address, deadline: Deadline) -> socket.socket:
    if address.unix_path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(deadline.left())
            sock.connect(address.unix_path)
        except BaseException:
            sock.close()
            raise
        return sock
    error: OSError | None = None
    for family, kind, proto, _, addr in _resolve(address, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.left())
            sock.connect(addr)
        except OSError as err:
            sock.close()
            error = err
            continue
        except BaseException:
            sock.close()
            raise
        if not address.https:
            return sock
        try:
            sock.settimeout(deadline.left())
            return ssl.create_default_context().wrap_socket(sock, server_hostname=address.host)
        except BaseException:
            sock.close()
            raise
    raise error if error is not None else OSError(f"no address found for {address.host}")


def http_exchange(name: str, address: Address, request: bytes, deadline: Deadline,
                  max_bytes: int | None = MAX_ANSWER_BYTES) -> tuple[int, bytes]:
    """Send one request and read its whole answer, (HTTP status, body), within
    ``deadline`` and at most ``max_bytes`` of body (``None``: read to the end and keep
    nothing).  Every failure is a ``TargetError`` starting with ``name``, saying the
    figure that was passed (seconds or bytes)."""
    status, pieces = http_answer(name, address, request, deadline, max_bytes)
    # pieces joined once at the end: a growing bytearray copies itself as it grows, so an
    # answer past the limit would briefly cost twice the limit
    return status, b"".join(pieces)


def http_answer(name: str, address: Address, request: bytes, deadline: Deadline,
                max_bytes: int | None = MAX_ANSWER_BYTES) -> tuple[int, Iterator[bytes]]:
    """Send one request and read its answer's head: (HTTP status, the body's pieces as
    they come, inflated).  The same bounds and failures as ``http_exchange``, raised as the
    pieces are read; closing the pieces (or dropping them) closes the connection."""
    pieces = _answer(name, address, request, deadline, max_bytes)
    status = next(pieces)
    assert isinstance(status, int)
    return status, cast("Iterator[bytes]", pieces)


def _answer(name: str, address: Address, request: bytes, deadline: Deadline,
            max_bytes: int | None) -> Generator[int | bytes, None, None]:
    """The HTTP status of the answer to ``request``, then its body's pieces."""
    reader: _AnswerReader | None = None
    try:
        sock = _connect(address, deadline)
        try:
            sock.settimeout(deadline.left())
            sock.sendall(request)
            # The header section is bounded by http.client (100 lines of 64 KiB).
            reader = _AnswerReader(sock, deadline, None if max_bytes is None else max_bytes + 8 * 1024 * 1024)
            method = request.split(b" ", 1)[0].decode("ascii")  # a HEAD answer has no body to read
            resp = http.client.HTTPResponse(_SocketView(reader), method=method)  # type: ignore[arg-type]
            resp.begin()
            if max_bytes is not None and resp.length is not None and resp.length > max_bytes:
                raise TargetError(f"{name}: the answer would be {resp.length} bytes, more than the "
                                  f"{size_text(max_bytes)} diag reads")
            declared, got, kept = resp.length, 0, 0
            coding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
            if coding not in ("identity", "gzip", "x-gzip"):
                raise TargetError(f"{name}: unreadable answer: content encoding {_one_line(coding, 40)!r}")
            yield resp.status
            # gzip is inflated as it comes, a bounded piece at a time: the limit is on what
            # it inflates to, so a small answer cannot become gigabytes here
            inflater = zlib.decompressobj(31) if coding != "identity" and max_bytes is not None else None
            while chunk := resp.read(_READ_SIZE):
                got += len(chunk)
                if max_bytes is None:
                    continue
                pieces = [chunk]
                if inflater is not None:
                    pieces = [inflater.decompress(chunk, _INFLATE_SIZE)]
                    while inflater.unconsumed_tail:
                        pieces.append(inflater.decompress(inflater.unconsumed_tail, _INFLATE_SIZE))
                for piece in pieces:
                    kept += len(piece)
                    if kept > max_bytes:
                        raise _TooLarge
                    if piece:
                        yield piece
            if declared is not None and got < declared:  # read(amt) does not raise on an early end
                raise TargetError(f"{name}: the connection closed mid-answer ({got} of {declared} bytes)")
            if inflater is not None and not inflater.eof:
                raise TargetError(f"{name}: the connection closed mid-answer (the gzip stream stops after "
                                  f"{got} bytes)")
        finally:
            sock.close()
    except (_Expired, TimeoutError, socket.timeout):
        got = reader.received if reader is not None else 0
        within = f"within {deadline.seconds:g}s ({deadline.why})"
        how = f"no answer {within}" if not got else f"the answer did not finish {within}; {got} bytes arrived"
        raise TargetTimeout(f"{name}: {how}") from None
    except _TooLarge:
        raise TargetError(f"{name}: the answer is larger than the {size_text(max_bytes or 0)} diag reads; "
                          "stopped reading") from None
    except http.client.IncompleteRead as err:
        got = len(err.partial)
        total = f" of {got + err.expected}" if isinstance(err.expected, int) else ""
        raise TargetError(f"{name}: the connection closed mid-answer ({got}{total} bytes)") from None
    except ConnectionRefusedError:
        raise TargetRefused(f"{name}: connection refused (is the process running with the diag agent?)") from None
    except FileNotFoundError:
        raise TargetRefused(f"{name}: no such socket") from None
    except socket.gaierror as err:
        raise TargetError(f"{name}: cannot find host {address.host!r}: {err.strerror or err}") from None
    except (OSError, http.client.HTTPException, ValueError, zlib.error) as err:
        # ValueError: http.client on a chunk size that is not a number.
        raise TargetError(f"{name}: unreadable answer: {type(err).__name__}: {_one_line(str(err))}") from None


def request_bytes(method: str, path: str, address: Address, headers: Sequence[str] = ()) -> bytes:
    """A request without a body, asking the server to close the connection after it."""
    path = urllib.parse.quote(path, safe="/%:@!$&'()*+,;=-._~?#[]")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {address.host_header}", "Connection: close", "User-Agent: diag",
             *headers]
    if method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def client_token(token: str | None = None) -> str | None:
    """``token``, or else ``DIAG_AGENT_TOKEN``, checked as the agent checks it (it travels
    in a header): a ``UsageError`` line saying what is wrong, never showing the token."""
    if token is None:
        token = os.environ.get("DIAG_AGENT_TOKEN")
    check_token(token)
    return token or None


class AgentSource:
    """A diag agent (or an app with ``diag.aiohttp.setup``) at an HTTP URL or unix socket."""

    def __init__(self, target: str, timeout: float = 10.0, token: str | None = None) -> None:
        if not 0 < timeout <= MAX_TIMEOUT:  # NaN fails too
            raise UsageError(f"--timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds, not {timeout:g}")
        self.name = target
        self.timeout = timeout
        self.token = client_token(token)
        self.address, self.prefix = parse_agent_url(target)

    @property
    def unix_path(self) -> str | None:
        return self.address.unix_path

    def get(self, endpoint: str, params: dict[str, str] | None = None, *,
            extra: float = 0.0, extra_why: str = "", probe: bool = True,
            max_bytes: int = MAX_ANSWER_BYTES) -> Any:
        """GET an agent endpoint and return its parsed JSON; ``TargetError`` on any failure.

        The answer may take ``--timeout`` plus ``extra`` seconds of work the endpoint was
        asked to do (a proof budget), ``extra_why`` naming it for the message.  With
        ``extra``, the agent is first asked something cheap within ``--timeout``
        (``probe``), so that a stopped target is reported after ``--timeout``."""
        return self._request("GET", endpoint, params, extra, extra_why, probe, max_bytes)

    def post(self, endpoint: str, params: dict[str, str] | None = None, *,
             extra: float = 0.0, extra_why: str = "", probe: bool = True) -> Any:
        """POST to an agent endpoint (an operation with effects, such as a profile window)
        and return its parsed JSON; ``extra`` as for ``get`` (the window's length)."""
        return self._request("POST", endpoint, params, extra, extra_why, probe)

    def probe(self, deadline: Deadline) -> None:
        """Ask the agent's cheap ``health`` endpoint: any HTTP answer shows it is alive
        (an older agent may not know ``health``)."""
        self._exchange("GET", f"{self.prefix}/health", "application/json", deadline, 1 << 20)

    def get_text(self, endpoint: str, max_bytes: int) -> tuple[int, str]:
        """GET an endpoint that answers text (the Prometheus page): (HTTP status, body).
        Transport failures raise ``TargetError``; the status is left to the caller."""
        status, body = self._exchange("GET", f"{self.prefix}/{endpoint}", "text/plain", Deadline(self.timeout),
                                      max_bytes)
        return status, body.decode("utf-8", errors="replace")

    def _exchange(self, method: str, path: str, accept: str, deadline: Deadline,
                  max_bytes: int = MAX_ANSWER_BYTES) -> tuple[int, bytes]:
        """One request and its whole answer, within ``deadline`` and ``max_bytes``."""
        status, pieces = self._open(method, path, accept, deadline, max_bytes)
        return status, b"".join(pieces)

    def _open(self, method: str, path: str, accept: str, deadline: Deadline,
              max_bytes: int) -> tuple[int, Iterator[bytes]]:
        """One request and its answer's status, its body in pieces as they come."""
        headers = [f"Accept: {accept}", "Accept-Encoding: gzip"] + (
            [f"Authorization: Bearer {self.token}"] if self.token else [])
        return http_answer(self.name, self.address, request_bytes(method, path, self.address, headers),
                           deadline, max_bytes)

    def _path(self, endpoint: str, params: dict[str, str] | None) -> str:
        path = f"{self.prefix}/{endpoint}"
        if params:
            path += "?" + urllib.parse.urlencode(params)
        return path

    def _request(self, method: str, endpoint: str, params: dict[str, str] | None, extra: float, extra_why: str,
                 probe: bool, max_bytes: int = MAX_ANSWER_BYTES) -> Any:
        path = self._path(endpoint, params)
        if extra > 0:
            deadline = Deadline(self.timeout + extra, f"--timeout {self.timeout:g} plus {extra_why}")
            if probe:
                self.probe(Deadline(self.timeout))
        else:
            deadline = Deadline(self.timeout)
        status, body, waited = self._taking_turns(method, path, deadline, max_bytes)
        return self._checked(method, endpoint, path, status, body, waited)

    def _checked(self, method: str, endpoint: str, path: str, status: int, body: bytes, waited: float) -> Any:
        """An answer's parsed JSON, or the ``TargetError`` its status and message make."""
        try:
            data = load_json(body)
        except NOT_JSON:
            if status == 404:
                raise TargetError(f"{self.name}: not a diag agent (HTTP 404 for {path})") from None
            raise TargetError(f"{self.name}: not a diag agent (HTTP {status}, response is not JSON)") from None
        message = data.get("error") if isinstance(data, dict) else None
        if message is not None:
            message = _one_line(str(message), 300)
        if status == 401:
            raise TargetError(f"{self.name}: the agent wants a token (set DIAG_AGENT_TOKEN)")
        if status == 400:
            raise UsageError(f"{self.name}: {message or 'HTTP 400: bad request'}")
        if status in (404, 405) and method == "POST":
            raise TargetError(f"{self.name}: no {endpoint} endpoint here (HTTP {status}): "
                              "not a diag agent, or an older one")
        if status != 200:
            if status == 404 and not message:
                raise TargetError(f"{self.name}: not a diag agent (HTTP 404 for {path})")
            if method == "POST":
                raise TargetError(f"{self.name}: {message or f'HTTP {status}: unexpected answer'}")
            tried = f" (still busy after waiting {waited:.1f}s for a turn)" if waited else ""
            raise TargetError(f"{self.name}: HTTP {status}: {message or 'unexpected answer'}{tried}")
        return data

    def _taking_turns(self, method: str, path: str, deadline: Deadline,
                      max_bytes: int) -> tuple[int, bytes, float]:
        """(status, body, seconds spent waiting for a turn): a GET the agent answers 503 (busy
        with another client's dump, or pacing dumps) is asked again after a short, growing
        pause while ``deadline`` leaves room for it, as its ``retry shortly`` says.  Other
        answers, and a POST (an operation with effects), come back at once."""
        status, pieces, waited = self._turns(method, path, deadline, max_bytes)
        return status, b"".join(pieces), waited

    def _turns(self, method: str, path: str, deadline: Deadline,
               max_bytes: int) -> tuple[int, Iterator[bytes], float]:
        """``_taking_turns``, the body of a 200 answer in pieces as they come."""
        waited, pause = 0.0, BUSY_FIRST_PAUSE
        while True:
            status, pieces = self._open(method, path, "application/json", deadline, max_bytes)
            if status == 200:
                return status, pieces, waited
            body = b"".join(pieces)
            if status != 503 or method != "GET":
                return status, iter((body,)), waited
            try:
                left = deadline.left()
            except _Expired:
                return status, iter((body,)), waited
            if left <= pause + BUSY_MIN_LEFT:
                return status, iter((body,)), waited
            time.sleep(pause)
            waited += pause
            pause = min(pause * 2, BUSY_MAX_PAUSE)

    def snapshot(self, data: Any, parse: Callable[[Any], T]) -> T:
        """An answer read as a snapshot by ``parse``; ``TargetError`` naming the agent otherwise."""
        if not isinstance(data, dict) or "schema" not in data:
            raise TargetError(f"{self.name}: not a diag agent (no schema in the answer)")
        try:
            return parse(data)
        except TargetError as err:
            raise TargetError(f"{self.name}: {err}") from None

    def tasks(self, query: TaskQuery) -> TaskSnapshot:
        return self.snapshot(self._tasks_answer(query), TaskSnapshot.from_dict)

    def tasks_feed(self, query: TaskQuery, feed: Feed) -> None:
        params = _query_params(query)
        params["layout"] = "slices"  # an older agent ignores it, and answers in one piece
        path = self._path("tasks", params)
        deadline = Deadline(self.timeout)
        status, pieces, waited = self._turns("GET", path, deadline, MAX_TASKS_BYTES)
        if status != 200:
            self._checked("GET", "tasks", path, status, b"".join(pieces), waited)
        lines = _lines(pieces)
        first = next(lines, b"")
        if not (first.startswith(b"{") and first.endswith(_SLICES_OPEN)):
            data = self._checked("GET", "tasks", path, status, b"\n".join([first, *lines]), waited)
            self.snapshot(data, lambda doc: feed("whole", _document(doc)))
            return
        head = self._line(first + b"]}", "its first line")
        if head.get("schema") != task_wire.WIRE_SCHEMA:
            raise TargetError(f"{self.name}: not a diag agent (no diag.tasks/2 schema in the answer)")
        self._fed(feed, "head", head, deadline)
        count = 0
        for line in lines:
            if not line.strip():
                continue  # what follows the last newline of an answer cut at a line's end
            if line.startswith(b"]"):
                after = line[1:].lstrip()
                tail = self._line(b"{" + (after[1:] if after.startswith(b",") else after), "its last line")
                if any(more.strip() for more in lines):
                    raise TargetError(f"{self.name}: unreadable answer: text after its last line")
                self._fed(feed, "tail", tail, deadline)
                return
            count += 1
            self._fed(feed, "slice", self._line(line[1:] if line.startswith(b",") else line, f"slice {count}"),
                      deadline)
        raise TargetError(f"{self.name}: the answer stops after {count} slices, without its last line")

    def _line(self, text: bytes, what: str) -> dict[str, Any]:
        """A line of a sliced answer, parsed: a JSON object, or the error naming the agent."""
        try:
            data = load_json(text)
        except NOT_JSON:
            raise TargetError(f"{self.name}: unreadable answer: {what} is not JSON") from None
        if not isinstance(data, dict):
            raise TargetError(f"{self.name}: malformed diag task snapshot: {what} is not an object")
        return data

    def _fed(self, feed: Feed, kind: str, part: dict[str, Any], deadline: Deadline) -> None:
        """``feed(kind, part)``, its errors naming the agent.  The time it takes (writing to
        a slow pipe, say) is not the agent's: the deadline moves on by as much."""
        started = time.monotonic()
        try:
            feed(kind, part)
        except TargetError as err:
            raise TargetError(f"{self.name}: {err}") from None
        deadline.end += time.monotonic() - started

    def _tasks_answer(self, query: TaskQuery) -> Any:
        # streamed whole by the agent, never cut: read up to what a saved dump may hold
        return self.get("tasks", _query_params(query), max_bytes=MAX_TASKS_BYTES)


_SLICES_OPEN = task_wire.SLICES_OPEN.encode()


def _lines(pieces: Iterator[bytes]) -> Generator[bytes, None, None]:
    """The lines of a body read in pieces, without their newlines; the last (what follows
    the last newline, maybe empty) too."""
    pending: list[bytes] = []
    for piece in pieces:
        start = 0
        while (end := piece.find(b"\n", start)) >= 0:
            pending.append(piece[start:end])
            yield b"".join(pending)
            pending.clear()
            start = end + 1
        if start < len(piece):
            pending.append(piece[start:])
    yield b"".join(pending)


def _document(data: Any) -> dict[str, Any]:
    """An agent's task answer: the compact form as it came (its tables are read by whoever
    writes it), the older form read (so checked) and written again."""
    if isinstance(data, dict) and data.get("schema") == task_wire.WIRE_SCHEMA:
        return data
    return TaskSnapshot.from_dict(data).to_dict()


def read_saved(path: str, parse: Callable[[bytes], T]) -> T:
    """A document saved with ``-o``, parsed; ``TargetError`` naming the file otherwise."""
    text = read_file(path, MAX_DOCUMENT_BYTES, "document")
    try:
        return parse(text)
    except TargetError as err:
        raise TargetError(f"{path}: {err}") from None


def _shown(target: str, limit: int = 100) -> str:
    return repr(target if len(target) <= limit else target[:limit] + "...")


def is_url(target: str) -> bool:
    """An ``http://``, ``https://`` (any case) or ``unix:`` target, as opposed to a file or HOST:PORT."""
    return target[:8].lower().startswith(("http://", "https://")) or target.startswith("unix:")


def parse_agent_url(target: str) -> tuple[Address, str]:
    """(address, path prefix of the agent's endpoints) of an ``http(s)://`` or ``unix:``
    target; ``UsageError`` naming the accepted forms for anything else."""
    if target.startswith("unix:"):
        path = target[len("unix:"):]
        if not path or "\x00" in path:
            raise UsageError(f"bad target {_shown(target)}: unix: needs the socket's path; expected {ACCEPTED}")
        return Address("localhost", 0, unix_path=path), PREFIX
    address, path = parse_http_url(target)
    prefix = path[: path.index(PREFIX) + len(PREFIX)] if PREFIX in path else path + PREFIX
    return address, prefix


def parse_http_url(target: str, accepted: str = ACCEPTED) -> tuple[Address, str]:
    """(address, path without its trailing slash, quoted for a request line) of an
    ``http(s)://`` URL; ``UsageError`` saying ``accepted`` for anything else."""
    try:
        url = urllib.parse.urlsplit(target)
        port = url.port
    except ValueError as err:
        raise UsageError(f"bad target {_shown(target)}: {err}; expected {accepted}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UsageError(f"bad target {_shown(target)}: expected {accepted}")
    host = url.hostname
    try:
        host.encode("idna")
    except UnicodeError:
        raise UsageError(f"bad target {_shown(target)}: {_shown(host, 40)} is not a host name; "
                         f"expected {accepted}") from None
    if port == 0:
        raise UsageError(f"bad target {_shown(target)}: port 0; expected {accepted}")
    https = url.scheme == "https"
    path = urllib.parse.quote(url.path.rstrip("/"), safe="/%:@!$&'()*+,;=-._~")
    return Address(host, port or (443 if https else 80), https), path


def agent_url(target: str, what: str | None = "a saved .json file") -> str:
    """``http://``/``unix:`` targets as given, ``HOST:PORT`` as ``http://HOST:PORT``,
    ``pid:N`` as the address of the agent attached to process N (attaching on first use);
    ``UsageError`` naming the accepted forms (``what`` is the file a command also reads,
    ``None`` for a command that watches live targets only)."""
    if target.startswith("pid:"):
        from diag.attach import pid_target
        return pid_target(target)
    if is_url(target):
        return target
    if HOST_PORT.fullmatch(target):
        return f"http://{target}"
    accepted = LIVE_FORMS if what is None else f"http://HOST:PORT, HOST:PORT, unix:/PATH, pid:N or {what}"
    if "://" in target:
        scheme = target.split("://", 1)[0]
        raise UsageError(f"bad target {_shown(target)}: unknown scheme {_shown(scheme, 20)}; expected {accepted}")
    raise UsageError(f"bad target {_shown(target)}: expected {accepted}")


class FileSource:
    """A snapshot saved with ``diag tasks -o FILE``."""

    def __init__(self, path: str) -> None:
        self.name = path
        self.path = Path(path)

    def tasks(self, query: TaskQuery) -> TaskSnapshot:
        return task_view(read_saved(self.name, TaskSnapshot.from_json), query)

    def tasks_feed(self, query: TaskQuery, feed: Feed) -> None:
        document = self.tasks(query).to_dict()
        try:
            feed("whole", document)
        except TargetError as err:
            raise TargetError(f"{self.name}: {err}") from None


def open_source(target: str, timeout: float = 10.0) -> Source:
    """Pick the source for a TARGET argument: URL, ``unix:`` socket or saved file."""
    if is_url(target):
        return AgentSource(target, timeout)
    if target.endswith(".json") or os.path.exists(target):
        return FileSource(target)
    return AgentSource(agent_url(target), timeout)

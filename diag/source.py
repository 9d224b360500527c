"""Where snapshots come from: an agent over HTTP or a unix socket, or a saved file.

Each ``Source`` answers the same question the same way, so commands never need to know
which one they hold.  Transport failures become ``TargetError`` with one clear line.

Usage::

    source = open_source("http://127.0.0.1:8080", timeout=10)
    snapshot = source.tasks(TaskQuery(debug=1))
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from diag.agent.endpoints import PREFIX
from diag.agent.server import check_token
from diag.analysis.task_groups import TaskQuery, task_view
from diag.errors import TargetError, UsageError
from diag.task_snapshot import TaskSnapshot


class TargetTimeout(TargetError):
    """The target accepted the connection (or not) but did not answer in time."""


class TargetRefused(TargetError):
    """Nothing listens at the target's address."""


class Source(Protocol):
    """Something that can produce task snapshots."""

    name: str

    def tasks(self, query: TaskQuery) -> TaskSnapshot: ...


def _query_params(query: TaskQuery) -> dict[str, str]:
    params = {"debug": str(query.debug)}
    if query.pattern:
        params["filter"] = query.pattern
    if query.states:
        params["state"] = ",".join(query.states)
    if query.min_wait is not None:
        params["min_wait"] = repr(query.min_wait)
    params["limit"] = str(query.limit) if query.limit is not None else "1000000000"
    return params


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


#: The longest wait for an answer (a day); more is a typo, and past the platform's clock
#: range sockets refuse it.
MAX_TIMEOUT = 86_400.0


class AgentSource:
    """A diag agent (or an app with ``diag.aiohttp.setup``) at an HTTP URL or unix socket."""

    def __init__(self, target: str, timeout: float = 10.0, token: str | None = None) -> None:
        if not 0 < timeout <= MAX_TIMEOUT:  # NaN fails too
            raise UsageError(f"--timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds, not {timeout:g}")
        self.name = target
        self.timeout = timeout
        self.token = token if token is not None else os.environ.get("DIAG_AGENT_TOKEN")
        check_token(self.token)  # one line, not http.client's traceback quoting the token
        self.unix_path: str | None = None
        if target.startswith("unix:"):
            self.unix_path = target[len("unix:"):]
            self.host, self.port, self.prefix, self.https = "localhost", 0, PREFIX, False
            return
        url = urllib.parse.urlsplit(target)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UsageError(f"bad target {target!r}: expected http://HOST:PORT, unix:/PATH or a saved .json file")
        try:
            port = url.port
        except ValueError:
            raise UsageError(f"bad port in target {target!r}") from None
        self.https = url.scheme == "https"
        self.host = url.hostname
        self.port = port or (443 if self.https else 80)
        path = url.path.rstrip("/")
        self.prefix = path[: path.index(PREFIX) + len(PREFIX)] if PREFIX in path else path + PREFIX

    def _connection(self) -> http.client.HTTPConnection:
        if self.unix_path is not None:
            return _UnixHTTPConnection(self.unix_path, self.timeout)
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def get(self, endpoint: str, params: dict[str, str] | None = None) -> Any:
        """GET an agent endpoint and return its parsed JSON; ``TargetError`` on any failure."""
        return self._request("GET", endpoint, params, self.timeout)

    def post(self, endpoint: str, params: dict[str, str] | None = None, timeout: float | None = None) -> Any:
        """POST to an agent endpoint (an operation with effects, such as a profile window)
        and return its parsed JSON; ``timeout`` (default the source's) should cover the
        whole operation plus a margin.  ``TargetError`` on any failure, as ``get``."""
        return self._request("POST", endpoint, params, self.timeout if timeout is None else timeout)

    def get_text(self, endpoint: str, max_bytes: int) -> tuple[int, str]:
        """GET an endpoint that answers text (the Prometheus page): (HTTP status, body).
        Transport failures raise ``TargetError``; the status is left to the caller."""
        status, body = self._exchange("GET", f"{self.prefix}/{endpoint}", "text/plain", self.timeout,
                                      max_bytes + 1)
        if len(body) > max_bytes:
            raise TargetError(f"{self.name}: {endpoint} is larger than {max_bytes} bytes")
        return status, body.decode("utf-8", errors="replace")

    def _exchange(self, method: str, path: str, accept: str, wait: float,
                  max_bytes: int | None = None) -> tuple[int, bytes]:
        """One request and its whole answer (or its first ``max_bytes``)."""
        headers = {"Accept": accept}
        if method == "POST":
            headers["Content-Length"] = "0"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        conn.timeout = wait
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read() if max_bytes is None else resp.read(max_bytes)
        except (TimeoutError, socket.timeout):
            hint = " (--timeout)" if method == "GET" else ""
            raise TargetTimeout(f"{self.name}: no answer within {wait:g}s{hint}") from None
        except http.client.IncompleteRead as err:
            got = len(err.partial)
            total = f" of {got + err.expected}" if isinstance(err.expected, int) else ""
            raise TargetError(f"{self.name}: the connection closed mid-answer ({got}{total} bytes)") from None
        except ConnectionRefusedError:
            raise TargetRefused(f"{self.name}: connection refused (is the process running with the diag agent?)") from None
        except FileNotFoundError:
            raise TargetRefused(f"{self.name}: no such socket") from None
        except (OSError, http.client.HTTPException) as err:
            raise TargetError(f"{self.name}: {type(err).__name__}: {err}") from None
        finally:
            conn.close()
        return resp.status, body

    def _request(self, method: str, endpoint: str, params: dict[str, str] | None, wait: float) -> Any:
        path = f"{self.prefix}/{endpoint}"
        if params:
            path += "?" + urllib.parse.urlencode(params)
        status, body = self._exchange(method, path, "application/json", wait)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            if status == 404:
                raise TargetError(f"{self.name}: not a diag agent (HTTP 404 for {path})") from None
            raise TargetError(f"{self.name}: not a diag agent (HTTP {status}, response is not JSON)") from None
        message = data.get("error") if isinstance(data, dict) else None
        if status == 401:
            raise TargetError(f"{self.name}: the agent wants a token (set DIAG_AGENT_TOKEN)")
        if status == 400:
            raise UsageError(f"{self.name}: {message or data}")
        if status in (404, 405) and method == "POST":
            raise TargetError(f"{self.name}: no {endpoint} endpoint here (HTTP {status}): "
                              "not a diag agent, or an older one")
        if status != 200:
            if status == 404 and not message:
                raise TargetError(f"{self.name}: not a diag agent (HTTP 404 for {path})")
            if method == "POST":
                raise TargetError(f"{self.name}: {message or f'HTTP {status}: unexpected answer'}")
            raise TargetError(f"{self.name}: HTTP {status}: {message or 'unexpected answer'}")
        return data

    def tasks(self, query: TaskQuery) -> TaskSnapshot:
        data = self.get("tasks", _query_params(query))
        if not isinstance(data, dict) or "schema" not in data:
            raise TargetError(f"{self.name}: not a diag agent (no schema in the answer)")
        return TaskSnapshot.from_dict(data)


T = TypeVar("T")


def read_saved(path: str, parse: Callable[[bytes], T]) -> T:
    """A document saved with ``-o``, parsed; ``TargetError`` naming the file otherwise."""
    try:
        text = Path(path).read_bytes()
    except OSError as err:
        raise TargetError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        return parse(text)
    except TargetError as err:
        raise TargetError(f"{path}: {err}") from None


def agent_url(target: str, what: str = "a saved .json file") -> str:
    """``http://``/``unix:`` targets as given, ``HOST:PORT`` as ``http://HOST:PORT``,
    ``pid:N`` as the address of the agent attached to process N (attaching on first use)."""
    if target.startswith("pid:"):
        from diag.attach import pid_target
        return pid_target(target)
    if target.startswith(("http://", "https://", "unix:")):
        return target
    if ":" in target and target.rsplit(":", 1)[1].isdigit():
        return f"http://{target}"
    raise UsageError(f"bad target {target!r}: expected http://HOST:PORT, HOST:PORT, unix:/PATH or {what}")


class FileSource:
    """A snapshot saved with ``diag tasks -o FILE``."""

    def __init__(self, path: str) -> None:
        self.name = path
        self.path = Path(path)

    def tasks(self, query: TaskQuery) -> TaskSnapshot:
        return task_view(read_saved(self.name, TaskSnapshot.from_json), query)


def open_source(target: str, timeout: float = 10.0) -> Source:
    """Pick the source for a TARGET argument: URL, ``unix:`` socket or saved file."""
    if target.startswith(("http://", "https://", "unix:")):
        return AgentSource(target, timeout)
    if target.endswith(".json") or os.path.exists(target):
        return FileSource(target)
    return AgentSource(agent_url(target), timeout)

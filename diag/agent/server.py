"""The agent's own HTTP server: a daemon thread, loopback TCP or a 0600 unix socket.

It uses only the standard library and never touches the target's event loop, so it
answers while that loop is blocked.
"""

from __future__ import annotations

import hmac
import http.server
import os
import socket
import socketserver
import threading
import urllib.parse
from typing import Any

from diag.agent.endpoints import Endpoints, error
from diag.errors import UsageError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_address(address: str) -> tuple[str, str | int]:
    """``HOST:PORT``, ``:PORT``, ``PORT`` or ``unix:/path`` -> ("tcp", host, port) parts."""
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if not path:
            raise UsageError("unix: address needs a path, e.g. unix:/tmp/diag.sock")
        return path, "unix"
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", address
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise UsageError(f"bad agent address {address!r}: expected HOST:PORT or unix:/PATH") from None
    if not 0 <= number <= 65535:
        raise UsageError(f"bad agent port {number}")
    return host, number


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"
    server_version = "diag-agent"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: never write into the target's stderr
        pass

    def address_string(self) -> str:
        return "unix" if not isinstance(self.client_address, tuple) else str(self.client_address[0])

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client went away
            pass

    def _handle(self, method: str) -> None:
        # Named so that diag's own threads are never mistaken for the program's.
        threading.current_thread().name = "diag-agent-request"
        token = self.server.token
        if token is not None:
            given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                resp = error(401, "missing or wrong agent token")
                self._send(resp.status, resp.body, resp.content_type)
                return
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        resp = self.server.endpoints.dispatch(method, url.path, query)
        self._send(resp.status, resp.body, resp.content_type)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


class _Server:
    endpoints: Endpoints
    token: str | None


class _TCPServer(socketserver.ThreadingMixIn, http.server.HTTPServer, _Server):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer, _Server):
    daemon_threads = True

    def server_bind(self) -> None:
        # Restrict the socket before listen(): nobody can connect in between.
        socketserver.UnixStreamServer.server_bind(self)
        os.chmod(self.server_address, 0o600)  # type: ignore[arg-type]


class AgentServer:
    """Serves ``endpoints`` on ``address`` from a daemon thread."""

    def __init__(self, endpoints: Endpoints, address: str, token: str | None = None) -> None:
        host, port = parse_address(address)
        self.unix_path: str | None = None
        srv: Any
        if port == "unix":
            self.unix_path = str(host)
            if os.path.exists(self.unix_path):
                os.unlink(self.unix_path)
            srv = _UnixServer(self.unix_path, _Handler)
        else:
            if str(host) not in LOOPBACK and not token:
                raise UsageError(f"refusing to bind {host}: a non-loopback agent needs DIAG_AGENT_TOKEN")
            family = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
            _TCPServer.address_family = family
            srv = _TCPServer((str(host), int(port)), _Handler)
        srv.endpoints = endpoints
        srv.token = token
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
        if self.unix_path is not None:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass

"""What the agent and its clients agree on, without the agent: the endpoints' prefix, the
forms of an agent address, what a token may hold, the proof's budgets.

Stdlib only, outside the ``diag.agent`` package: importing anything in that package
starts with the whole agent (collectors, server), which a CLI asking a target over HTTP
never needs.
"""

from __future__ import annotations

import os
import socket
import stat

from diag.errors import UsageError

#: Every agent endpoint lives under this path.
PREFIX = "/debug/diag"
#: The hosts an agent binds without a token.
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: The longest a client may let the reachability proof run.
MAX_PROOF_BUDGET = 30.0
#: The proof's budget when the client names none (CPU seconds, the program paused meanwhile).
DEFAULT_PROOF_BUDGET = 0.4


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


def check_agent_address(address: str, token: str | None) -> tuple[str, str | int]:
    """``parse_address`` plus everything the agent would refuse at start, without binding:
    a non-loopback address without a token, a token that cannot travel in a header, a
    unix socket path taken by something else.  ``diag run`` asks before the program starts."""
    host, port = parse_address(address)
    check_token(token)
    if port == "unix":
        problem = unix_path_problem(host)
        if problem:
            raise UsageError(f"refusing unix:{host}: {problem}")
    elif host not in LOOPBACK and not token:
        raise UsageError(f"refusing to bind {host}: a non-loopback agent needs DIAG_AGENT_TOKEN")
    return host, port


def check_token(token: str | None) -> None:
    """A token must reach the agent byte for byte in an HTTP header: printable ASCII only
    (spaces included).  The message says where the bad character is, never the token."""
    for n, char in enumerate(token or ""):
        if not " " <= char <= "~":
            kind = "a non-ASCII character" if ord(char) > 127 else "a newline or another control character"
            raise UsageError(f"the agent token (DIAG_AGENT_TOKEN) holds {kind} at position {n + 1}; it travels "
                             "in an HTTP header, so it must be printable ASCII")


#: The longest unix socket path Linux binds (108 bytes with the terminating NUL).
MAX_UNIX_PATH = 107


def unix_path_problem(path: str) -> str:
    """Why the agent may not bind a unix socket at ``path``, or "" when it may: nothing is
    there, or a socket nobody accepts on (left by an agent that was killed).  Anything
    else there is somebody's: a file, a directory, a link, a socket in use."""
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        return f"the path is longer than {MAX_UNIX_PATH} bytes"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"no such directory {parent}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ""
    except OSError as err:
        return err.strerror or str(err)
    if not stat.S_ISSOCK(st.st_mode):
        what = ("a regular file" if stat.S_ISREG(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                else "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a file")
        return f"{what} is there; the agent only replaces a stale socket nobody listens on"
    if st.st_uid != os.getuid():
        return "a socket of another user is there"
    if _accepts(path):
        return "a process listens on that socket (another agent?); give each process its own path"
    return ""


def _accepts(path: str) -> bool:
    """Whether anybody listens on the unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:  # a full backlog times out, and so on: somebody is there
        return True
    finally:
        probe.close()
    return True

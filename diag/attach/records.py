"""Where attached agents live and how diag finds them again: a per-user directory with
the default sockets and one record per attached process, keyed by pid and start time so
that a reused pid never finds another process's agent."""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

from diag.errors import TargetError


def user_dir(uid: int) -> Path:
    """``$TMPDIR/diag-<uid>``, created 0700 and owned by ``uid``; refused if someone else owns it."""
    path = Path(tempfile.gettempdir()) / f"diag-{uid}"
    try:
        os.mkdir(path, 0o700)
        if uid != os.geteuid():
            os.chown(path, uid, -1)
    except FileExistsError:
        pass
    except OSError as err:
        raise TargetError(f"cannot create {path}: {err.strerror or err}") from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        raise TargetError(f"{path} is not a private directory of uid {uid}: remove it, or pass --agent")
    return path


def default_address(pid: int, uid: int) -> str:
    """A 0600 unix socket for ``pid``'s agent in its owner's directory."""
    return f"unix:{user_dir(uid) / f'{pid}.sock'}"


def record_path(pid: int) -> Path:
    return user_dir(os.geteuid()) / f"attached-{pid}.json"


def write_record(pid: int, start_ticks: int, url: str, attached_at: float | None) -> None:
    path = record_path(pid)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": pid, "start": start_ticks, "url": url, "attached_at": attached_at}))
    os.replace(tmp, path)


def read_record(pid: int, start_ticks: int) -> dict[str, Any] | None:
    """The record of ``pid`` when it is this very process's (same start time)."""
    try:
        data = json.loads(record_path(pid).read_text())
    except (OSError, ValueError, TargetError):
        return None
    if not isinstance(data, dict) or data.get("start") != start_ticks or not isinstance(data.get("url"), str):
        return None
    return data


def remove_record(pid: int) -> None:
    try:
        record_path(pid).unlink()
    except (OSError, TargetError):
        pass


def answers(url: str, timeout: float = 1.0) -> bool:
    """Something accepts connections at the agent address ``url``."""
    try:
        if url.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = url[len("unix:"):]
        else:
            hostport = url.split("://", 1)[-1].split("/", 1)[0]
            host, _, port = hostport.rpartition(":")
            sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
            address = (host.strip("[]"), int(port))
        with sock:
            sock.settimeout(timeout)
            sock.connect(address)
        return True
    except (OSError, ValueError):
        return False

"""The agent directory: one small JSON file per process that runs an agent.

With several worker processes (gunicorn, or one server per port) nobody knows every
agent's ephemeral port in advance.  Each agent started with an agent directory writes
``<pid>.json`` there (pid, url, argv, start time), atomically, and removes it when the
process exits cleanly.  Readers list the directory, and a file whose process is gone
(killed, crashed, or its pid reused by another program) reads as dead instead of
being queried.

Usage::

    for record in read_records("/run/app/diag"):
        print(record.pid, record.url, process_alive(record))
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Mapping

RECORD_SCHEMA = "diag.agent-file/1"


@dataclass(frozen=True)
class AgentRecord:
    """Where one process's agent listens.  ``proc_start`` is the kernel's start time of
    the process (clock ticks since boot, Linux only), which tells a live process from a
    later one that got the same pid."""

    pid: int
    url: str
    argv: tuple[str, ...] = ()
    started_at: float = 0.0
    proc_start: int | None = None
    ppid: int | None = None
    python: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"schema": RECORD_SCHEMA, "pid": self.pid, "url": self.url, "argv": list(self.argv),
                "started_at": self.started_at, "proc_start": self.proc_start, "ppid": self.ppid,
                "python": self.python}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AgentRecord:
        start = d.get("proc_start")
        ppid = d.get("ppid")
        return cls(int(d["pid"]), str(d["url"]), tuple(str(a) for a in d.get("argv") or ()),
                   float(d.get("started_at") or 0.0), None if start is None else int(start),
                   None if ppid is None else int(ppid), str(d.get("python") or ""))


def record_path(directory: str, pid: int) -> str:
    return os.path.join(directory, f"{pid}.json")


def proc_start_ticks(pid: int) -> int | None:
    """The process's start time from ``/proc/PID/stat`` (None where there is no /proc)."""
    stat = _proc_stat(pid)
    if stat is None or len(stat) < 20:
        return None
    try:
        return int(stat[19])
    except ValueError:
        return None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/PID/stat`` (state first); the command name may hold spaces."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()


def own_record(url: str) -> AgentRecord:
    pid = os.getpid()
    return AgentRecord(pid=pid, url=url, argv=tuple(sys.argv), started_at=time.time(),
                       proc_start=proc_start_ticks(pid), ppid=os.getppid(),
                       python=".".join(str(n) for n in sys.version_info[:3]))


#: (device, inode) of each file this process wrote: ``remove_record`` unlinks nothing else.
_written: dict[str, tuple[int, int]] = {}


def write_atomically(path: str, text: str) -> tuple[int, int]:
    """Write ``path`` through a new temporary file beside it (a name nobody has, opened
    with ``O_EXCL``: never a file or link that was there), then rename; mode 0600.
    Returns the written file's (device, inode)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            st = os.fstat(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)  # our own temporary file
        except OSError:
            pass
        raise
    return st.st_dev, st.st_ino


def write_record(directory: str, record: AgentRecord) -> str:
    """Write ``<pid>.json`` atomically (temporary file, then rename), mode 0600."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = record_path(directory, record.pid)
    _written[path] = write_atomically(path, json.dumps(record.to_dict()) + "\n")
    return path


def remove_record(path: str) -> None:
    """Unlink a record this process wrote, if it is still the file there."""
    written = _written.pop(path, None)
    try:
        st = os.lstat(path)
        if written == (st.st_dev, st.st_ino):
            os.unlink(path)
    except OSError:
        pass


def read_records(directory: str) -> list[tuple[str, AgentRecord | None, str]]:
    """``(file name, record or None, problem)`` for every ``<pid>.json`` of ``directory``,
    by pid.  Raises ``OSError`` when the directory cannot be listed."""
    out: list[tuple[int, str, AgentRecord | None, str]] = []
    for name in os.listdir(directory):
        stem, dot, ext = name.partition(".")
        if ext != "json" or not stem.isdigit():
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as fh:
                record = AgentRecord.from_dict(json.loads(fh.read()))
            out.append((int(stem), name, record, ""))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            out.append((int(stem), name, None, f"unreadable agent file: {type(err).__name__}: {err}"))
    out.sort(key=lambda item: item[0])
    return [(name, record, problem) for _, name, record, problem in out]


def process_alive(record: AgentRecord) -> str:
    """"" when the record's process still runs, else why it is taken for dead."""
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return f"process {record.pid} is not running (stale agent file)"
    except PermissionError:
        pass  # alive, but another user's
    except OSError as err:
        return f"process {record.pid}: {err.strerror or err}"
    stat = _proc_stat(record.pid)
    if stat is not None:
        if stat and stat[0] in ("Z", "X"):
            return f"process {record.pid} has exited (stale agent file)"
        if record.proc_start is not None and len(stat) >= 20 and stat[19] != str(record.proc_start):
            return f"process {record.pid} is not the one that wrote the file (pid reused; stale agent file)"
    return ""

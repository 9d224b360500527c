"""What ``diag attach`` needs to know about a process before touching it, read from /proc.

Reading is split from judging: ``read_facts`` gathers ``ProcessFacts`` and
``PtraceFacts``; ``python_version`` and ``explain_denial`` are pure functions over them,
so each refusal's wording is tested on hand-built facts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from diag.errors import TargetError

#: The interpreters whose threads and C-API diag attach has been tested against.
SUPPORTED = ((3, 11), (3, 12), (3, 13))
SUPPORTED_TEXT = "CPython 3.11, 3.12 and 3.13"
CAP_SYS_PTRACE = 19

_LIBPYTHON = re.compile(r"libpython(\d+)\.(\d+)")
_EXE = re.compile(r"python(\d+)\.(\d+)$")
_EXT_TAG = re.compile(r"\.cpython-(\d)(\d+)")


@dataclass(frozen=True)
class ProcessFacts:
    """One process as /proc shows it: its executable, mapped files, owner and start time."""

    pid: int
    exe: str
    maps: tuple[str, ...]
    uid: int
    start_ticks: int
    state: str


@dataclass(frozen=True)
class PtraceFacts:
    """What decides whether this process may ptrace another."""

    own_uid: int
    target_uid: int
    yama_scope: int | None  # None: no Yama LSM
    has_cap_sys_ptrace: bool
    in_container: bool


class ProcessGone(TargetError):
    """The process does not exist (any more)."""


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart); None if gone."""
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int, ticks: int) -> bool:
    """True while the process that started at ``ticks`` still runs (not a zombie)."""
    if start_ticks(pid) != ticks:
        return False
    try:
        return _state(_read(f"/proc/{pid}/status")) not in ("Z", "X")
    except OSError:
        return False


def _state(status: str) -> str:
    m = re.search(r"^State:\s+(\S)", status, re.M)
    return m.group(1) if m else "?"


def read_facts(pid: int) -> ProcessFacts:
    """The process's facts; ``ProcessGone``, or ``TargetError`` when /proc refuses us."""
    if pid <= 0:
        raise ProcessGone(f"no such process: {pid}")
    try:
        status = _read(f"/proc/{pid}/status")
    except FileNotFoundError:
        raise ProcessGone(f"no such process: {pid}") from None
    except OSError as err:
        raise TargetError(f"pid {pid}: cannot read /proc/{pid}: {err.strerror or err}") from None
    uid_line = re.search(r"^Uid:\s+(\d+)", status, re.M)
    ticks = start_ticks(pid)
    if ticks is None:
        raise ProcessGone(f"no such process: {pid}")
    state = _state(status)
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        maps = tuple(line.split(None, 5)[5] for line in _read(f"/proc/{pid}/maps").splitlines()
                     if len(line.split(None, 5)) == 6)
    except FileNotFoundError:
        raise ProcessGone(f"no such process: {pid}") from None
    except PermissionError:
        exe, maps = "", ()  # ptrace rules hide them: explain_denial says why
    except OSError:
        exe, maps = "", ()
    return ProcessFacts(pid, exe, maps, int(uid_line.group(1)) if uid_line else -1, ticks, state)


def python_version(facts: ProcessFacts) -> tuple[int, int] | None:
    """The CPython version a process runs, from its executable or mapped libpython; None
    when it shows no sign of Python."""
    for path in facts.maps:
        m = _LIBPYTHON.search(os.path.basename(path))
        if m:
            return int(m.group(1)), int(m.group(2))
    m = _EXE.search(os.path.basename(facts.exe.removesuffix(" (deleted)")))
    if m:
        return int(m.group(1)), int(m.group(2))
    if "python" in os.path.basename(facts.exe):
        for path in facts.maps:  # an unversioned python binary: its loaded extension modules tell
            m = _EXT_TAG.search(os.path.basename(path))
            if m:
                return int(m.group(1)), int(m.group(2))
    return None


def read_ptrace_facts(target_uid: int) -> PtraceFacts:
    try:
        scope: int | None = int(_read("/proc/sys/kernel/yama/ptrace_scope").strip())
    except (OSError, ValueError):
        scope = None
    cap = False
    try:
        m = re.search(r"^CapEff:\s+([0-9a-fA-F]+)", _read("/proc/self/status"), re.M)
        cap = bool(m and int(m.group(1), 16) >> CAP_SYS_PTRACE & 1)
    except OSError:
        pass
    container = os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")
    try:
        cgroup = _read("/proc/1/cgroup")
        container = container or any(w in cgroup for w in ("docker", "kubepods", "containerd", "libpod"))
    except OSError:
        pass
    return PtraceFacts(os.geteuid(), target_uid, scope, cap, container)


#: What each command does to a process, as its messages say it.
DOING = {"attach": "attach to", "detach": "detach from"}


def explain_denial(pid: int, facts: PtraceFacts, command: str = "attach") -> str:
    """The one-line reason ptrace refused ``pid``, with what to do about it; ``command``
    (attach or detach) is what the user ran, and what the advice tells them to run again."""
    where = f"cannot {DOING[command]} pid {pid}: permission denied"
    run = f"diag {command}"
    if facts.own_uid != 0 and facts.target_uid not in (-1, facts.own_uid):
        return (f"{where}: it is another user's process (uid {facts.target_uid}); "
                f"run {run} as that user or as root")
    if facts.yama_scope == 3:
        return f"{where}: kernel.yama.ptrace_scope is 3 (no process may ptrace another); it resets only at reboot"
    if facts.yama_scope == 2 and not facts.has_cap_sys_ptrace:
        return f"{where}: kernel.yama.ptrace_scope is 2 (only CAP_SYS_PTRACE may ptrace); run {run} as root"
    if facts.yama_scope == 1 and not facts.has_cap_sys_ptrace:
        return (f"{where}: kernel.yama.ptrace_scope is 1 (only a parent may ptrace its child); run {run} as root "
                f"or set it to 0: sysctl kernel.yama.ptrace_scope=0")
    if not facts.has_cap_sys_ptrace and facts.in_container:
        return (f"{where}: this container lacks CAP_SYS_PTRACE; start it with --cap-add SYS_PTRACE "
                f"(or run {run} from the host)")
    return f"{where}: ptrace is refused here (a seccomp or security-module policy)"

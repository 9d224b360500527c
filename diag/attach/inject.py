"""Getting code into a running CPython: a staged order, loaded by one of two mechanisms.

- CPython 3.14+ has ``sys.remote_exec`` (PEP 768): the target runs a script at its next
  safe point.  It needs the caller to run the same minor version; the script only
  starts a thread.
- Before that, ``pyinjector`` (ptrace) makes the target ``dlopen`` a copy of
  ``diag/_attach_boot.c``'s library, whose constructor starts a thread that takes the
  GIL and runs ``boot.py``.  Chosen by measurement over gdb's ``call dlopen`` of the
  same library, which stops every thread for about a second while it reads symbols
  (and whose inferior calls fail on some kernels): docs/benchmarks.md.

Either way the order travels in files: ``<lib>.json`` (claimed by renaming it, so a
timed-out attach can withdraw it atomically) and the answer comes back in ``<lib>.result``.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import diag
from diag.attach.process import DOING
from diag.errors import TargetError

PACKAGE_DIR = Path(diag.__file__).resolve().parent
BOOT_SCRIPT = PACKAGE_DIR / "attach" / "boot.py"
POLL = 0.01


class AttachTimeout(TargetError):
    """The target did not run the order in time (its main thread keeps the GIL)."""


class PtraceDenied(TargetError):
    """The kernel refused to let us ptrace the target."""


def boot_library() -> Path:
    """The built ``diag._attach_boot`` library; ``TargetError`` when diag was built without it."""
    found = sorted(glob.glob(str(PACKAGE_DIR / "_attach_boot*.so")))
    if not found:
        raise TargetError("diag was installed without its attach library (no C compiler at install time): "
                          "reinstall diag where gcc is present")
    return Path(found[0])


def remote_exec_usable(version: tuple[int, int]) -> bool:
    """``sys.remote_exec`` works from here to a target of ``version``."""
    return hasattr(sys, "remote_exec") and tuple(sys.version_info[:2]) == version


@dataclass
class Order:
    """A staged order in its own directory: the library copy, the boot script, the order."""

    directory: Path
    library: Path

    @property
    def order_file(self) -> Path:
        return Path(f"{self.library}.json")

    @property
    def result_file(self) -> Path:
        return Path(f"{self.library}.result")

    def withdraw(self) -> bool:
        """Take the order back; False when the target has already claimed it."""
        try:
            os.rename(self.order_file, f"{self.library}.withdrawn")
            return True
        except FileNotFoundError:
            return False

    def result(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.result_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def stage(order: dict[str, Any], owner_uid: int) -> Order:
    """Write an order for the target into a fresh private directory it can read."""
    directory = Path(tempfile.mkdtemp(prefix="diag-attach-"))
    # A fresh name per attach: dlopen of a path (or inode) already loaded runs nothing.
    library = directory / f"boot-{secrets.token_hex(6)}.so"
    shutil.copyfile(boot_library(), library)
    shutil.copyfile(BOOT_SCRIPT, f"{library}.py")
    Path(f"{library}.json").write_text(json.dumps(order))
    if owner_uid >= 0 and owner_uid != os.geteuid():  # root attaching to another user's process
        for path in (directory, library, Path(f"{library}.py"), Path(f"{library}.json")):
            os.chown(path, owner_uid, -1)
    return Order(directory, library)


#: Syscalls that the C library makes while holding its allocator's lock (malloc growing
#: or trimming the heap), by machine.
_ALLOCATOR_SYSCALLS = {
    "x86_64": {9, 10, 11, 12, 25, 28},        # mmap mprotect munmap brk mremap madvise
    "aarch64": {214, 215, 216, 222, 226, 233},  # brk munmap mremap mmap mprotect madvise
}


def loader_ranges(pid: int) -> list[tuple[int, int]]:
    """The executable mappings of the C library and the dynamic loader in ``pid``."""
    out: list[tuple[int, int]] = []
    try:
        with open(f"/proc/{pid}/maps") as fh:
            for line in fh:
                parts = line.split(None, 5)
                name = os.path.basename(parts[5].strip()) if len(parts) == 6 else ""
                if "x" in parts[1] and name.startswith(("libc.so", "libc-", "ld-linux", "ld-musl")):
                    lo, hi = parts[0].split("-")
                    out.append((int(lo, 16), int(hi, 16)))
    except (OSError, ValueError, IndexError):
        pass
    return out


def safe_to_borrow(syscall_line: str, libc: list[tuple[int, int]], machine: str) -> bool:
    """Whether a thread stopped where ``/proc/PID/syscall`` says may run ``dlopen``:
    blocked in a syscall other than the allocator's, or in code outside the C library and
    the loader (so not inside malloc, stdio or the loader, whose locks it may hold)."""
    fields = syscall_line.split()
    if not fields or fields[0] == "running":
        return False
    try:
        number = int(fields[0])
        pc = int(fields[-1], 16)
    except ValueError:
        return False
    if number >= 0:
        return number not in _ALLOCATOR_SYSCALLS.get(machine, set())
    return bool(libc) and not any(lo <= pc < hi for lo, hi in libc)


def load_with_pyinjector(pid: int, order: Order, explain: Callable[[], str], timeout: float,
                         command: str = "attach") -> None:
    """Make ``pid`` load the order's library; ``PtraceDenied`` with ``explain()`` on EPERM;
    ``command`` (attach or detach) is what the other errors say was being done.

    ptrace borrows the target's main thread for the ``dlopen``.  Stopped inside malloc
    (or the loader), that thread would deadlock on a lock it holds itself, so diag looks
    where it stopped and lets it go again until it is at a safe point."""
    try:
        import pyinjector  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise TargetError("diag attach needs pyinjector: pip install pyinjector") from None
    libc = loader_ranges(pid)
    machine = os.uname().machine
    deadline = time.monotonic() + timeout
    try:
        while True:
            with pyinjector.attach(pid) as injector:
                try:
                    with open(f"/proc/{pid}/syscall") as fh:
                        where = fh.read()
                except OSError:
                    where = ""
                if safe_to_borrow(where, libc, machine):
                    injector.inject(str(order.library).encode())
                    return
            if time.monotonic() > deadline:
                raise AttachTimeout(f"pid {pid} was inside its C library at every look for {timeout:g}s "
                                    f"(allocating memory or loading a library); the process is unchanged; "
                                    f"retry later")
            time.sleep(0.002)
    except pyinjector.InjectorError as err:
        if err.ret_val == -8:  # INJERR_PERMISSION
            raise PtraceDenied(explain()) from None
        if err.ret_val == -3:  # INJERR_NO_PROCESS
            raise TargetError(f"pid {pid} exited during {command}") from None
        detail = (err.error_str or "").splitlines()[0] if err.error_str else f"error {err.ret_val}"
        raise TargetError(f"cannot {DOING[command]} pid {pid}: {err.func_name}: {detail}") from None
    except TargetError:
        raise
    except Exception as err:  # anything else from the injector is still one line
        raise TargetError(f"cannot {DOING[command]} pid {pid}: {type(err).__name__}: {err}") from None


def remote_script(order: Order) -> Path:
    """The script ``sys.remote_exec`` hands the target: one expression statement (the
    target runs it in ``__main__``, which must gain nothing) that, in globals of its own,
    starts a thread running ``boot.py`` as the attach library's thread would."""
    boot = str(order.library)
    inner = ("import threading\n"
             "threading.Thread(target=lambda: exec(compile(open(BOOT + '.py', 'rb').read(), '<diag attach>', "
             "'exec'), {'__name__': '__diag_attach__', 'BOOT': BOOT}), name='diag-attach', daemon=True).start()\n")
    script = Path(f"{order.library}.remote.py")
    script.write_text(f"exec(compile({inner!r}, '<diag attach>', 'exec'), "
                      f"{{'__name__': '__diag_attach__', 'BOOT': {boot!r}}})\n")
    return script


def load_with_remote_exec(pid: int, order: Order, command: str = "attach") -> None:
    """Python 3.14+: ask the target to run ``remote_script`` at its next safe point."""
    script = remote_script(order)
    try:
        sys.remote_exec(pid, str(script))  # type: ignore[attr-defined,unused-ignore]
    except PermissionError:
        raise PtraceDenied(f"cannot {DOING[command]} pid {pid}: permission denied") from None
    except ProcessLookupError:
        raise TargetError(f"pid {pid} exited during {command}") from None
    except Exception as err:
        raise TargetError(f"cannot {DOING[command]} pid {pid}: {type(err).__name__}: {err}") from None


def await_result(pid: int, order: Order, timeout: float, alive: Callable[[], bool],
                 grace: float = 5.0, said: float | None = None, command: str = "attach") -> dict[str, Any]:
    """Wait up to ``timeout`` seconds for the target's answer (``said``: the whole
    ``command``'s timeout, for the message).  Past it the order is withdrawn, so a target that gets to
    it later does nothing; if the target claimed it just in time, its answer gets
    ``grace`` seconds more."""
    deadline = time.monotonic() + timeout
    claimed = False
    while True:
        result = order.result()
        if result is not None:
            return result
        if not alive():
            raise TargetError(f"pid {pid} exited during {command}")
        if time.monotonic() >= deadline:
            if claimed:
                raise AttachTimeout(f"pid {pid} took diag's order but did not answer within {timeout + grace:g}s")
            if order.withdraw():
                raise AttachTimeout(
                    f"pid {pid} did not let diag in within {said or timeout:g}s: its main thread keeps the GIL "
                    f"(a long C call); the process is unchanged; retry later or raise --timeout")
            claimed, deadline = True, time.monotonic() + grace
        time.sleep(POLL)

"""``diag top``: a live view of a running target, refreshed every second.

On a terminal the frame is redrawn in place (``rich.live.Live``) and ``q`` or Ctrl-C
quits; otherwise, and with ``--once`` or ``--iterations N``, frames are printed one
after another for scripts.  The first fetch must succeed (exit 3 otherwise); after
that a target that dies or hangs is shown as unreachable and retried, never raised.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import Any, Callable, Optional, TextIO, Union

import typer
from rich.console import Console
from rich.live import Live

from diag.analysis.top_summary import DEFAULT_LIMIT, Outage, TopOptions, TopSummary, summarize
from diag.cli import option_checks as checks
from diag.errors import DiagError, UsageError
from diag.render import top_view
from diag.model.top_sample import TopSample
from diag.sources.top_source import fetch_sample, open_top_source

#: Keys that quit the live view.
QUIT_KEYS = b"qQ"
#: How often a wait for the target looks at the keyboard, in seconds.
KEY_POLL = 0.05
#: The shortest refresh interval: each refresh walks the target's heap once.
MIN_INTERVAL = 0.1


class _Quit(Exception):
    """SIGTERM or SIGHUP while the view is up: leave cleanly, exit 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Console(Console):
    """stdout's console; a reader that stops reading (``| head``) ends ``diag top``
    the way it ends the other commands (exit 0), not with rich's exit 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        try:  # nothing more can reach the reader, including Python's flush at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        raise BrokenPipeError


class Keys:
    """The keyboard, when stdin is a terminal this process has in the foreground: put in
    cbreak mode (keys arrive one by one, unechoed) on enter and restored on exit, whatever
    happened in between.  Ctrl-C quits like ``q``: its SIGINT only sets a flag and wakes
    the key poll (``signal.set_wakeup_fd``), so no KeyboardInterrupt is raised at some
    arbitrary point of a redraw or of the terminal's restore."""

    def __init__(self, stream: TextIO | None) -> None:
        self.fd: int | None = None
        self._saved: list[Any] | None = None
        self.interrupted = False
        self._wakeup: tuple[int, int] | None = None
        self._restore_signals: Callable[[], None] | None = None
        try:
            fd = stream.fileno() if stream is not None else -1
        except (AttributeError, OSError, ValueError):
            fd = -1
        if fd >= 0 and os.isatty(fd):
            try:
                # A background job that touched the terminal's modes would be stopped.
                if os.tcgetpgrp(fd) == os.getpgrp():
                    self.fd = fd
            except OSError:
                pass

    @property
    def active(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> Keys:
        if self.fd is None:
            return self
        import termios

        try:
            saved = termios.tcgetattr(self.fd)
            mode = termios.tcgetattr(self.fd)
            mode[3] &= ~(termios.ICANON | termios.ECHO)
            mode[6][termios.VMIN] = 1
            mode[6][termios.VTIME] = 0
            # TCSANOW, not TCSAFLUSH: a key typed while diag was starting still counts.
            termios.tcsetattr(self.fd, termios.TCSANOW, mode)
        except (termios.error, OSError):
            self.fd = None
            return self
        self._saved = saved
        self._catch_interrupt()
        return self

    def _catch_interrupt(self) -> None:
        """SIGINT sets ``interrupted`` and writes to a pipe the key poll also watches."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread: Ctrl-C raises as usual
        read_end, write_end = os.pipe()
        previous_fd: int | None = None
        try:
            os.set_blocking(write_end, False)
            os.set_blocking(read_end, False)
            previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            previous = signal.signal(signal.SIGINT, self._on_interrupt)
        except (ValueError, OSError):
            if previous_fd is not None:
                signal.set_wakeup_fd(previous_fd)  # never left pointing at a closed pipe
            os.close(read_end)
            os.close(write_end)
            return
        self._wakeup = (read_end, write_end)

        def restore() -> None:
            signal.signal(signal.SIGINT, previous)
            signal.set_wakeup_fd(previous_fd)

        self._restore_signals = restore

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        self.interrupted = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.fd is not None and self._saved is not None:
            import termios

            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except (termios.error, OSError):
                pass
            self._saved = None
        if self._restore_signals is not None:
            try:
                self._restore_signals()
            except (ValueError, OSError):
                pass
            self._restore_signals = None
        if self._wakeup is not None:
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    def quit_pressed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a quit key; other keys are ignored."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self.interrupted:
                return True
            left = deadline - time.monotonic()
            if self.fd is None:
                if left > 0:
                    time.sleep(left)
                return self.interrupted
            if left <= 0:
                return False
            watched = [self.fd] if self._wakeup is None else [self.fd, self._wakeup[0]]
            ready, _, _ = select.select(watched, [], [], left)
            if self._wakeup is not None and self._wakeup[0] in ready:
                try:
                    os.read(self._wakeup[0], 512)  # the signal numbers: the flag says what came
                except OSError:
                    pass
                continue
            if not ready:
                return False
            try:
                data = os.read(self.fd, 64)
            except OSError:  # the terminal went away (hung up)
                data = b""
            if not data:  # no more keys to read
                self.fd = None
                continue
            if any(b in QUIT_KEYS for b in data):
                return True


Fetch = Callable[[], TopSample]
Outcome = Union[TopSample, BaseException]


def fetch_watching_keys(fetch: Fetch, keys: Keys) -> Outcome | None:
    """``fetch()`` (its sample or its exception); ``None`` if a quit key came first.

    With a keyboard the fetch runs on a daemon thread so that ``q`` answers at once
    even while the target hangs; the abandoned fetch ends with its own timeout."""
    if not keys.active:
        try:
            return fetch()
        except Exception as err:
            return err
    result: list[Outcome] = []
    done = threading.Event()

    def work() -> None:
        try:
            result.append(fetch())
        except Exception as err:
            result.append(err)
        finally:
            done.set()

    threading.Thread(target=work, name="diag-top-fetch", daemon=True).start()
    while not done.is_set():
        if keys.quit_pressed(KEY_POLL):
            return None
    return result[0]


def failure_reason(err: BaseException, target: str) -> str:
    """One line for the status bar: the error without the target's name in front."""
    message = str(err) if isinstance(err, DiagError) else f"{type(err).__name__}: {err}"
    for name in (target, f"http://{target}"):
        if message.startswith(name + ": "):
            return message[len(name) + 2:]
    return message


class Frames:
    """Where frames go: redrawn in place by ``Live``, or printed one after another."""

    def __init__(self, console: Console, *, live: bool, interval: float, hint: str = "") -> None:
        self.console = console
        self.interval = interval
        self.hint = hint
        self.live = Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                         redirect_stderr=False) if live else None
        self.shown = 0

    def __enter__(self) -> Frames:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.live is not None:
            self.live.__exit__(exc_type, exc, tb)

    def show(self, summary: TopSummary) -> None:
        frame = top_view.render(summary, interval=self.interval, hint=self.hint, cwd=os.getcwd())
        if self.live is not None:
            self.live.update(frame, refresh=True)
        else:
            if self.shown:
                self.console.print()
            self.console.print(frame)
        self.shown += 1


def run_view(fetch: Fetch, frames: Frames, keys: Keys, *, target: str, options: TopOptions, interval: float,
             iterations: int | None, clock: Callable[[], float] = time.monotonic,
             wall: Callable[[], float] = time.time) -> int:
    """Fetch, summarise, show; every ``interval`` seconds until ``iterations`` frames
    were shown or a quit key.  The first fetch's ``DiagError`` propagates (exit 3)."""
    current = fetch()
    previous: TopSample | None = None
    outage: Outage | None = None
    with frames:
        frames.show(summarize(target, current, None, options))
        next_at = clock() + interval
        while iterations is None or frames.shown < iterations:
            if keys.quit_pressed(next_at - clock()):
                return 0
            next_at += interval
            got = fetch_watching_keys(fetch, keys)
            if got is None:
                return 0
            if isinstance(got, BaseException):
                reason = failure_reason(got, target)
                outage = (Outage(wall(), reason) if outage is None
                          else Outage(outage.since, reason, outage.attempts + 1))
            else:
                previous, current, outage = current, got, None
            frames.show(summarize(target, current, previous, options, outage))
            if next_at < clock():  # a slow fetch: start the next interval now, no burst
                next_at = clock() + interval
    return 0


def _raise_quit(signum: int, frame: FrameType | None) -> None:
    raise _Quit(signum)


EXAMPLES = (
    ("watch a service; q or Ctrl-C quits", "diag top http://127.0.0.1:8080"),
    ("one frame, for a script or a bug report", "diag top 127.0.0.1:8080 --once"),
    ("five frames two seconds apart, only waits of a second or more",
     "diag top unix:/tmp/diag-1000/4129.sock --interval 2 --iterations 5 --min-wait 1"),
)


def top(
    target: str = typer.Argument(..., metavar="TARGET", show_default=False,
                                 help="http://HOST:PORT, HOST:PORT, unix:/PATH or pid:N of a running agent "
                                      "(a live process: a saved file has nothing to refresh)"),
    interval: float = typer.Option(1.0, "--interval", "-n", metavar="SECONDS",
                                   help=f"seconds between refreshes (at least {MIN_INTERVAL:g})"),
    iterations: Optional[int] = typer.Option(None, "--iterations", metavar="N", show_default="until q or Ctrl-C",
                                             help="stop after this many frames (printed, not redrawn)"),
    once: bool = typer.Option(False, "--once", show_default="off", help="print one frame and exit (same as --iterations 1)"),
    limit: int = typer.Option(DEFAULT_LIMIT, "--limit", metavar="N", help="task groups and primitives to list"),
    min_wait: float = typer.Option(0.0, "--min-wait", metavar="SECONDS",
                                   help="group only tasks waiting at least this many seconds"),
    idle: bool = typer.Option(False, "--idle", show_default="off", help="also group tasks that sleep or wait on Queue.get"),
    timeout: float = typer.Option(5.0, "--timeout", metavar="SECONDS", help="seconds to wait for each answer of the target"),
) -> int:
    """Watch a running target: tasks by state and wait, stuck groups, contended primitives, loop lag, requests/s."""
    checks.in_range("--interval", interval, at_least=MIN_INTERVAL, at_most=checks.MAX_SECONDS, unit="seconds")
    checks.in_range("--iterations", iterations, at_least=1)
    if once and iterations not in (None, 1):
        raise UsageError("--once and --iterations disagree; give one of them")
    checks.in_range("--limit", limit, at_least=1)
    checks.threshold("--min-wait", min_wait)
    checks.seconds("--timeout", timeout)
    if once:
        iterations = 1
    source = open_top_source(target, timeout)
    console = _Console()
    live = iterations is None and console.is_terminal and not console.is_dumb_terminal
    previous_handlers = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None:
            previous_handlers[signum] = signal.signal(signum, _raise_quit)
    try:
        with Keys(sys.stdin) as keys:
            hint = "q quits" if keys.active else "Ctrl-C quits"
            frames = Frames(console, live=live, interval=interval, hint=hint if live else "")
            return run_view(lambda: fetch_sample(source), frames, keys, target=target,
                            options=TopOptions(limit=limit, min_wait=min_wait, idle=idle), interval=interval,
                            iterations=iterations)
    except KeyboardInterrupt:
        return 0
    except _Quit as stop:
        return 128 + stop.signum
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)

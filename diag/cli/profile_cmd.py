"""``diag profile``: where the event loop's thread spends its time, by function or by task."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import typer

from diag.analysis.profile_stats import BY, SORT_KEYS, ProfileQuery, loop_hint, profile_view
from diag.cli import option_checks as checks
from diag.cli.console import stderr
from diag.errors import TargetError, UsageError
from diag.model.profile_snapshot import CLOCKS, MODES, ProfileSnapshot
from diag.render import profile_export
from diag.sources.source import AgentSource, agent_url, is_url, read_saved

FORMATS = ("table", "text", "json")
#: Agent-side hard limit on a profile window (diag.collect.profiler.MAX_SECONDS).
MAX_SECONDS = 60.0
#: Longest --timeout accepted (a socket timeout must fit the platform's clock).
MAX_TIMEOUT = 86400.0
OVERHEAD = {
    "wall": "yappi (wall clock) slows the target down while it runs: expect 35-75 % fewer requests/s (most on cheap requests)",
    "cpu": "yappi (cpu clock) slows the target down while it runs: expect 60-90 % fewer requests/s (most on cheap requests)",
    "sample": "sampling at 100 Hz: expect under 2 % fewer requests/s",
}


def _is_file_target(target: str) -> bool:
    if is_url(target):
        return False
    return target.endswith(".json") or os.path.exists(target)


def _agent_target(target: str) -> str:
    return agent_url(target, "a saved .json profile")


def load_profile(path: str) -> ProfileSnapshot:
    return read_saved(path, ProfileSnapshot.from_json)


def _take(source: AgentSource, params: dict[str, str], seconds: float) -> Any:
    """POST the profile request; a progress bar on stderr while the window runs (terminals
    only).  The answer may take the window plus ``--timeout``; the agent has just answered
    its status, so no other probe."""
    def post() -> Any:
        return source.post("profile", params, extra=seconds, extra_why=f"the {seconds:g}s profile window",
                           probe=False)

    if not stderr.is_terminal:
        return post()
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    result: dict[str, Any] = {}

    def request() -> None:
        try:
            result["data"] = post()
        except BaseException as err:  # handed to the main thread
            result["error"] = err

    worker = threading.Thread(target=request, name="profile-request", daemon=True)
    worker.start()
    started = time.monotonic()
    with Progress(TextColumn("profiling"), BarColumn(), TimeRemainingColumn(), console=stderr,
                  transient=True) as progress:
        bar = progress.add_task("profile", total=seconds)
        while worker.is_alive():
            progress.update(bar, completed=min(seconds, time.monotonic() - started))
            worker.join(0.1)
    if "error" in result:
        raise result["error"]
    return result["data"]


EXAMPLES = (
    ("sample the loop's thread for 5 seconds: the top functions", "diag profile http://127.0.0.1:8080"),
    ("10 seconds of yappi, time per coroutine", "diag profile http://127.0.0.1:8080 --mode yappi --seconds 10 --by task"),
    ("save the profile for speedscope", "diag profile http://127.0.0.1:8080 -o profile.speedscope.json"),
    ("a saved profile against an earlier one", "diag profile after.json --base before.json --top 20"),
)


def profile(
    target: str = typer.Argument(..., metavar="TARGET", show_default=False,
                                 help="http://HOST:PORT, HOST:PORT, unix:/PATH, pid:N, or a profile saved "
                                      "with -o FILE.json"),
    seconds: float = typer.Option(5.0, "--seconds", "-s", metavar="SECONDS",
                                  help=f"length of the profile window (more than 0, at most {MAX_SECONDS:g})"),
    mode: Optional[str] = typer.Option(None, "--mode", metavar="MODE", show_default="sample; yappi with --clock cpu",
                                       help="sample (stacks at 100 Hz, low overhead, leaves nothing behind) "
                                            "or yappi (every call, with edges)"),
    clock: str = typer.Option("wall", "--clock", metavar="CLOCK", help="wall (time including waits) or cpu (yappi mode)"),
    sort: str = typer.Option("own", "--sort", metavar="KEY", help="own, total, calls or percall"),
    top: int = typer.Option(30, "--top", metavar="N", help="show this many rows"),
    filter: Optional[str] = typer.Option(None, "--filter", metavar="REGEX", show_default="every function",
                                         help="regex on function name or file path"),
    by: str = typer.Option("function", "--by", metavar="WHAT", help="function, or task: time per coroutine"),
    format: Optional[str] = typer.Option(None, "--format", "-f", metavar="FORMAT",
                                         show_default="table on a terminal, else text", help="table, text or json"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", show_default="not saved",
                                          help="also save the profile; the name picks the format: .json, .pstat, "
                                               ".callgrind, .speedscope.json, .collapsed"),
    output_format: Optional[str] = typer.Option(None, "--output-format", metavar="FORMAT",
                                                show_default="picked by the name of -o",
                                                help="json, pstat, callgrind, speedscope or collapsed, whatever -o is called"),
    base: Optional[Path] = typer.Option(None, "--base", metavar="FILE", show_default="none",
                                        help="show the difference from this saved profile (.json)"),
    force: bool = typer.Option(False, "--force", show_default="off", help="run yappi where it would harm the target: wall clock with very "
                                                      "many live tasks, or a yappi that keeps every profiled coroutine "
                                                      "alive (1.7.6 and older on Python 3.11+; see docs/profile.md)"),
    max_tasks: Optional[int] = typer.Option(None, "--max-tasks", metavar="N", show_default="the agent's, 2000",
                                            help="refuse wall-clock yappi above this many live tasks"),
    timeout: float = typer.Option(10.0, "--timeout", metavar="SECONDS", help="seconds to wait to connect to the target"),
) -> int:
    """Profile the target's event loop thread (yappi or sampling) and show the top functions."""
    fmt = format or ("table" if sys.stdout.isatty() else "text")
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if mode is None:  # the sampler leaves nothing behind and sees blocking calls; a cpu clock needs yappi
        mode = "yappi" if clock == "cpu" else "sample"
    if mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    if clock not in CLOCKS:
        raise UsageError(f"--clock must be one of {', '.join(CLOCKS)}, not {clock!r}")
    if mode == "sample" and clock != "wall":
        raise UsageError("--clock cpu needs --mode yappi (sampling reads stacks at wall-clock intervals)")
    if sort not in SORT_KEYS:
        raise UsageError(f"--sort must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
    if by not in BY:
        raise UsageError(f"--by must be one of {', '.join(BY)}, not {by!r}")
    checks.seconds("--seconds", seconds, at_most=MAX_SECONDS)
    checks.seconds("--timeout", timeout, at_most=MAX_TIMEOUT)
    checks.in_range("--top", top, at_least=1)
    checks.in_range("--max-tasks", max_tasks, at_least=0)
    checks.writable_file("-o/--output", output)
    query = ProfileQuery(sort=sort, top=top, pattern=filter, by=by)
    query.validate()
    export = None
    if output is not None or output_format is not None:
        if output is None:
            raise UsageError("--output-format needs -o FILE")
        export = output_format or profile_export.format_for_path(str(output))
        if export not in profile_export.FORMATS:
            raise UsageError(f"--output-format must be one of {', '.join(profile_export.FORMATS)}, not {export!r}")
    from_file = _is_file_target(target)
    if export is not None and not from_file:
        profile_export.check_format(export, mode)  # before the target pays for a profile
    base_snap = load_profile(str(base)) if base is not None else None

    if from_file:
        snap = load_profile(target)
    else:
        source = AgentSource(_agent_target(target), timeout)
        params = {"seconds": repr(seconds), "mode": mode, "clock": clock}
        if force:
            params["force"] = "1"
        if max_tasks is not None:
            params["max_tasks"] = str(max_tasks)
        # A target that is down or not an agent fails here, with one line, before the
        # warning below is printed for a profile that would never run.
        status = source.get("profile/status")
        if not isinstance(status, dict) or "busy" not in status:
            raise TargetError(f"{source.name}: not a diag agent (no profile status in the answer)")
        agent = status.get("agent")
        if status.get("profile_here") is False and isinstance(agent, str) and is_url(agent):
            # an app's own port (diag.aiohttp.setup) answers on its event loop: the window
            # runs on the agent's thread instead, at the address the app gives
            stderr.print(f"diag profile: {source.name} answers on its event loop; profiling through its agent "
                         f"at {agent}", markup=False, highlight=False)
            source = AgentSource(agent, timeout)
            status = source.get("profile/status")
            if not isinstance(status, dict) or "busy" not in status:
                raise TargetError(f"{source.name}: not a diag agent (no profile status in the answer)")
        stderr.print(f"diag profile: {OVERHEAD['sample' if mode == 'sample' else clock]}; "
                     f"profiling {seconds:g}s", markup=False, highlight=False)
        snap = source.snapshot(_take(source, params, seconds), ProfileSnapshot.from_dict)
    if base_snap is not None and base_snap.mode != snap.mode:
        raise UsageError(f"--base is a {base_snap.mode} profile and this is a {snap.mode} one; compare like with like")

    if export is not None and output is not None:
        profile_export.check_format(export, snap.mode)
        try:
            with open(output, "wb") as fh:
                profile_export.write(snap, export, fh, by_task=by == "task")
        except OSError as err:
            raise TargetError(f"cannot write {output}: {err.strerror or err}") from None
    view = profile_view(snap, query, base_snap)
    hint = loop_hint(view)
    if hint is not None:
        stderr.print(hint, markup=False, highlight=False, soft_wrap=True)
    cwd = os.getcwd()
    # each renderer (and rich's table) imported for the format asked only
    if fmt == "json":
        from diag.render import jsonout

        jsonout.render(snap, sys.stdout)
    elif fmt == "text":
        from diag.render import profile_text

        profile_text.render(view, sys.stdout, cwd=cwd)
    else:
        from rich.console import Console

        from diag.render import profile_table

        profile_table.render(view, Console(), cwd=cwd)
    return 0

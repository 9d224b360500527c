"""``diag profile``'s default mode on real programs under ``diag run``: a coroutine that
blocks the loop in ``time.sleep`` is charged the time under its own name, and a
coroutine burning the CPU in short bursts gets the share of the window it really
took, whatever else runs on the machine.  The CLI runs as a subprocess."""

from __future__ import annotations

import json
import time
from pathlib import Path
import pytest

from tests.support.cli import run_diag
from tests.support.order_service import order_service
from tests.support.programs import DiagRun
from tests.target.helpers import wait_until

# Shares of the profile window: run alone (scripts/test.sh), not beside other workers.
pytestmark = pytest.mark.serial


def spans(run: DiagRun) -> dict[str, list[tuple[float, float]]]:
    path = Path(run.dir.name) / "spans.json"
    return wait_until(lambda: path.exists() and json.loads(path.read_text()), timeout=20)  # type: ignore[no-any-return]


def overlap(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in intervals)


def rows(text: str) -> dict[str, list[str]]:
    """The function table of ``--format text``: function name -> its cells."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) == 8 and cells[0] == "-" and cells[1].replace(".", "").isdigit():
            out[cells[-1]] = cells
    return out


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_default_profile_charges_blocking_calls_and_short_bursts_to_their_code(kind: str, tmp_path: Path) -> None:
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    with DiagRun(order_service(uvloop=kind == "uvloop")) as run:
        wait_until(lambda: len(spans(run)["burn"]) >= 3 and spans(run)["flush"], timeout=30, interval=0.1)
        saved = tmp_path / "p.json"
        proc = run_diag("profile", run.url, "--seconds", "4", "--format", "text", "--top", "40", "-o", str(saved),
                        timeout=90)
        assert proc.returncode == 0, proc.stderr
        snap = json.loads(saved.read_text())
        window = (snap["taken_at"], snap["taken_at"] + snap["duration"])
        # the last interval that began in the window has ended (and been written)
        done = wait_until(lambda: (s := spans(run)) and s["flush"][-1][1] > window[1] + 0.3
                          and s["burn"][-1][1] > window[1] + 0.1 and s, timeout=30, interval=0.1)
        assert "sampling" in proc.stdout  # the default mode
        # the loop's poll leads (it waits about 60 % of the time): said on stderr, not stdout
        assert "hint: the loop waited for events" in proc.stderr and "hint" not in proc.stdout, proc.stderr
        table = rows(proc.stdout)

        # The blocking call is the flusher's own time, under its own name: the 0.3 s
        # calls that fell in the window, within a few samples.
        blocked = overlap(done["flush"], *window)
        flusher = table["OrderService.metrics_flusher"]
        assert blocked >= 0.6 and abs(float(flusher[1]) - blocked) <= 0.1, (blocked, proc.stdout)
        assert all(float(cells[2].rstrip("%")) <= 100.0 for cells in table.values())  # own %

        # The bursts: their share of the sampled window within a factor of 1.5 of the
        # share they took of the same window.
        true_share = overlap(done["burn"], *window) / snap["duration"]
        assert 0.04 < true_share < 0.16, (true_share, done["burn"][-12:], window)
        share = float(table["crunch"][4].rstrip("%")) / 100  # total %: crunch has no callees
        assert true_share / 1.5 <= share <= true_share * 1.5, (share, true_share, proc.stdout)


def test_yappi_wall_clock_on_the_same_program_points_to_the_sampler() -> None:
    with DiagRun(order_service()) as run:
        wait_until(lambda: len(spans(run)["burn"]) >= 3 and spans(run)["flush"], timeout=30, interval=0.1)
        # --force: the yappi installed here keeps every coroutine it sees (test_profile_leftovers.py)
        proc = run_diag("profile", run.url, "--mode", "yappi", "--force", "--seconds", "3", "--format", "text",
                        "--top", "60", timeout=90)
        assert proc.returncode == 0, proc.stderr
        hint = next(line for line in proc.stderr.splitlines() if line.startswith("hint:"))
        assert "--mode sample" in hint and "coroutine that made it" in hint
        assert "rows marked - have none" in proc.stdout
        shares = [cells for line in proc.stdout.splitlines() if len(cells := line.split()) == 8
                  and cells[0].isdigit() and cells[1].replace(".", "").isdigit()]
        assert shares, proc.stdout
        assert all(cells[2] == "-" or float(cells[2].rstrip("%")) <= 100.0 for cells in shares), proc.stdout
        assert any(cells[-1] == "sleep" and cells[2] == "-" for cells in shares), proc.stdout

"""Every command's stdout goes through one buffered writer: few large writes whatever
PYTHONUNBUFFERED says, and a write that fails is one line with the usual exit code."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diag.cli.output import BufferedOutput
from tests.diag.snapshots import snapshot, task


class _Counting(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_small_writes_reach_the_stream_in_large_chunks() -> None:
    stream = _Counting()
    out = BufferedOutput(stream, chunk=1000)  # type: ignore[arg-type]
    for n in range(10_000):
        out.write(f"line {n}\n")
    out.flush()
    assert stream.getvalue() == "".join(f"line {n}\n" for n in range(10_000))
    assert stream.writes <= len(stream.getvalue()) // 1000 + 1


def test_a_failed_write_is_not_tried_again() -> None:
    class Full(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    out = BufferedOutput(Full(), chunk=10)  # type: ignore[arg-type]
    with pytest.raises(OSError):
        out.write("x" * 20)
    out.flush()  # nothing left to write


@pytest.fixture()
def big_dump(tmp_path: Path) -> Path:
    saved = tmp_path / "tasks.json"
    saved.write_text(snapshot(*(task(n) for n in range(1, 3001))).to_json())
    return saved


@pytest.mark.skipif(not Path("/usr/bin/strace").exists(), reason="needs strace")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_large_dump_is_written_in_few_writes_even_unbuffered(big_dump: Path, tmp_path: Path, fmt: str) -> None:
    trace = tmp_path / "trace"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "out", "w") as out:
        proc = subprocess.run(["strace", "-f", "-e", "trace=write", "-o", str(trace), sys.executable, "-m", "diag",
                               "tasks", str(big_dump), "--debug", "2", "--limit", "5000", "--format", fmt],
                              stdout=out, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip("ptrace is not allowed here")
    assert proc.returncode == 0, proc.stderr
    size = (tmp_path / "out").stat().st_size
    assert size > 500_000
    writes = [line for line in trace.read_text().splitlines() if re.search(r"\bwrite\(1,", line)]
    assert 1 <= len(writes) <= size // (1 << 19) + 2, len(writes)


def test_output_to_a_closed_pipe_exits_0_without_a_word(big_dump: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "diag", "tasks", str(big_dump), "--debug", "2", "--limit", "5000",
                             "--format", "text"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(100)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert err == b""

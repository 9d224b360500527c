#!/usr/bin/env bash
# Run the whole test suite in a local virtualenv (created on first use).
# PYTHON=/path/to/python3.12 scripts/test.sh runs it under another interpreter.
#
# With no arguments it runs in two parts: every test not marked `serial` in six
# pytest-xdist workers (whole modules each, so a module's server starts once), then the
# `serial` tests alone, one after another. Those compare shares of CPU or wall time
# (profiles, a forked child's calls against its own baseline): other workers on the
# same cores would change what they measure, not whether diag is right.
# Arguments go to a single pytest run as they are (scripts/test.sh tests/diag/test_top.py -x).
# DIAG_TEST_WORKERS=N sets the workers (0: the whole suite serially, in one run).
source "$(dirname "$0")/venv.sh"
if [ "$#" -gt 0 ]; then
    exec python -m pytest "$@"
fi
workers="${DIAG_TEST_WORKERS:-6}"
if [ "$workers" = "0" ]; then
    exec python -m pytest
fi
status=0
echo "=== tests in $workers workers (all but those marked serial) ==="
python -m pytest -n "$workers" --dist loadfile -m "not serial" || status=1
echo "=== tests marked serial, alone ==="
python -m pytest -m serial || status=1
exit $status

#!/usr/bin/env bash
# Run the whole test suite in a local virtualenv (created on first use).
# PYTHON=/path/to/python3.12 scripts/test.sh runs it under another interpreter.
# In parallel with pytest-xdist: four workers (the tests mostly wait for the servers, programs
# and CLI processes they start, so two cores keep four busy), each taking whole test modules so
# that a module's server starts once. TEST_WORKERS=N sets how many; `scripts/test.sh -n 0` runs
# serially (the last -n given wins). Tests marked `serial` (a profile's accuracy while the
# GIL is contended: it needs the loop thread to get a CPU) run after the rest, alone.
source "$(dirname "$0")/venv.sh"
set +e
python -m pytest -n "${TEST_WORKERS:-4}" --dist loadfile -m "not serial" "$@"
parallel=$?
python -m pytest -n 0 -m serial "$@"
serial=$?
set -e
# 5: the arguments selected no test in that part
if [ "$parallel" -eq 5 ] && [ "$serial" -ne 5 ]; then parallel=0; fi
if [ "$serial" -eq 5 ] && [ "$parallel" -ne 5 ]; then serial=0; fi
if [ "$parallel" -ne 0 ]; then exit "$parallel"; fi
exit "$serial"

#!/usr/bin/env bash
# Run the whole test suite in a local virtualenv (created on first use).
# PYTHON=/path/to/python3.12 scripts/test.sh runs it under another interpreter.
# In parallel with pytest-xdist: four workers (the tests mostly wait for the servers, programs
# and CLI processes they start, so two cores keep four busy), each taking whole test modules so
# that a module's server starts once. TEST_WORKERS=N sets how many; `scripts/test.sh -n 0` runs
# serially (the last -n given wins).
source "$(dirname "$0")/venv.sh"
python -m pytest -n "${TEST_WORKERS:-4}" --dist loadfile "$@"

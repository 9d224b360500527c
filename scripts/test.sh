#!/usr/bin/env bash
# Run the whole test suite in a local virtualenv (created on first use).
# PYTHON=/path/to/python3.12 scripts/test.sh runs it under another interpreter.
source "$(dirname "$0")/venv.sh"
python -m pytest "$@"

#!/usr/bin/env bash
# Run the test suite (scripts/test.sh, arguments passed through) while two CPU hogs keep
# both cores of a two-core machine busy: the tests must wait for conditions, never for
# fixed times, and their deadlines must hold on a loaded machine.
#   scripts/test-under-load.sh tests/diag/test_top.py -k ctrl
# LOAD_SECONDS bounds the hogs (default 1800); LOAD_HOGS sets how many (default 2).
set -u
here="$(cd "$(dirname "$0")" && pwd)"
seconds="${LOAD_SECONDS:-1800}"
hogs=()
for _ in $(seq 1 "${LOAD_HOGS:-2}"); do
    timeout "$seconds" "${PYTHON:-python3}" -c 'while True: pass' &
    hogs+=("$!")
done
stop_hogs() {
    for pid in "${hogs[@]}"; do
        kill "$pid" 2>/dev/null
    done
    wait "${hogs[@]}" 2>/dev/null
}
trap stop_hogs EXIT
trap 'exit 130' INT TERM
"$here/test.sh" "$@"

#!/usr/bin/env bash
# Dogfood for CI: start the target server, drive its fixed endpoints, and let `diag check`
# compare the verdicts with the committed baseline (.ci/diag-check-baseline.json).
# A leak introduced into a fixed twin fails here.  --update-baseline rewrites the baseline.
source "$(dirname "$0")/venv.sh"
set +e
port="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp -t target-server.XXXXXX.log)"
python -m target_server --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do
    python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" \
        "http://127.0.0.1:$port/healthz" 2>/dev/null && break
    sleep 0.1
done
requests=()
for name in semaphore orphan-future deadlock forgotten-task lock blocked-put cache upstream-pool; do
    requests+=(--request "GET /fixed/$name x20")
done
diag check "http://127.0.0.1:$port" "${requests[@]}" --baseline .ci/diag-check-baseline.json \
    --junit "${DIAG_CHECK_JUNIT:-/tmp/diag-check.xml}" "$@"

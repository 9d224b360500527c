#!/usr/bin/env bash
# The main job: start the bundled target server (it carries the diag agent), make it
# leak, and point diag at it.  PORT=8080 by default; the server is stopped at the end.
port="${PORT:-8080}"
# A port someone else holds is said in one line, before anything is installed or started
# (the server would only fail with its log; another demo's server would even answer).
if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
    echo "scripts/demo.sh: PORT=$port is not a port number (1-65535); for example: PORT=8081 scripts/demo.sh" >&2
    exit 2
fi
port_taken() {  # said the same whether the check below or the server finds it taken
    echo "scripts/demo.sh: port $port on 127.0.0.1 is taken; pick another: PORT=$((port == 65535 ? 8081 : port + 1)) scripts/demo.sh" >&2
    exit 1
}
if ! "${PYTHON:-python3}" - "$port" 2>/dev/null <<'PY'; then
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
    s.bind(("127.0.0.1", int(sys.argv[1])))
PY
    port_taken
fi
source "$(dirname "$0")/venv.sh"
url="http://127.0.0.1:$port"
log="$(mktemp -t target-server.XXXXXX.log)"

# The queued requests below wait up to --pool-wait for a slot and --request-timeout in all: both
# longer than the traffic's --hold, so they are still in flight however long diag takes to look.
python -m target_server --host 127.0.0.1 --port "$port" --max-concurrency 4 --pool-wait 90 \
    --request-timeout 120 >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do
    python - "$url" <<'PY' && break
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/healthz", timeout=1)
except Exception:
    sys.exit(1)
PY
    if ! kill -0 $server 2>/dev/null; then
        if grep -qi "address already in use" "$log"; then  # taken since the check above
            port_taken
        fi
        cat "$log" >&2; echo "target server did not start" >&2
        exit 3
    fi
    sleep 0.1
done
echo "target server: $url (log: $log)" >&2
# The traffic process keeps two queued requests in flight while diag looks.
ready="$(mktemp -t demo-ready.XXXXXX)"
: >"$ready"
python scripts/demo_traffic.py "$url" --ready-file "$ready" --hold 60 &
traffic=$!
# venv.sh leaves `set -e` on, which holds in this trap too: a traffic process that has already
# ended (its kill fails) must not turn the demo's exit status into 1.
trap 'kill $traffic 2>/dev/null || true; kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log" "$ready"' EXIT
for _ in $(seq 600); do
    [ -s "$ready" ] && break
    kill -0 $traffic 2>/dev/null || break
    sleep 0.1
done
sleep 1.5   # let the wait clock see the stuck tasks

show() {  # the command line, exactly as it is run, then its output
    echo
    echo "\$ $*" >&2
    "$@"
}
show diag tasks "$url"
show diag tasks "$url" --debug 2 --filter deadlock_worker --format text
show diag leaks "$url" --min-wait 1 || echo "(diag leaks exits 1 when it finds leaks: usable as a CI gate)" >&2

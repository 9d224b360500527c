#!/usr/bin/env bash
# The main job: start the bundled target server (it carries the diag agent), make it
# leak, and point diag at it.  PORT=8080 by default; the server is stopped at the end.
source "$(dirname "$0")/venv.sh"
port="${PORT:-8080}"
url="http://127.0.0.1:$port"
log="$(mktemp -t target-server.XXXXXX.log)"

python -m target_server --host 127.0.0.1 --port "$port" --max-concurrency 4 --pool-wait 30 >"$log" 2>&1 &
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
    kill -0 $server 2>/dev/null || { cat "$log"; echo "target server did not start" >&2; exit 3; }
    sleep 0.1
done
echo "target server: $url (log: $log)" >&2
# The traffic process keeps two queued requests in flight while diag looks.
ready="$(mktemp -t demo-ready.XXXXXX)"
: >"$ready"
python scripts/demo_traffic.py "$url" --ready-file "$ready" --hold 60 &
traffic=$!
trap 'kill $traffic 2>/dev/null; kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log" "$ready"' EXIT
for _ in $(seq 600); do
    [ -s "$ready" ] && break
    kill -0 $traffic 2>/dev/null || break
    sleep 0.1
done
sleep 1.5   # let the wait clock see the stuck tasks

echo; echo "\$ diag tasks $url" >&2
diag tasks "$url"
echo; echo "\$ diag tasks $url --debug 2 --filter deadlock_worker --format text" >&2
diag tasks "$url" --debug 2 --filter deadlock_worker --format text
echo; echo "\$ diag leaks $url" >&2
diag leaks "$url" --min-wait 1 || echo "(diag leaks exits 1 when it finds leaks: usable as a CI gate)" >&2

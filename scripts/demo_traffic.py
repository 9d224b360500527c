"""Make the target server leak a little of everything, so ``diag`` has something to show.

python scripts/demo_traffic.py http://127.0.0.1:8080
"""

from __future__ import annotations

import sys
import threading
import urllib.error
import urllib.request

LEAKS = {  # endpoint -> how many times to hit it
    "/leak/semaphore": 4,
    "/leak/blocked-put": 5,
    "/leak/forgotten-task": 3,
    "/leak/orphan-future": 2,
    "/leak/deadlock": 1,
    "/leak/lock": 1,
    "/leak/silent-peer": 2,
    "/leak/cache": 20,
}


def hit(url: str, timeout: float = 10.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def main(base: str) -> None:
    for path, times in LEAKS.items():
        codes = [hit(base + path) for _ in range(times)]
        print(f"{path:24} x{times}: HTTP {sorted(set(codes))}", file=sys.stderr)
    # Requests that now queue behind the leaked lock and permits (answered 503 after --pool-wait).
    for path in ("/fixed/lock", "/work/slow?ms=100"):
        threading.Thread(target=hit, args=(base + path,), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080")

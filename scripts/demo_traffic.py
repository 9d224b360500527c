"""Make the target server leak a little of everything, so ``diag`` has something to show.

python scripts/demo_traffic.py http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import sys
import time
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


def main(base: str, ready_file: str | None = None, hold: float = 0.0) -> None:
    for path, times in LEAKS.items():
        codes = [hit(base + path) for _ in range(times)]
        print(f"{path:24} x{times}: HTTP {sorted(set(codes))}", file=sys.stderr)
    # Requests that now queue behind the leaked lock and permits (answered 503 after
    # --pool-wait). They stay in flight only while this process lives: --hold keeps it up.
    waiting = [threading.Thread(target=hit, args=(base + path, hold + 10), daemon=True)
               for path in ("/fixed/lock", "/work/slow?ms=100")]
    for thread in waiting:
        thread.start()
    time.sleep(0.5)  # both requests reach the server
    if ready_file:
        with open(ready_file, "w") as f:
            f.write("ready\n")
    for thread in waiting:
        thread.join(hold)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Make the target server leak, for the demo.")
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:8080")
    parser.add_argument("--ready-file", help="written once the leaks are made and the queued requests sent")
    parser.add_argument("--hold", type=float, default=0.0,
                        help="seconds to keep the queued requests in flight before exiting")
    args = parser.parse_args()
    main(args.url, args.ready_file, args.hold)

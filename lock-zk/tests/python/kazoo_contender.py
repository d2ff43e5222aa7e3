"""A kazoo Lock contender driven over stdin, for lock-zk's interop check.

Usage: python kazoo_contender.py CONNECT_STRING LOCK_PATH [EXTRA_LOCK_PATTERN,...]
(the patterns go to kazoo's `extra_lock_patterns`, e.g. "-lock-" for Curator's layout)
Commands, one per line: "acquire MILLIS" (prints HELD or BUSY), "release" (prints
RELEASED), "quit".
"""

import sys

from kazoo.client import KazooClient
from kazoo.exceptions import LockTimeout


def main() -> None:
    zk = KazooClient(hosts=sys.argv[1])
    zk.start(timeout=30)
    patterns = [p for p in (sys.argv[3] if len(sys.argv) > 3 else "").split(",") if p]
    lock = zk.Lock(sys.argv[2], "kazoo-contender", extra_lock_patterns=patterns)
    print("READY", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "acquire":
            try:
                got = lock.acquire(blocking=True, timeout=int(cmd[1]) / 1000.0)
            except LockTimeout:
                got = False
            print("HELD" if got else "BUSY", flush=True)
        elif cmd[0] == "release":
            lock.release()
            print("RELEASED", flush=True)
        elif cmd[0] == "quit":
            break
    zk.stop()


if __name__ == "__main__":
    main()

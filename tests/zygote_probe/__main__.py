"""Run in a replica forked from a zygote (tests/test_zygote.py): report what it inherited.

    python -m tests.zygote_probe REPORT_PATH [EXIT_CODE]

Writes one JSON document (pid, parent, session, threads, open descriptors, random draws, the
environment) to REPORT_PATH, then waits for SIGTERM, or exits with EXIT_CODE when given.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path


def _descriptors() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return out


def main() -> None:
    import numpy

    report = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "threads": len(os.listdir("/proc/self/task")),
        "fds": _descriptors(),
        "numpy": numpy.random.random(),
        "random": random.random(),
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "argv": sys.argv,
        "main": __name__,
        "cmdline": Path("/proc/self/cmdline").read_bytes().rstrip(b"\0").decode().split("\0"),
        "preloaded_numpy": "numpy" in sys.modules,
    }
    path = sys.argv[1]
    with open(path + ".tmp", "w") as out:
        json.dump(report, out)
    os.rename(path + ".tmp", path)
    print(f"probe {os.getpid()} reported", flush=True)
    if len(sys.argv) > 2:
        sys.exit(int(sys.argv[2]))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(1)


main()

"""The zygote process: preload an environment's modules, then fork replicas on request.

Run by the supervisor in the environment's interpreter::

    .venvs/train/bin/python -m localdev.zygote.server --socket PATH --preload a,b,c

Protocol, one request per connection on the Unix socket, each a JSON line answered by one:

- ``{"ping": true}`` → ``{"ok": true, "pid": …, "threads": 1}``
- ``{"argv": [python, "-m", module, …], "env": {…}, "cwd": …, "log": path}`` →
  ``{"pid": <the replica's pid>}`` or ``{"error": "…"}``

The replica is a grandchild: the zygote forks a child that forks the replica and exits at once,
so the replica is handed to the nearest subreaper, the supervisor (see ``__init__``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import random
import runpy
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

MAX_REQUEST_BYTES = 4 * 1024 * 1024


def thread_count() -> int:
    """Threads of this process as the kernel sees them (native ones included)."""
    return len(os.listdir("/proc/self/task"))


def set_cmdline(argv: list[str]) -> bool:
    """Show ``argv`` as this process's command line (``ps``, ``/proc/PID/cmdline``): a forked
    replica would otherwise read as its zygote. Writes over the original argument strings
    (``arg_start``..``arg_end`` in ``/proc/self/stat``, as the setproctitle package does);
    the zygote's own command line, which names every preloaded module, leaves room."""
    fields = Path("/proc/self/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # stat fields 48 and 49
    data = "\0".join(argv).encode()[: end - start - 1]
    if end <= start:
        return False
    ctypes.memset(start, 0, end - start)
    ctypes.memmove(start, data, len(data))
    return True


def preload(modules: list[str]) -> tuple[list[str], list[str]]:
    """Import ``modules``; return (imported, missing). Missing ones are not this interpreter's."""
    done, missing = [], []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - not this interpreter's (or not a module): the replica's own
            missing.append(name)
        else:
            done.append(name)
    return done, missing


def _read_request(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
    return json.loads(data)


def _reply(conn: socket.socket, doc: dict[str, Any]) -> None:
    conn.sendall(json.dumps(doc).encode() + b"\n")


def _become_replica(request: dict[str, Any], listener: socket.socket, conn: socket.socket) -> NoReturn:
    """In the forked replica: drop everything inherited, then run its module as ``__main__``."""
    code = 1
    try:
        os.setsid()  # its own session and process group: the supervisor signals the group
        for sock in (listener, conn):
            os.close(sock.detach())  # the objects no longer own a descriptor to close later
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the zygote's and its libraries' files
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        random.seed()  # also done by Python at fork; explicit, as NumPy's is not
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()
        argv = request["argv"]
        if len(argv) < 3 or argv[1] != "-m":
            raise ValueError(f"a zygote runs `python -m module …`, not {argv}")
        set_cmdline(argv)
        sys.argv = [argv[2], *argv[3:]]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported in the replica's log, then its exit code
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def fork_replica(request: dict[str, Any], listener: socket.socket, conn: socket.socket) -> int:
    """Fork the replica (as a grandchild, handed to the subreaper); return its pid."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:  # the short-lived child: fork the replica, say its pid, exit
        os.close(read_end)
        replica = os.fork()
        if replica == 0:
            os.close(write_end)
            _become_replica(request, listener, conn)
        os.write(write_end, str(replica).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        pid_text = pipe.read()
    os.waitpid(middle, 0)
    if not pid_text:
        raise OSError("the forked child died before forking the replica")
    return int(pid_text)


def serve(listener: socket.socket) -> NoReturn:
    forks = 0
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                request = _read_request(conn)
                if request.get("ping"):
                    _reply(conn, {"ok": True, "pid": os.getpid(), "threads": thread_count(), "forks": forks})
                    continue
                threads = thread_count()
                if threads != 1:  # a fork now could copy a lock another thread holds
                    _reply(conn, {"error": f"zygote has {threads} threads; it forks only with one"})
                    print(
                        f"zygote: {threads} threads, refusing to fork; exiting", file=sys.stderr, flush=True
                    )
                    os._exit(3)
                started = time.perf_counter()
                pid = fork_replica(request, listener, conn)
                forks += 1
                _reply(conn, {"pid": pid, "fork_ms": round((time.perf_counter() - started) * 1000, 2)})
            except (OSError, ValueError, KeyError) as exc:
                with contextlib.suppress(OSError):
                    _reply(conn, {"error": f"{type(exc).__name__}: {exc}"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="faaspipe zygote: preload, then fork replicas")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--preload", default="", help="comma-separated modules to import first")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    done, missing = preload([m for m in args.preload.split(",") if m])
    print(
        f"zygote: preloaded {len(done)} modules in {time.perf_counter() - started:.2f}s "
        f"({len(missing)} not in this environment), {thread_count()} thread(s)",
        flush=True,
    )
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.socket + ".tmp")
    listener.listen(64)
    os.rename(args.socket + ".tmp", args.socket)  # the socket appears only once it listens
    serve(listener)


if __name__ == "__main__":
    main()

"""The stable local URL of every function: ``http://127.0.0.1:<gateway>/<function>/...``.

Forwards each request to a ready replica (round robin). With no ready replica it holds the
request for a bounded time instead of failing (the seed of the scale-from-zero activator).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import urllib3

log = logging.getLogger("faaspipe.gateway")

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
    "content-length",
}
Resolver = Callable[[str], "list[str] | None"]  # function → ready replica base URLs, None = unknown


class Gateway:
    def __init__(
        self, port: int, resolve: Resolver, *, hold_s: float = 60.0, timeout_s: float = 900.0
    ) -> None:
        self.port = port
        self.resolve = resolve
        self.hold_s = hold_s
        self.http = urllib3.PoolManager(
            maxsize=64, retries=False, timeout=urllib3.Timeout(connect=2.0, read=timeout_s)
        )
        self._counter = itertools.count()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self.server.daemon_threads = True

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="gateway", daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def pick(self, function: str) -> list[str] | None:
        """Ready replicas, rotated round-robin; waits up to ``hold_s`` for one to be ready."""
        deadline = time.monotonic() + self.hold_s
        while True:
            replicas = self.resolve(function)
            if replicas is None:
                return None
            if replicas:
                start = next(self._counter) % len(replicas)
                return replicas[start:] + replicas[:start]
            if time.monotonic() >= deadline:
                return []
            time.sleep(0.05)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug(fmt, *args)

            def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self._reply(status, body, [("Content-Type", "application/json")])

            def _forward(self) -> None:
                function, _, rest = self.path.lstrip("/").partition("/")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                replicas = gateway.pick(function)
                if replicas is None:
                    return self._error(404, f"no function named {function!r}")
                if not replicas:
                    return self._error(503, f"function {function!r} has no ready replica")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                last_error = ""
                for base in replicas[:2]:  # a replica that just died: try one other
                    try:
                        resp = gateway.http.request(
                            self.command, f"{base}/{rest}", body=body, headers=headers
                        )
                    except urllib3.exceptions.NewConnectionError as exc:
                        last_error = str(exc)
                        continue
                    except urllib3.exceptions.HTTPError as exc:
                        return self._error(502, f"replica of {function!r} failed: {exc}")
                    return self._reply(resp.status, resp.data, list(resp.headers.items()))
                return self._error(502, f"no replica of {function!r} reachable: {last_error}")

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward  # noqa: N815

        return Handler

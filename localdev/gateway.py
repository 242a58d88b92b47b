"""The stable local URL of every function: ``http://127.0.0.1:<gateway>/<function>/...``.

Forwards each request to a ready replica (round robin) and acts as Knative's activator: with
no ready replica it signals demand (the supervisor starts one) and holds the request (bounded
queue, bounded wait) until a replica reports ready — never a "not ready" error. It also
measures each function's request concurrency for the concurrency autoscaler.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
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
Demand = Callable[[str], None]  # called when a request finds no ready replica


class Concurrency:
    """In-flight requests of one function, sampled into the KPA's stable and panic windows
    (Knative's defaults 60 s and 6 s; per function from the topology's ``stableWindow``)."""

    def __init__(self, stable_s: float = 60.0, panic_s: float = 6.0) -> None:
        self.in_flight = 0
        self.held = 0
        self.last_request = time.monotonic()
        self.stable_s, self.panic_s = stable_s, panic_s
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.lock = threading.Lock()

    def sample(self, now: float) -> None:
        with self.lock:
            self.samples.append((now, self.in_flight + self.held))
            while self.samples and now - self.samples[0][0] > self.stable_s:
                self.samples.popleft()

    def averages(self, now: float) -> tuple[float, float]:
        with self.lock:
            stable = [c for _, c in self.samples]
            panic = [c for t, c in self.samples if now - t <= self.panic_s]
        return (sum(stable) / len(stable) if stable else 0.0, sum(panic) / len(panic) if panic else 0.0)

    def idle_seconds(self, now: float) -> float:
        with self.lock:
            return 0.0 if self.in_flight or self.held else now - self.last_request


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default backlog of 5 resets connections under a burst


class Gateway:
    def __init__(
        self,
        port: int,
        resolve: Resolver,
        *,
        demand: Demand | None = None,
        hold_s: float = 120.0,
        max_held: int = 256,
        timeout_s: float = 900.0,
        windows: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        """``windows``: function → (stable, panic) KPA window in seconds; others get the defaults."""
        self.port = port
        self.resolve = resolve
        self.demand = demand
        self.hold_s = hold_s
        self.max_held = max_held
        self.stats: dict[str, Concurrency] = collections.defaultdict(Concurrency)
        for function, (stable_s, panic_s) in (windows or {}).items():
            self.stats[function] = Concurrency(stable_s, panic_s)
        self.cold_starts: list[tuple[str, float]] = []  # (function, seconds a request was held)
        self.http = urllib3.PoolManager(
            maxsize=64, retries=False, timeout=urllib3.Timeout(connect=2.0, read=timeout_s)
        )
        self._counter = itertools.count()
        self.server = _Server(("127.0.0.1", port), self._handler_class())
        self.server.daemon_threads = True

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="gateway", daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sample(self) -> None:
        now = time.monotonic()
        for stats in list(self.stats.values()):
            stats.sample(now)

    def pick(self, function: str) -> list[str] | None:
        """Ready replicas, rotated round-robin; holds up to ``hold_s`` for one to be ready."""
        replicas = self.resolve(function)
        if replicas is None:
            return None
        if not replicas:
            replicas = self._hold(function)
        if not replicas:
            return []
        start = next(self._counter) % len(replicas)
        return replicas[start:] + replicas[:start]

    def _hold(self, function: str) -> list[str]:
        stats = self.stats[function]
        with stats.lock:
            if stats.held >= self.max_held:
                return []
            stats.held += 1
        started = time.monotonic()
        try:
            if self.demand is not None:
                self.demand(function)
            while time.monotonic() - started < self.hold_s:
                replicas = self.resolve(function) or []
                if replicas:
                    self.cold_starts.append((function, time.monotonic() - started))
                    log.info(
                        "%s: request held %.2fs until a replica was ready",
                        function,
                        time.monotonic() - started,
                    )
                    return replicas
                time.sleep(0.02)
            return []
        finally:
            with stats.lock:
                stats.held -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: Nagle + delayed ACK = 44 ms

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
                    return self._error(
                        503,
                        f"function {function!r} has no ready replica after "
                        f"{gateway.hold_s:.0f}s (or too many requests held)",
                    )
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                stats = gateway.stats[function]
                with stats.lock:
                    stats.in_flight += 1
                    stats.last_request = time.monotonic()
                try:
                    return self._send_to(function, rest, body, headers, replicas)
                finally:
                    with stats.lock:
                        stats.in_flight -= 1
                        stats.last_request = time.monotonic()

            def _send_to(
                self,
                function: str,
                rest: str,
                body: bytes | None,
                headers: dict[str, str],
                replicas: list[str],
            ) -> None:
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

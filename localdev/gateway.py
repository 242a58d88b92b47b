"""The stable local URL of every function: ``http://127.0.0.1:<gateway>/<function>/...``.

An aiohttp reverse proxy on an event loop. It forwards each request to a ready replica (round
robin, keep-alive pool per replica) and acts as Knative's activator: with no ready replica it
signals demand (the supervisor starts one) and holds the request (bounded queue, bounded wait)
until a replica reports ready — never a "not ready" error. It also measures each function's
request concurrency for the concurrency autoscaler.

Headers follow RFC 9110 §7.6.1: hop-by-hop fields (``Connection`` and every field it names,
``Keep-Alive``, ``TE``, ``Transfer-Encoding``, ``Upgrade``, ``Proxy-*``) are not forwarded;
the replica's ``Date`` and ``Server`` are kept, once. Bodies up to ``BUFFER_LIMIT`` are
buffered (so a request can be retried on another replica when the first refuses the
connection); larger ones stream through in both directions.

With auth on (``verifier`` given), a call to a function needs ``Authorization: Bearer``: no or
an invalid token is ``401`` and nothing reaches a replica. The gateway authenticates; it does
not authorise per function (Knative Serving has no per-caller policy either). It forwards the
verified subject in ``X-Faaspipe-Subject`` (any value the client sent is dropped first, so a
function may trust it) and drops the token itself: a function never sees a caller's credential.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from localdev.aio import LoopThread, Site
from shared.auth import AuthError
from shared.auth.bearer import SUBJECT_HEADER, authenticate
from shared.auth.tokens import TokenVerifier

log = logging.getLogger("faaspipe.gateway")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
BUFFER_LIMIT = 1024 * 1024
Resolver = Callable[[str], "list[str] | None"]  # function → ready replica base URLs, None = unknown
Demand = Callable[[str], None]  # called when a request finds no ready replica


def forwarded_headers(headers: Mapping[str, str], *, drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """``headers`` less the hop-by-hop fields (also those named in ``Connection``) and ``drop``."""
    named = {token.strip().lower() for value in _all(headers, "connection") for token in value.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower in drop:
            continue
        out.add(name, value)
    return out


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    return [value for key, value in headers.items() if key.lower() == name]


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
        verifier: TokenVerifier | None = None,
    ) -> None:
        """``windows``: function → (stable, panic) KPA window in seconds; others get the defaults.
        ``verifier``: bearer tokens required (auth on); None: no authentication."""
        self.port = port
        self.verifier = verifier
        self.resolve = resolve
        self.demand = demand
        self.hold_s = hold_s
        self.max_held = max_held
        self.timeout_s = timeout_s
        self.stats: dict[str, Concurrency] = collections.defaultdict(Concurrency)
        for function, (stable_s, panic_s) in (windows or {}).items():
            self.stats[function] = Concurrency(stable_s, panic_s)
        self.cold_starts: list[tuple[str, float]] = []  # (function, seconds a request was held)
        self._counter = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._loop: LoopThread | None = None
        self.app = web.Application(client_max_size=0)
        self.app.router.add_route("*", "/{function}/{rest:.*}", self._forward)
        self.app.router.add_route("*", "/{function}", self._forward)
        self.app.on_startup.append(self._open_session)
        self.app.on_cleanup.append(self._close_session)

    # --- lifecycle ---------------------------------------------------------------
    def site(self) -> Site:
        return (self.app, "127.0.0.1", self.port)

    def start(self, extra_sites: list[Site] | None = None) -> None:
        """Serve on a background event loop (with ``extra_sites`` on the same loop)."""
        self._loop = LoopThread("gateway")
        self._loop.start([self.site(), *(extra_sites or [])])

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()

    async def _open_session(self, _app: web.Application) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=15, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=self.timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )

    async def _close_session(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    # --- the KPA's samples ---------------------------------------------------------
    def sample(self) -> None:
        now = time.monotonic()
        for stats in list(self.stats.values()):
            stats.sample(now)

    # --- routing -------------------------------------------------------------------
    async def pick(self, function: str) -> list[str] | None:
        """Ready replicas, rotated round-robin; holds up to ``hold_s`` for one to be ready."""
        replicas = self.resolve(function)
        if replicas is None:
            return None
        if not replicas:
            replicas = await self._hold(function)
        if not replicas:
            return []
        start = next(self._counter) % len(replicas)
        return replicas[start:] + replicas[:start]

    async def _hold(self, function: str) -> list[str]:
        stats = self.stats[function]
        with stats.lock:
            if stats.held >= self.max_held:
                return []
            stats.held += 1
        started = time.monotonic()
        try:
            if self.demand is not None:  # starts a process: not on the event loop
                await asyncio.get_running_loop().run_in_executor(None, self.demand, function)
            while time.monotonic() - started < self.hold_s:
                replicas = self.resolve(function) or []
                if replicas:
                    held = time.monotonic() - started
                    self.cold_starts.append((function, held))
                    log.info("%s: request held %.2fs until a replica was ready", function, held)
                    return replicas
                await asyncio.sleep(0.02)
            return []
        finally:
            with stats.lock:
                stats.held -= 1

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        function = request.match_info["function"]
        rest = request.match_info.get("rest", "")
        subject = None
        if self.verifier is not None:
            try:
                subject = authenticate(request.headers, self.verifier).sub
            except AuthError as exc:
                return web.json_response(
                    {"error": str(exc)}, status=exc.status, headers={"WWW-Authenticate": "Bearer"}
                )
        replicas = await self.pick(function)
        if replicas is None:
            return web.json_response({"error": f"no function named {function!r}"}, status=404)
        if not replicas:
            return web.json_response(
                {
                    "error": f"function {function!r} has no ready replica after "
                    f"{self.hold_s:.0f}s (or too many requests held)"
                },
                status=503,
            )
        stats = self.stats[function]
        with stats.lock:
            stats.in_flight += 1
            stats.last_request = time.monotonic()
        try:
            return await self._send_to(request, function, rest, replicas, subject)
        finally:
            with stats.lock:
                stats.in_flight -= 1
                stats.last_request = time.monotonic()

    async def _send_to(
        self, request: web.Request, function: str, rest: str, replicas: list[str], subject: str | None = None
    ) -> web.StreamResponse:
        assert self._session is not None
        drop = {"host", "content-length", SUBJECT_HEADER.lower()}
        if self.verifier is not None:
            drop.add("authorization")
        headers = forwarded_headers(request.headers, drop=frozenset(drop))
        if subject is not None:
            headers[SUBJECT_HEADER] = subject
        length = request.content_length
        streamed = request.body_exists and (length is None or length > BUFFER_LIMIT)
        body: object = request.content.iter_chunked(64 * 1024) if streamed else await request.read()
        if streamed:
            headers.pop("Content-Length", None)
        path = rest + (f"?{request.query_string}" if request.query_string else "")
        last_error = ""
        for base in replicas[: 1 if streamed else 2]:  # a replica that just died: try one other
            try:
                upstream = await self._session.request(
                    request.method, f"{base}/{path}", data=body or None, headers=headers
                )
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
                last_error = str(exc) or type(exc).__name__
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                return web.json_response(
                    {"error": f"replica of {function!r} failed: {type(exc).__name__}: {exc}"}, status=502
                )
            try:
                return await self._relay(request, upstream)
            finally:
                upstream.release()
        return web.json_response({"error": f"no replica of {function!r} reachable: {last_error}"}, status=502)

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = forwarded_headers(upstream.headers, drop=frozenset({"content-length"}))
        length = upstream.content_length
        if length is not None and length <= BUFFER_LIMIT:
            body = await upstream.read()
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response

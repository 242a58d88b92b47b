"""The gateway/activator on its event loop, against real upstream servers on loopback.

RFC 9110 §7.6.1 (hop-by-hop fields), one ``Date`` and one ``Server`` per response, streamed
bodies both ways, the activator's hold-until-ready, retry on a refused connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import urllib3
from aiohttp import web

from localdev.aio import LoopThread
from localdev.gateway import Gateway, forwarded_headers
from localdev.processes import free_port

HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=20))


@pytest.mark.parametrize(
    ("case", "headers", "kept"),
    [
        (
            "end-to-end fields pass",
            {"Content-Type": "a/b", "X-Request-Id": "7"},
            {"content-type", "x-request-id"},
        ),
        (
            "hop-by-hop fields stop (RFC 9110 7.6.1)",
            {
                "Connection": "keep-alive",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Upgrade": "h2c",
                "Transfer-Encoding": "chunked",
                "Proxy-Connection": "x",
                "Proxy-Authorization": "y",
            },
            set(),
        ),
        (
            "fields named in Connection stop too",
            {"Connection": "close, X-Secret", "X-Secret": "1", "X-Ok": "1"},
            {"x-ok"},
        ),
    ],
)
def test_forwarded_headers(case: str, headers: dict[str, str], kept: set[str]) -> None:
    assert {k.lower() for k in forwarded_headers(headers)} == kept, case


class Upstream:
    """A replica stand-in: echoes, streams, and reports what it was sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[dict[str, str]] = []
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/echo", self.echo)
        app.router.add_get("/big", self.big)
        app.router.add_get("/hello", self.hello)
        self.loop = LoopThread("upstream")
        self.loop.start([(app, "127.0.0.1", self.port)])

    async def echo(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        body = await request.read()
        return web.Response(body=body, headers={"X-Length": str(len(body))})

    async def big(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(40):
            await response.write(b"x" * 65536)
        await response.write_eof()
        return response

    async def hello(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        return web.json_response({"hello": "world"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.loop.stop()


@pytest.fixture
def gateway(upstream: Upstream) -> Iterator[tuple[Gateway, dict[str, list[str]], list[str]]]:
    routes: dict[str, list[str]] = {"fn": [f"http://127.0.0.1:{upstream.port}"], "cold": []}
    demanded: list[str] = []

    def demand(function: str) -> None:
        demanded.append(function)

        def become_ready() -> None:
            time.sleep(0.5)
            routes["cold"] = [f"http://127.0.0.1:{upstream.port}"]

        threading.Thread(target=become_ready, daemon=True).start()

    gw = Gateway(free_port(), routes.get, demand=demand, hold_s=10)
    gw.start()
    yield gw, routes, demanded
    gw.stop()


def url(gw: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gw.port}/{path}"


def test_one_date_and_one_server_header(gateway) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = gateway
    resp = HTTP.request("GET", url(gw, "fn/hello"))
    assert resp.status == 200 and resp.json() == {"hello": "world"}
    names = [name.lower() for name in resp.headers]
    assert names.count("date") == 1 and names.count("server") == 1, resp.headers


def test_hop_by_hop_request_fields_are_not_forwarded(gateway, upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = gateway
    resp = HTTP.request(
        "POST",
        url(gw, "fn/echo"),
        body=b"payload",
        headers={"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "X-End": "kept", "TE": "trailers"},
    )
    assert resp.status == 200 and resp.data == b"payload"
    seen = {k.lower(): v for k, v in upstream.seen[-1].items()}
    assert seen.get("x-end") == "kept"
    assert "x-hop" not in seen and "te" not in seen


def test_large_bodies_stream_both_ways(gateway) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = gateway
    body = b"y" * (3 * 1024 * 1024)  # over the buffering limit: streamed upstream
    resp = HTTP.request("POST", url(gw, "fn/echo"), body=body)
    assert resp.status == 200 and resp.headers["X-Length"] == str(len(body)) and resp.data == body
    resp = HTTP.request("GET", url(gw, "fn/big"))  # chunked from upstream, relayed as it comes
    assert resp.status == 200 and len(resp.data) == 40 * 65536


def test_unknown_function_is_404(gateway) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = gateway
    resp = HTTP.request("GET", url(gw, "nope/x"))
    assert resp.status == 404 and "nope" in resp.json()["error"]


def test_the_activator_holds_requests_until_a_replica_is_ready(gateway) -> None:  # type: ignore[no-untyped-def]
    gw, _, demanded = gateway
    resp = HTTP.request("GET", url(gw, "cold/hello"))
    assert resp.status == 200 and resp.json() == {"hello": "world"}
    assert demanded == ["cold"] and [f for f, _ in gw.cold_starts] == ["cold"]


def test_a_refused_connection_is_retried_on_another_replica(gateway, upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    gw, routes, _ = gateway
    routes["fn"] = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{upstream.port}"]
    for _ in range(4):  # whichever replica round robin starts with
        resp = HTTP.request("GET", url(gw, "fn/hello"))
        assert resp.status == 200

"""Serving aiohttp applications on a uvloop event loop, in the main thread or a background one.

The platform's own HTTP endpoints (gateway/activator, broker ingress, dispatcher status, the
supervisor's control API) are aiohttp servers: one event loop, keep-alive, no thread per
connection. Request bodies are passed on as sent (no transparent decompression).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence

import uvloop
from aiohttp import web

log = logging.getLogger("faaspipe.aio")

Site = tuple[web.Application, str, int]  # (app, host, port)


async def start_sites(sites: Sequence[Site]) -> list[web.AppRunner]:
    runners = []
    for app, host, port in sites:
        runner = web.AppRunner(app, access_log=None, auto_decompress=False, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=2048, reuse_address=True).start()
        runners.append(runner)
    return runners


def run_forever(
    sites: Sequence[Site],
    *,
    on_start: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve ``sites`` in this (main) thread until SIGTERM/SIGINT; then run ``on_stop``."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if on_start is not None:
            await on_start()
        runners = await start_sites(sites)
        try:
            await stop.wait()
        finally:
            for runner in runners:  # stop accepting; in-flight requests finish (shutdown_timeout)
                await runner.cleanup()
            if on_stop is not None:
                await on_stop()

    uvloop.run(main())


class LoopThread:
    """A uvloop event loop in a daemon thread serving ``sites`` (the supervisor's gateway and
    control API live beside its other threads)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._runners: list[web.AppRunner] = []

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self, sites: Sequence[Site]) -> None:
        self._thread.start()
        self._runners = asyncio.run_coroutine_threadsafe(start_sites(sites), self.loop).result(30)

    def call(self, coro: Awaitable[object], timeout: float = 30.0) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in self._runners:
                await runner.cleanup()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

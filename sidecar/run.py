"""A sidecar process put together: the service object in its role, and its HTTP server, until SIGINT or SIGTERM."""
from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from sidecar.config import Settings
from sidecar.http.app import make_app
from sidecar.service import Sidecar, SidecarError

log = logging.getLogger(__name__)


async def start_http(sc: Sidecar) -> web.AppRunner:
    """Listen on the configured host and port: the whole API, or an ingest worker's health, status and metrics."""
    s = sc.settings
    # max_line_size: a query at its documented limits, in 4-byte characters percent-encoded (12 bytes each), is
    # about 21 kB; aiohttp's default (8 kB) would refuse it before the API could answer
    runner = web.AppRunner(make_app(sc, only_service=sc.role == "worker"), access_log=None, max_line_size=65536)
    await runner.setup()
    try:
        await web.TCPSite(runner, s.host, s.port).start()
    except OSError as e:
        await runner.cleanup()
        raise SidecarError(f"cannot listen on {s.host}:{s.port}: {e.strerror}") from None
    log.info("serving on http://%s:%d", s.host, s.port)
    return runner


async def run_forever(settings: Settings, role: str = "serve", watch: bool | None = None) -> None:
    sc = Sidecar(settings, role)
    runner = None
    try:
        await sc.start(watch=watch)
        runner = await start_http(sc)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        log.info("stopping")
        if runner is not None:
            await runner.cleanup()  # no new requests while the rest stops
        await sc.close()

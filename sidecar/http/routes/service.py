"""The service itself: liveness, status and Prometheus metrics."""
from __future__ import annotations

from aiohttp import web

import sidecar
from schemas.api import Health, Status
from sidecar import metrics
from sidecar.http.common import json_response, sidecar_of
from sidecar.http.openapi import documented

routes = web.RouteTableDef()


@routes.get("/health")
@documented("Liveness", response=Health)
async def health(request: web.Request) -> web.Response:
    return json_response(Health(status="ok", version=sidecar.__version__))


@routes.get("/api/status")
@documented("Library counts, failures, bus lag and ingest progress", response=Status)
async def status(request: web.Request) -> web.Response:
    sc = sidecar_of(request)
    counts = sc.catalog.counts()
    stats = sc.worker.stats
    return json_response(
        Status(
            **counts,
            embedders_ready=list(sc.embedders.ready),
            embedders_unavailable=sc.embedders.unavailable,
            bus=sc.settings.bus,
            bus_lag=await sc.lag(),
            ingest={
                "processed": stats.processed, "embedded": stats.embedded, "skipped": stats.skipped,
                "failed": stats.failed, "current": stats.current, "last_event_at": stats.last_event_at,
                "idle": await sc.is_idle(),
            },
            dead_letters=len(await sc.bus.dead_letters(limit=1000)),
        )
    )


@routes.get("/metrics")
@documented("Prometheus metrics", response={"text/plain": str})
async def prometheus_metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    metrics.QUEUE_DEPTH.set(await sidecar_of(request).lag())
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

"""The re-embed over HTTP: start, progress (JSON or server-sent events), cancel. One run at a time.
It is a replay (sidecar/pipeline/replay.py) with models forced."""
from __future__ import annotations

import asyncio
import json

from aiohttp import web

from schemas.batch import BatchProgress, BatchStart
from sidecar.errors import NotFound
from sidecar.http.common import json_response, parse_body, sidecar_of
from sidecar.http.openapi import documented

routes = web.RouteTableDef()
SSE_INTERVAL_S = 1.0


@routes.post("/api/batch/start")
@documented("Start a re-embed of the library", body=BatchStart, response=BatchProgress, status=202, errors=(409,))
async def start(request: web.Request) -> web.Response:
    req = await parse_body(request, BatchStart)
    sc = sidecar_of(request)
    for m in req.models:
        sc.embedders.require(m, "models")
    run = await sc.worker.replays.request(req.models, req.scope, source="api")
    return json_response(BatchProgress(**run.progress()), status=202)


@routes.get("/api/batch/progress")
@documented(
    "The running or last re-embed's progress", response={"application/json": BatchProgress, "text/event-stream": str}, errors=(404,)
)
async def progress(request: web.Request) -> web.StreamResponse:
    """The running (or last) re-embed. With `Accept: text/event-stream`, one event a second until it ends."""
    run = sidecar_of(request).worker.replays.latest()
    if run is None:
        raise NotFound("no re-embed has run since the sidecar started")
    if "text/event-stream" not in request.headers.get("Accept", ""):
        return json_response(BatchProgress(**run.progress()))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    while True:
        state = run.progress()
        await resp.write(f"data: {json.dumps(state)}\n\n".encode())
        if state["status"] not in ("running", "cancelling"):
            break
        await asyncio.sleep(SSE_INTERVAL_S)
    return resp


@routes.post("/api/batch/cancel")
@documented("Cancel the running re-embed", response=BatchProgress, errors=(409,))
async def cancel(request: web.Request) -> web.Response:
    run = await sidecar_of(request).worker.replays.cancel()
    return json_response(BatchProgress(**run.progress()))

"""The re-embed over HTTP: start, progress (JSON or server-sent events), cancel. One run at a time.

Search keeps answering from the stored vectors throughout: each track's new vector replaces the old one
(an upsert by track id); nothing is dropped first.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web

from schemas.batch import BatchProgress, BatchStart
from sidecar.api import ApiError, json_response, parse_body, sidecar_of
from sidecar.openapi import documented

routes = web.RouteTableDef()
SSE_INTERVAL_S = 1.0


@routes.post("/api/batch/start")
@documented("Start a re-embed of the library", body=BatchStart, response=BatchProgress, status=202, errors=(409,))
async def start(request: web.Request) -> web.Response:
    from sidecar.service import ReplayBusy

    req = await parse_body(request, BatchStart)
    sc = sidecar_of(request)
    unknown = [m for m in req.models if m not in sc.embedders.ready]
    if unknown:
        raise ApiError(400, f"unknown or unavailable model {unknown[0]!r}; available: {', '.join(sc.embedders.ready)}", "models")
    if req.scope is not None:
        scope = Path(req.scope)
        if not scope.is_absolute() or ".." in scope.parts or not any(scope.is_relative_to(r) for r in sc.roots):
            raise ApiError(400, "scope must be a folder inside a music root", "scope")
    try:
        run = await sc.request_replay(req.models, req.scope, source="api")
    except ReplayBusy as e:
        raise ApiError(409, str(e), "replay_id") from None
    return json_response(BatchProgress(**run.progress()), status=202)


def _latest(request: web.Request):
    worker = sidecar_of(request).worker
    run = worker.running_replay() or (list(worker.replays.values())[-1] if worker.replays else None)
    if run is None:
        raise ApiError(404, "no re-embed has run since the sidecar started")
    return run


@routes.get("/api/batch/progress")
@documented(
    "The running or last re-embed's progress", response={"application/json": BatchProgress, "text/event-stream": str}, errors=(404,)
)
async def progress(request: web.Request) -> web.StreamResponse:
    """The running (or last) re-embed. With `Accept: text/event-stream`, one event a second until it ends."""
    run = _latest(request)
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
    run = await sidecar_of(request).worker.cancel_replay()
    if run is None:
        raise ApiError(409, "no re-embed is running")
    return json_response(BatchProgress(**run.progress()))

"""The library: tracks, their analysis, and what failed."""
from __future__ import annotations

from aiohttp import web

from schemas.api import FailureList, FailuresQuery, ModelInfo, ModelList, RetryResult, TrackBrief, TrackDetail, TrackList, TracksQuery
from schemas.events import TrackUpserted
from sidecar.errors import NotFound
from sidecar.http.common import json_response, parse_query, sidecar_of
from sidecar.http.openapi import documented
from sidecar.pipeline.sources import publish_all

routes = web.RouteTableDef()


@routes.get("/api/tracks")
@documented("Search the library by title, artist, album or path", query=TracksQuery, response=TrackList)
async def list_tracks(request: web.Request) -> web.Response:
    q = parse_query(request, TracksQuery)
    rows = sidecar_of(request).catalog.search(q.query, q.limit)
    return json_response(TrackList(tracks=[TrackBrief(**r) for r in rows]))


@routes.get("/api/tracks/{track_id}")
@documented("One track: metadata, per-model status, tags, features, failure reason", response=TrackDetail, errors=(404,))
async def get_track(request: web.Request) -> web.Response:
    track_id = request.match_info["track_id"]
    t = sidecar_of(request).catalog.track(track_id)
    if t is None:
        raise NotFound(f"no track with id {track_id!r}", "track_id")
    t["path"] = t["paths"][0] if t["paths"] else None
    return json_response(TrackDetail(**t))


@routes.get("/api/models")
@documented("Embedders and text encoders, and why any is unavailable", response=ModelList)
async def list_models(request: web.Request) -> web.Response:
    sc = sidecar_of(request)
    counts = sc.catalog.counts()["models"]
    text_models = sc.text.text_models() if sc.text else {}
    out = [
        ModelInfo(
            name=name, kind="embedder", version=e.version, dim=e.dim, sample_rate=e.sample_rate, available=True,
            supports_text=name in text_models, text_via=text_models.get(name),
            tracks_embedded=counts.get(name, {}).get("done", 0),
        )
        for name, e in sc.embedders.ready.items()
    ]
    out += [ModelInfo(name=n, kind="embedder", available=False, reason=why) for n, why in sc.embedders.unavailable.items()]
    if sc.text:
        enc = sc.text.encoder
        out.append(ModelInfo(name=enc.name, kind="text_encoder", version=enc.version, dim=enc.dim, available=True, supports_text=True))
    else:
        out.append(ModelInfo(name=sc.settings.text_encoder, kind="text_encoder", available=False, reason=sc.text_unavailable))
    return json_response(ModelList(models=out))


@routes.get("/api/failures")
@documented("What failed and why", query=FailuresQuery, response=FailureList)
async def list_failures(request: web.Request) -> web.Response:
    """Files that could not be decoded and tracks a model failed on, with the reasons, newest first."""
    limit = parse_query(request, FailuresQuery).limit
    return json_response(FailureList(failures=sidecar_of(request).catalog.failures(limit)))


@routes.post("/api/failures/retry")
@documented("Retry every failed file", response=RetryResult, status=202)
async def retry_failures(request: web.Request) -> web.Response:
    """Try every failed file again, now: the failures are forgotten and their files announced anew."""
    sc = sidecar_of(request)
    paths = sc.catalog.clear_failures()
    sent = await publish_all(sc.bus, [TrackUpserted(path=p, source="retry") for p in paths])
    return json_response(RetryResult(retrying=sent, paths=paths), 202)

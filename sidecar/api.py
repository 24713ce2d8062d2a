"""The HTTP API (aiohttp). Bad input gets a 4xx with a JSON body naming the field, never a traceback."""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

import sidecar
from sidecar import metrics
from schemas.api import (
    EmbedTextRequest, EmbedTextResponse, ErrorBody, FailureList, FailuresQuery, Health, ModelInfo, ModelList, RetryResult,
    ScrobbleResult, SimilarTrack, SimilarTracksQuery, Status, TextPlaylist, TextRecommendationRequest, TrackBrief, TrackDetail,
    TrackList, TracksQuery,
)
from schemas.recommend import RecommendationRequest, RecommendationResponse, Scrobble
from sidecar.openapi import documented

if TYPE_CHECKING:
    from sidecar.service import Sidecar

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
SIDECAR = web.AppKey("sidecar", object)


class ApiError(Exception):
    def __init__(self, status: int, error: str, field: str | None = None):
        self.status, self.body = status, ErrorBody(error=error, field=field)


def json_response(model: BaseModel | list, status: int = 200) -> web.Response:
    if isinstance(model, list):
        text = "[" + ",".join(m.model_dump_json() for m in model) + "]"
    else:
        text = model.model_dump_json()
    return web.Response(text=text, status=status, content_type="application/json")


def _invalid(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    field = ".".join(str(x) for x in err["loc"]) or None
    return ApiError(400, f"{field}: {err['msg']}" if field else err["msg"], field)


def parse_query(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as e:
        raise _invalid(e) from None


async def parse_body(request: web.Request, model: type[M]) -> M:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "request body too large") from None
    if not raw:
        raise ApiError(400, "a JSON body is required", "body")
    try:  # strict: JSON has types, so `"use_llm": 0` or `"n": "5"` is a client's mistake, named, not guessed at
        return model.model_validate_json(raw, strict=True)
    except ValidationError as e:
        raise _invalid(e) from None


def _text(request: web.Request):
    sc = sidecar_of(request)
    if sc.text is None:
        raise ApiError(503, f"text search is unavailable: {sc.text_unavailable}")
    return sc.text


@web.middleware
async def timed(request: web.Request, handler):
    """Request latency per route pattern (not per path: ids would make a series each)."""
    t0 = time.perf_counter()
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics.REQUEST_SECONDS.labels(request.method, route, str(response.status)).observe(time.perf_counter() - t0)
    return response


@web.middleware
async def errors_as_json(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return json_response(e.body, e.status)
    except web.HTTPException as e:  # 404 for unknown routes, 405...
        if e.status < 400:
            raise
        response = json_response(ErrorBody(error=e.reason), e.status)
        if "Allow" in e.headers:  # a 405 must say which methods the path takes (RFC 9110)
            response.headers["Allow"] = e.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response(ErrorBody(error="internal error; see the sidecar's log"), 500)


def sidecar_of(request: web.Request) -> "Sidecar":
    return request.app[SIDECAR]


@documented("Liveness", response=Health, tag="service")
async def health(request: web.Request) -> web.Response:
    return json_response(Health(status="ok", version=sidecar.__version__))


@documented("Library counts, failures, bus lag and ingest progress", response=Status, tag="service")
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


@documented("Search the library by title, artist, album or path", query=TracksQuery, response=TrackList, tag="library")
async def list_tracks(request: web.Request) -> web.Response:
    q = parse_query(request, TracksQuery)
    rows = sidecar_of(request).catalog.search(q.query, q.limit)
    return json_response(TrackList(tracks=[TrackBrief(**r) for r in rows]))


@documented("One track: metadata, per-model status, tags, features, failure reason", response=TrackDetail, errors=(404,), tag="library")
async def get_track(request: web.Request) -> web.Response:
    track_id = request.match_info["track_id"]
    t = sidecar_of(request).catalog.track(track_id)
    if t is None:
        raise ApiError(404, f"no track with id {track_id!r}", "track_id")
    t["path"] = t["paths"][0] if t["paths"] else None
    return json_response(TrackDetail(**t))


@documented(
    "Nearest tracks to one (AudioMuse-AI's fields)", query=SimilarTracksQuery, response=list[SimilarTrack], errors=(404, 409),
    tag="recommend",
)
async def similar_tracks(request: web.Request) -> web.Response:
    q = parse_query(request, SimilarTracksQuery)
    sc = sidecar_of(request)
    model = q.model or sc.default_model
    if model not in sc.embedders.ready:
        raise ApiError(400, f"unknown or unavailable model {model!r}; available: {', '.join(sc.embedders.ready)}", "model")
    # one trip to a worker thread: the catalog (SQLite, which an ingest write may hold) and the search both block
    return json_response(await asyncio.to_thread(_similar_tracks, sc, q, model))


def _similar_tracks(sc, q: SimilarTracksQuery, model: str) -> list[SimilarTrack]:
    track_id = sc.catalog.resolve_ids([q.item_id]).get(q.item_id)
    if track_id is None:
        raise ApiError(404, f"no track with id {q.item_id!r}", "item_id")
    vectors = sc.store.get_vectors(model, [track_id])
    if track_id not in vectors:
        raise ApiError(409, f"track {q.item_id!r} has no {model} vector yet (not analysed, or analysis failed)", "item_id")
    extra = 3 * q.n if q.eliminate_duplicates else 0  # room for what duplicates remove
    hits = sc.store.search(model, vectors[track_id], q.n + extra, [track_id])
    meta = sc.catalog.tracks_brief([track_id] + [h[0] for h in hits])
    shown = sc.catalog.external_ids(meta)
    seen = {_same_song(meta[track_id])} if q.eliminate_duplicates and track_id in meta else set()
    out = []
    for tid, sim in hits:
        m = meta.get(tid)
        if m is None or (q.eliminate_duplicates and _same_song(m) in seen):
            continue
        seen.add(_same_song(m))
        out.append(SimilarTrack(
            item_id=shown.get(tid, tid), title=m["title"], author=m["artist"], album=m["album"] or "unknown",
            album_artist=m["artist"], distance=round(1.0 - sim, 6),
        ))
        if len(out) == q.n:
            break
    return out


def _same_song(meta: dict) -> tuple[str, str]:
    """Title and artist, normalised: the same song in another file or edition."""
    return ((meta.get("title") or "").strip().casefold(), (meta.get("artist") or "").strip().casefold())


@documented("Embedders and text encoders, and why any is unavailable", response=ModelList, tag="library")
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


@documented("A text's vector in a model's space", body=EmbedTextRequest, response=EmbedTextResponse, errors=(503,), tag="recommend")
async def embed_text(request: web.Request) -> web.Response:
    from sidecar.textrec import UnsupportedModel

    req = await parse_body(request, EmbedTextRequest)
    text = _text(request)
    try:
        vectors, via = await asyncio.to_thread(text.embed_text, req.model, [req.text])
    except UnsupportedModel as e:
        raise ApiError(400, str(e), "model") from None
    return json_response(EmbedTextResponse(model=req.model, dim=vectors.shape[1], via=via, vector=vectors[0].tolist()))


@documented("A playlist from a description", body=TextRecommendationRequest, response=TextPlaylist, errors=(503,), tag="recommend")
async def text_recommendations(request: web.Request) -> web.Response:
    from sidecar.textrec import UnsupportedModel

    req = await parse_body(request, TextRecommendationRequest)
    text = _text(request)
    unknown = [m for m in req.models or () if m not in text.text_models()]
    if unknown:
        raise ApiError(400, f"{', '.join(unknown)} cannot take text; models that can: {', '.join(text.text_models()) or 'none'}", "models")
    try:
        playlist = await asyncio.to_thread(text.recommend, req)
    except UnsupportedModel as e:
        raise ApiError(400, str(e), "method") from None
    return json_response(playlist)


@documented("Recommendations from seeds (tracks, vectors, text)", body=RecommendationRequest, response=RecommendationResponse, tag="recommend")
async def recommendations(request: web.Request) -> web.Response:
    from sidecar.engine import RecommendError

    req = await parse_body(request, RecommendationRequest)
    try:
        result = await asyncio.to_thread(sidecar_of(request).engine.recommend, req)
    except RecommendError as e:
        raise ApiError(400, str(e), e.field) from None
    return json_response(result)


@documented("A play from a scrobbler", body=Scrobble, response=ScrobbleResult, status=202, errors=(404,), tag="webhooks")
async def scrobble_webhook(request: web.Request) -> web.Response:
    """A play (or now-playing) from a scrobbler: stored in the listening history."""
    s = await parse_body(request, Scrobble)
    sc = sidecar_of(request)
    given = s.song_id or s.track_id
    track_id = sc.catalog.resolve_ids([given]).get(given)
    if track_id is None:
        raise ApiError(404, f"no track known by id {given!r}", "song_id" if s.song_id else "track_id")
    played_at = (s.time or datetime.now(timezone.utc)).timestamp()
    sc.catalog.add_listen(s.user, track_id, played_at, submission=s.submission, source="webhook")
    return json_response(ScrobbleResult(track_id=track_id), 202)


@documented("What failed and why", query=FailuresQuery, response=FailureList, tag="library")
async def list_failures(request: web.Request) -> web.Response:
    """Files that could not be decoded and tracks a model failed on, with the reasons, newest first."""
    limit = parse_query(request, FailuresQuery).limit
    return json_response(FailureList(failures=sidecar_of(request).catalog.failures(limit)))


@documented("Retry every failed file", response=RetryResult, status=202, tag="library")
async def retry_failures(request: web.Request) -> web.Response:
    """Try every failed file again, now: the failures are forgotten and their files announced anew."""
    from schemas.events import TrackUpserted
    from sidecar.sources import publish_all

    sc = sidecar_of(request)
    paths = sc.catalog.clear_failures()
    sent = await publish_all(sc.bus, [TrackUpserted(path=p, source="retry") for p in paths])
    return json_response(RetryResult(retrying=sent, paths=paths), 202)


@documented("Prometheus metrics", response={"text/plain": str}, tag="service")
async def prometheus_metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    metrics.QUEUE_DEPTH.set(await sidecar_of(request).lag())
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(sc: "Sidecar") -> web.Application:
    from sidecar.access import access_control

    app = web.Application(middlewares=[timed, errors_as_json, access_control], client_max_size=1 << 20)
    app[SIDECAR] = sc
    app.router.add_get("/health", health)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/tracks", list_tracks)
    app.router.add_get("/api/tracks/{track_id}", get_track)
    app.router.add_get("/api/similar_tracks", similar_tracks)
    app.router.add_get("/api/models", list_models)
    app.router.add_post("/api/embed_text", embed_text)
    app.router.add_post("/api/recommendations/text", text_recommendations)
    app.router.add_post("/api/recommendations", recommendations)
    app.router.add_post("/webhooks/scrobble", scrobble_webhook)
    app.router.add_get("/api/failures", list_failures)
    app.router.add_post("/api/failures/retry", retry_failures)
    app.router.add_get("/metrics", prometheus_metrics)
    from sidecar import batch, clustering, explore, instant, mediaserver, openapi, webpage  # each keeps its routes beside its logic

    for module in (batch, explore, clustering, instant, mediaserver, webpage, openapi):
        app.router.add_routes(module.routes)
    return app

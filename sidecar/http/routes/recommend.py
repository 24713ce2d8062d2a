"""Recommendations: similar tracks, multi-seed playlists, playlists from text."""
from __future__ import annotations

import asyncio

from aiohttp import web

from schemas.api import EmbedTextRequest, EmbedTextResponse, SimilarTrack, SimilarTracksQuery, TextPlaylist, TextRecommendationRequest
from schemas.recommend import RecommendationRequest, RecommendationResponse
from sidecar.errors import BadInput, Unavailable
from sidecar.http.common import json_response, parse_body, parse_query, sidecar_of
from sidecar.http.openapi import documented
from sidecar.recommend.similar import similar_tracks as nearest_tracks

routes = web.RouteTableDef()


def _text(request: web.Request):
    sc = sidecar_of(request)
    if sc.text is None:
        raise Unavailable(f"text search is unavailable: {sc.text_unavailable}")
    return sc.text


@routes.get("/api/similar_tracks")
@documented("Nearest tracks to one (AudioMuse-AI's fields)", query=SimilarTracksQuery, response=list[SimilarTrack], errors=(404, 409))
async def similar_tracks(request: web.Request) -> web.Response:
    q = parse_query(request, SimilarTracksQuery)
    sc = sidecar_of(request)
    model = sc.embedders.require(q.model)
    # one trip to a worker thread: the catalog (SQLite, which an ingest write may hold) and the search both block
    return json_response(await asyncio.to_thread(nearest_tracks, sc.catalog, sc.store, model, q))


@routes.post("/api/embed_text")
@documented("A text's vector in a model's space", body=EmbedTextRequest, response=EmbedTextResponse, errors=(503,))
async def embed_text(request: web.Request) -> web.Response:
    req = await parse_body(request, EmbedTextRequest)
    vectors, via = await asyncio.to_thread(_text(request).embed_text, req.model, [req.text])
    return json_response(EmbedTextResponse(model=req.model, dim=vectors.shape[1], via=via, vector=vectors[0].tolist()))


@routes.post("/api/recommendations/text")
@documented("A playlist from a description", body=TextRecommendationRequest, response=TextPlaylist, errors=(503,))
async def text_recommendations(request: web.Request) -> web.Response:
    req = await parse_body(request, TextRecommendationRequest)
    text = _text(request)
    unknown = [m for m in req.models or () if m not in text.text_models()]
    if unknown:
        raise BadInput(f"{', '.join(unknown)} cannot take text; models that can: {', '.join(text.text_models()) or 'none'}", "models")
    return json_response(await asyncio.to_thread(text.recommend, req))


@routes.post("/api/recommendations")
@documented("Recommendations from seeds (tracks, vectors, text)", body=RecommendationRequest, response=RecommendationResponse)
async def recommendations(request: web.Request) -> web.Response:
    req = await parse_body(request, RecommendationRequest)
    return json_response(await asyncio.to_thread(sidecar_of(request).engine.recommend, req))

"""Exploration: song paths, alchemy, the sonic fingerprint, the music map, similar artists and track search
(AudioMuse-AI's endpoints where it has them). The work is in sidecar/explore/."""
from __future__ import annotations

import asyncio

from aiohttp import web

from schemas.explore import (
    AlchemyRequest, AlchemyResponse, ExploreTrack, FindPathQuery, FindPathResponse, FingerprintGenerateQuery, FingerprintQuery,
    FingerprintResponse, MapQuery, MapResponse, MapSelection, MapSelectionResponse, SearchTrack, SearchTracksQuery, SimilarArtist,
    SimilarArtistsQuery,
)
from sidecar.errors import BadInput
from sidecar.explore import alchemy, artists, fingerprint, maps, path, search
from sidecar.http.common import json_response, parse_body, parse_query, sidecar_of
from sidecar.http.openapi import documented

routes = web.RouteTableDef()


@routes.get("/api/find_path")
@documented("A path of similar tracks from one track to another", query=FindPathQuery, response=FindPathResponse, errors=(404, 409))
async def find_path(request: web.Request) -> web.Response:
    q = parse_query(request, FindPathQuery)
    sc = sidecar_of(request)
    model = sc.embedders.require(q.model)
    return json_response(await asyncio.to_thread(path.find_path, sc.catalog, sc.store, model, q))


@routes.post("/api/alchemy")
@documented(
    "Song alchemy: tracks near what is added, away from what is subtracted", body=AlchemyRequest, response=AlchemyResponse,
    errors=(404, 409),
)
async def alchemy_route(request: web.Request) -> web.Response:
    req = await parse_body(request, AlchemyRequest)
    sc = sidecar_of(request)
    model = sc.embedders.require(req.model)
    return json_response(await asyncio.to_thread(alchemy.song_alchemy, sc.catalog, sc.store, sc.explore_caches, model, req))


@routes.get("/api/sonic_fingerprint")
@documented("Tracks near a user's listening fingerprint", query=FingerprintQuery, response=FingerprintResponse, errors=(409,))
async def sonic_fingerprint_route(request: web.Request) -> web.Response:
    q = parse_query(request, FingerprintQuery)
    sc = sidecar_of(request)
    model = sc.embedders.require(q.model)
    return json_response(await asyncio.to_thread(fingerprint.sonic_fingerprint, sc.catalog, sc.store, sc.explore_caches, model, q))


async def _fingerprint_generate(request: web.Request, g: FingerprintGenerateQuery) -> web.Response:
    user = g.user or g.navidrome_user or g.jellyfin_user_identifier
    if not user:
        raise BadInput("give the user: navidrome_user (or user)", "navidrome_user")
    sc = sidecar_of(request)
    model = sc.embedders.require(g.model)
    q = FingerprintQuery(user=user, n=g.n, model=model)
    out = await asyncio.to_thread(fingerprint.sonic_fingerprint, sc.catalog, sc.store, sc.explore_caches, model, q)
    return json_response(out.results)


@routes.get("/api/sonic_fingerprint/generate")
@documented("Sonic fingerprint, AudioMuse-AI's form", query=FingerprintGenerateQuery, response=list[ExploreTrack], errors=(409,))
async def fingerprint_generate_get(request: web.Request) -> web.Response:
    """AudioMuse-AI's form: a plain list of tracks."""
    return await _fingerprint_generate(request, parse_query(request, FingerprintGenerateQuery))


@routes.post("/api/sonic_fingerprint/generate")
@documented("Sonic fingerprint, AudioMuse-AI's form, POSTed", body=FingerprintGenerateQuery, response=list[ExploreTrack], errors=(409,))
async def fingerprint_generate_post(request: web.Request) -> web.Response:
    return await _fingerprint_generate(request, await parse_body(request, FingerprintGenerateQuery))


@routes.get("/api/map")
@documented("A 2-D map of the library", query=MapQuery, response=MapResponse)
async def map_route(request: web.Request) -> web.Response:
    q = parse_query(request, MapQuery)
    sc = sidecar_of(request)
    model = sc.embedders.require(q.model)
    body = await maps.map_json(sc.catalog, sc.store, sc.explore_caches, model, q)
    return web.Response(body=body, content_type="application/json")


@routes.post("/api/map/selection")
@documented("Details of tracks selected on the map", body=MapSelection, response=MapSelectionResponse, errors=(404,))
async def map_selection(request: web.Request) -> web.Response:
    req = await parse_body(request, MapSelection)
    return json_response(await asyncio.to_thread(maps.selection, sidecar_of(request).catalog, req))


@routes.get("/api/similar_artists")
@documented("Artists whose tracks sound alike", query=SimilarArtistsQuery, response=list[SimilarArtist], errors=(404,))
async def similar_artists_route(request: web.Request) -> web.Response:
    q = parse_query(request, SimilarArtistsQuery)
    sc = sidecar_of(request)
    model = sc.embedders.require(q.model)
    return json_response(await asyncio.to_thread(artists.find_similar_artists, sc.catalog, sc.store, sc.explore_caches, model, q))


@routes.get("/api/search_tracks")
@documented("Track search, AudioMuse-AI's form", query=SearchTracksQuery, response=list[SearchTrack])
async def search_tracks_route(request: web.Request) -> web.Response:
    q = parse_query(request, SearchTracksQuery)
    return json_response(await asyncio.to_thread(search.search_tracks, sidecar_of(request).catalog, q))

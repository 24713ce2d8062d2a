"""Instant playlists from a sentence (sidecar/instant)."""
from __future__ import annotations

from aiohttp import web

from schemas.instant import InstantPlaylist, InstantRequest
from sidecar.http.common import json_response, parse_body, sidecar_of
from sidecar.http.openapi import documented
from sidecar.instant.llm import llm_config
from sidecar.instant.playlist import make_playlist

routes = web.RouteTableDef()


@routes.post("/api/instant_playlist")
@documented("A playlist from a sentence (rules, or an LLM when configured)", body=InstantRequest, response=InstantPlaylist)
async def instant_playlist(request: web.Request) -> web.Response:
    req = await parse_body(request, InstantRequest)
    sc = sidecar_of(request)
    if req.model is not None:  # no model: the text search picks its own path
        sc.embedders.require(req.model)
    return json_response(await make_playlist(
        req, sc.catalog, sc.instant_index, sc.text, text_unavailable=sc.text_unavailable, llm=llm_config(sc.settings),
    ))

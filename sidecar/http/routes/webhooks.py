"""Webhooks: plays from a scrobbler (Navidrome's library events are in mediaserver)."""
from __future__ import annotations

from datetime import datetime, timezone

from aiohttp import web

from schemas.api import ScrobbleResult
from schemas.recommend import Scrobble
from sidecar.errors import NotFound
from sidecar.http.common import json_response, parse_body, sidecar_of
from sidecar.http.openapi import documented

routes = web.RouteTableDef()


@routes.post("/webhooks/scrobble")
@documented("A play from a scrobbler", body=Scrobble, response=ScrobbleResult, status=202, errors=(404,))
async def scrobble_webhook(request: web.Request) -> web.Response:
    """A play (or now-playing) from a scrobbler: stored in the listening history."""
    s = await parse_body(request, Scrobble)
    sc = sidecar_of(request)
    given = s.song_id or s.track_id
    track_id = sc.catalog.resolve_ids([given]).get(given)
    if track_id is None:
        raise NotFound(f"no track known by id {given!r}", "song_id" if s.song_id else "track_id")
    played_at = (s.time or datetime.now(timezone.utc)).timestamp()
    sc.catalog.add_listen(s.user, track_id, played_at, submission=s.submission, source="webhook")
    return json_response(ScrobbleResult(track_id=track_id), 202)

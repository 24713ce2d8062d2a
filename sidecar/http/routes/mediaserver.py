"""The media server: its status, a sync now, playlists written back, and Navidrome's library webhook."""
from __future__ import annotations

import asyncio

from aiohttp import web

from schemas.api import Accepted
from schemas.events import ScanCompleted
from schemas.mediaserver import (
    MediaServerStatus, NavidromeWebhook, PlaylistList, PlaylistRequest, PlaylistResult, PlaylistsQuery, WebhookResult,
)
from sidecar.errors import Unavailable
from sidecar.http.common import json_response, parse_body, parse_query, sidecar_of
from sidecar.http.openapi import documented
from sidecar.mediaserver.playlists import written_playlists
from sidecar.mediaserver.service import MediaServerService

routes = web.RouteTableDef()


def media_of(request: web.Request) -> MediaServerService:
    media = sidecar_of(request).media
    if media is None:
        raise Unavailable("no media server is configured: set SIDECAR_MEDIA_SERVER_URL (and its user and password)")
    if media.adapter is None:
        raise Unavailable(media.error or "the media server is not usable")
    return media


@routes.post("/webhooks/navidrome")
@documented(
    "A library event from Navidrome (scan finished...)", body=NavidromeWebhook, response=WebhookResult, responses={202: WebhookResult},
    tag="webhooks",
)
async def navidrome_webhook(request: web.Request) -> web.Response:
    """A scan finished (or another library event) on the server: reconcile the music folders.
    (The shared secret is checked for every webhook by sidecar.http.access.)"""
    hook = await parse_body(request, NavidromeWebhook)
    sc = sidecar_of(request)
    if hook.finished_scan:
        if sc.media is not None:
            event = await sc.media.scan_finished("webhook")
        else:
            event = ScanCompleted(roots=[str(r) for r in sc.roots], source="webhook")
            await sc.bus.publish(event)
        return json_response(WebhookResult(status="accepted", event=hook.event, action="reconcile", event_id=event.event_id), 202)
    if hook.event == "refresh_resource" and sc.media is not None:
        sc.media.wake_for_resources(hook.resources if hook.resources is not None else {"*": "*"})
        return json_response(WebhookResult(status="accepted", event=hook.event, action="sync"), 202)
    if hook.event == "ping":
        return json_response(WebhookResult(status="ok", event=hook.event))
    return json_response(WebhookResult(status="ignored", event=hook.event))


@routes.get("/api/mediaserver")
@documented("The media server connection: matched songs, last sync, errors", response=MediaServerStatus)
async def media_status(request: web.Request) -> web.Response:
    media = sidecar_of(request).media
    return json_response(MediaServerStatus(configured=False) if media is None else media.status())


@routes.post("/api/mediaserver/sync")
@documented("Sync with the media server now", response=Accepted, status=202, errors=(503,))
async def media_sync(request: web.Request) -> web.Response:
    """List the server's songs and sync the listening history now, in the background."""
    media_of(request).wake()
    return json_response(Accepted(), 202)


@routes.post("/api/playlists")
@documented(
    "Write a playlist to the media server (created: 201, replaced: 200)", body=PlaylistRequest, response=PlaylistResult,
    responses={201: PlaylistResult}, errors=(404, 409, 502, 503),
)
async def create_playlist(request: web.Request) -> web.Response:
    req = await parse_body(request, PlaylistRequest)
    result, created = await media_of(request).write_playlist(req)
    return json_response(result, 201 if created else 200)


@routes.get("/api/playlists")
@documented("Playlists the sidecar wrote", query=PlaylistsQuery, response=PlaylistList)
async def list_playlists(request: web.Request) -> web.Response:
    sc = sidecar_of(request)
    user = parse_query(request, PlaylistsQuery).user or None
    return json_response(await asyncio.to_thread(written_playlists, sc.catalog, user))


@routes.delete("/api/playlists/{playlist_id}")
@documented("Delete a playlist the sidecar wrote", response=None, status=204, errors=(404, 502, 503))
async def delete_playlist(request: web.Request) -> web.Response:
    await media_of(request).playlists.delete(request.match_info["playlist_id"])
    return web.Response(status=204)

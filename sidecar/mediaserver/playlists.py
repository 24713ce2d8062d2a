"""Playlists written to the media server: from tracks (our ids or the server's, in order) or from a
recommendation request whose result becomes the playlist; a user's playlist of the same name is replaced;
a generated one can be regenerated on a schedule. The catalog keeps what the sidecar wrote, by our ids, and
the schedules, so that every API process sees them and one of them runs each (Catalog.claim_playlist_run)."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from plugins.mediaserver import MediaServerError, Playlist, Unreachable
from plugins.mediaserver import NotFound as NoSuchItem
from schemas.mediaserver import PlaylistInfo, PlaylistList, PlaylistRequest, PlaylistResult
from schemas.recommend import RecommendationRequest
from sidecar.errors import BadInput, Conflict, DomainError, NotFound, Unavailable, UpstreamError

if TYPE_CHECKING:
    from sidecar.data import Catalog
    from sidecar.mediaserver.errorlog import ErrorLog
    from sidecar.plugins.api import MediaServer
    from sidecar.recommend.engine import Engine

log = logging.getLogger(__name__)


def server_error(e: MediaServerError) -> DomainError:
    """The adapter's error as the request's: the server down (Unavailable) or its error answer (UpstreamError)."""
    return Unavailable(str(e)) if isinstance(e, Unreachable) else UpstreamError(str(e))


def songs_for(catalog: "Catalog", engine: "Engine", req: PlaylistRequest) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """([(server song id, our track id)] in the playlist's order, our ids the server lacks, warnings). Blocking."""
    pairs: list[tuple[str, str]] = []
    if req.recommendation is not None:
        rec = req.recommendation
        if rec.user is None and req.user:
            rec = rec.model_copy(update={"user": req.user})
        try:
            result = engine.recommend(rec)
        except DomainError as e:
            raise type(e)(str(e), f"recommendation.{e.field}" if e.field else "recommendation") from None
        ours = [t.track_id for t in result.tracks]
        server = catalog.external_ids(ours)
        pairs = [(server[tid], tid) for tid in ours if tid in server]
        skipped = [tid for tid in ours if tid not in server]
        warnings = list(result.warnings)
        if skipped:
            warnings.append(f"{len(skipped)} recommended tracks are not on the media server (or not matched yet) and were left out")
        if not pairs:
            raise Conflict(f"none of the {len(ours)} recommended tracks is on the media server (or matched yet)", "recommendation")
        return pairs, skipped, warnings
    resolved = catalog.resolve_ids(req.track_ids)
    server = catalog.external_ids(set(resolved.values()))
    given_server_ids = catalog.tracks_by_external_id(among=req.track_ids)
    for i, given in enumerate(req.track_ids):
        tid = resolved.get(given)
        if tid is None:
            raise BadInput(f"unknown track id {given!r} (neither the sidecar's nor the media server's)", f"track_ids.{i}")
        sid = given if given_server_ids.get(given) == tid else server.get(tid)
        if sid is None:
            raise BadInput(f"track {given!r} is not on the media server (or not matched to it yet)", f"track_ids.{i}")
        pairs.append((sid, tid))
    return pairs, [], []


def written_playlists(catalog: "Catalog", user: str | None) -> PlaylistList:
    """The playlists the sidecar wrote (one user's, or all), with the server's id of each track. Blocking."""
    rows = catalog.playlists(user)
    server = catalog.external_ids({t for r in rows for t in r["track_ids"]})
    return PlaylistList(playlists=[
        PlaylistInfo(
            playlist_id=r["playlist_id"], name=r["name"], user=r["user"], track_ids=r["track_ids"],
            server_track_ids=[server.get(t) for t in r["track_ids"]], updated_at=r["updated_at"],
            refresh_interval_s=r["refresh_interval_s"],
        )
        for r in rows
    ])


class PlaylistWriter:
    """Writes playlists to one server, and regenerates the generated ones on their schedules (in the catalog)."""

    def __init__(self, catalog: "Catalog", engine: "Engine | None", adapter: "MediaServer", legacy_schedules: Path | None = None):
        """`legacy_schedules`: the JSON file earlier versions kept the schedules in, moved into the catalog once."""
        self.catalog, self.engine, self.adapter = catalog, engine, adapter
        if legacy_schedules is not None and legacy_schedules.exists():
            self._import(legacy_schedules)

    async def write(self, req: PlaylistRequest, owner: str | None) -> tuple[PlaylistResult, bool]:
        """Create or replace the playlist on the server; returns (result, created). `owner`: the server account
        the sidecar uses, whose playlist of the same name may be replaced."""
        pairs, skipped, warnings = await asyncio.to_thread(songs_for, self.catalog, self.engine, req)
        song_ids = [s for s, _ in pairs]
        try:
            playlist, created = await self._put(req, song_ids, owner)
        except NoSuchItem:
            raise NotFound(f"media server {self.adapter.url} has no playlist {req.playlist_id!r}", "playlist_id") from None
        except MediaServerError as e:
            raise server_error(e) from None
        back = playlist.song_ids or []
        if back != song_ids:
            warnings.append(f"the server holds {len(back)} songs, not the {len(song_ids)} sent (it may have dropped unknown ones)")
        ours_by_server = dict(pairs)
        if unknown := set(back) - set(ours_by_server):  # songs the server added on its own
            ours_by_server |= await asyncio.to_thread(self.catalog.tracks_by_external_id, among=unknown)
        our_ids = [ours_by_server.get(s, s) for s in back]
        await asyncio.to_thread(self.catalog.save_playlist, playlist.id, playlist.name, req.user, our_ids)
        if req.refresh_interval_s:
            recommendation = req.recommendation.model_dump(mode="json", exclude_unset=True)
            await asyncio.to_thread(self.catalog.schedule_playlist, playlist.id, req.refresh_interval_s, recommendation, time.time())
        elif req.track_ids is not None:  # a fixed list: no longer generated
            await asyncio.to_thread(self.catalog.schedule_playlist, playlist.id, None)
        schedule = await asyncio.to_thread(self.catalog.playlist_schedules, playlist.id)
        log.info(
            "media server %s: playlist %r %s with %d songs", self.adapter.url, playlist.name, "created" if created else "replaced", len(back)
        )
        return PlaylistResult(
            playlist_id=playlist.id, name=playlist.name, user=req.user, track_ids=back, sidecar_track_ids=our_ids,
            created=created, skipped=skipped, warnings=warnings,
            refresh_interval_s=schedule[0]["refresh_interval_s"] if schedule else None,
        ), created

    async def _put(self, req: PlaylistRequest, song_ids: list[str], owner: str | None) -> tuple[Playlist, bool]:
        if req.playlist_id:
            return await self.adapter.replace_playlist(req.playlist_id, song_ids, name=req.name), False
        if req.replace:
            mine = [p["playlist_id"] for p in await asyncio.to_thread(self.catalog.playlists, req.user) if p["name"] == req.name]
            on_server = await self.adapter.playlists()
            ids = {p.id for p in on_server}
            target = next((pid for pid in mine if pid in ids), None)
            if target is None:  # one the server already has under this name, made by this account
                target = next((p.id for p in on_server if p.name == req.name and p.owner in (None, owner)), None)
            if target is not None:
                return await self.adapter.replace_playlist(target, song_ids, name=req.name), False
        return await self.adapter.create_playlist(req.name, song_ids), True

    async def delete(self, playlist_id: str) -> None:
        # only playlists the sidecar wrote: the server's own are the user's business (and an id it never gave out
        # would come back as an opaque server error)
        if await asyncio.to_thread(self.catalog.playlist_tracks, playlist_id) is None:
            raise NotFound(f"the sidecar wrote no playlist {playlist_id!r}", "playlist_id")
        try:
            await self.adapter.delete_playlist(playlist_id)
        except NoSuchItem:
            pass
        except MediaServerError as e:
            raise server_error(e) from None
        await asyncio.to_thread(self.catalog.delete_playlist, playlist_id)

    async def refresh(self, owner: str | None, errors: "ErrorLog", force: bool = False) -> list[str]:
        """Re-run the recommendation of every generated playlist that is due and that this process claims
        first (several API processes check the same schedules); returns their ids."""
        done = []
        for s in await asyncio.to_thread(self.catalog.playlist_schedules):
            pid = s["playlist_id"]
            if not await asyncio.to_thread(self.catalog.claim_playlist_run, pid, time.time(), force=force):
                continue  # not due, or another process runs it
            req = PlaylistRequest(
                name=s["name"], user=s["user"], playlist_id=pid, refresh_interval_s=s["refresh_interval_s"],
                recommendation=RecommendationRequest.model_validate(s["recommendation"]),
            )
            try:
                await self.write(req, owner)
                errors.recovered("playlists")
                done.append(pid)
            except (Unavailable, UpstreamError) as e:  # the server: tried again at the next check
                errors.record(f"{e} (regenerating playlist {s['name']!r})", source="playlists")
                await asyncio.to_thread(self.catalog.schedule_playlist, pid, s["refresh_interval_s"], s["recommendation"], s["last_run"])
            except DomainError as e:
                log.error("regenerating playlist %r failed: %s", s["name"], e)
                if isinstance(e, NotFound):  # deleted on the server
                    await asyncio.to_thread(self.catalog.schedule_playlist, pid, None)
        return done

    def _import(self, path: Path) -> None:
        """The schedules of an earlier version's JSON file, into the catalog (for the playlists it has); the file
        is renamed, not deleted."""
        try:
            old = json.loads(path.read_text())
            for pid, s in old.items():
                self.catalog.schedule_playlist(pid, s["interval_s"], s["recommendation"], s.get("last_run"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("cannot read the playlist schedules in %s (%s): they are not regenerated until written again", path, e)
            return
        path.replace(path.with_suffix(".imported"))
        log.info("moved %d playlist schedules from %s into the catalog", len(old), path)

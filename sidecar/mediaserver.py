"""HTTP routes and background work for the media server (Navidrome / Subsonic).

`MediaServerService` runs beside the ingest pipeline when SIDECAR_MEDIA_SERVER_URL is set:

- identity: it lists the server's songs (search3, paged), turns each song's `path` into a local path with
  the prefix mapping (SIDECAR_MEDIA_SERVER_PATH_PREFIX, SERVER_PREFIX=LOCAL_PREFIX) and records the server's
  song id for the track that file belongs to (catalog external ids, namespace "subsonic"). Songs whose file
  the sidecar has not analysed yet wait in a pending set that is matched as soon as the catalog gains files.
  Where a server reports made-up paths (Navidrome does unless ND_SUBSONIC_DEFAULTREPORTREALPATH=true), a
  song is matched by its tags instead (same title and album, duration within 2 s, one candidate only).
- listening history: every SIDECAR_MEDIA_SERVER_SYNC_INTERVAL_S it reads the configured user's stars
  (getStarred2), ratings (userRating), play counts (playCount) and last plays (played) and stores them as
  ratings and listens, the history recent/favorites/discovery and the fingerprint use.
- library changes: it polls getScanStatus every SIDECAR_MEDIA_SERVER_SCAN_POLL_S (getIndexes' lastModified
  where the server cannot say, e.g. supysonic without its daemon) and publishes a ScanCompleted on the bus
  when a scan finished, so the worker reconciles the music folders; POST /webhooks/navidrome does the same
  on demand; Navidrome's event stream (/api/events) can be followed with SIDECAR_PLUGINS__SUBSONIC__EVENTS=on.
- playlists written back: POST /api/playlists creates or replaces a playlist on the server from track ids
  or a recommendation request, and can re-run the recommendation on a schedule.

None of this may stop the sidecar: a wrong password or a server that is down is logged (once per distinct
error, never with a secret), shown in GET /api/mediaserver, and retried with backoff.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from aiohttp import web

from plugins.mediaserver import AuthError, MediaServerError, NotFound, Playlist, Song, Unreachable, load_adapter_class, redact
from schemas.events import ScanCompleted
from schemas.api import Accepted
from schemas.mediaserver import (
    MediaServerStatus, NavidromeWebhook, PlaylistInfo, PlaylistList, PlaylistRequest, PlaylistResult, PlaylistsQuery, WebhookResult,
)
from sidecar.http.common import ApiError, json_response, parse_body, parse_query, sidecar_of
from sidecar.http.openapi import documented

if TYPE_CHECKING:
    from sidecar.data.catalog import Catalog
    from sidecar.service import Sidecar

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

SERVER = "subsonic"  # the catalog's external-id namespace for the media server's song ids
_CHUNK = 500


# ---- catalog reads and writes this module needs (proposed as Catalog methods; see docs/NAVIDROME.md)
def _chunks(items: list, n: int = _CHUNK) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def external_map(catalog: "Catalog", server: str = SERVER) -> dict[str, str]:
    """external id -> our track id, for one server."""
    return {r["external_id"]: r["track_id"] for r in catalog._q("SELECT external_id, track_id FROM external_ids WHERE server = ?", (server,))}


def external_ids_among(catalog: "Catalog", ids: Iterable[str], server: str = SERVER) -> dict[str, str]:
    """external id -> our track id, for those of `ids` that are the server's ids."""
    out: dict[str, str] = {}
    for part in _chunks(list(dict.fromkeys(ids))):
        rows = catalog._q(
            f"SELECT external_id, track_id FROM external_ids WHERE server = ? AND external_id IN ({','.join('?' * len(part))})",
            [server, *part],
        )
        out.update({r["external_id"]: r["track_id"] for r in rows})
    return out


def server_ids_for(catalog: "Catalog", track_ids: Iterable[str], server: str = SERVER) -> dict[str, str]:
    """Our track id -> the server's song id; unknown left out."""
    return catalog.external_ids(track_ids, server)


def forget_external_ids(catalog: "Catalog", external_ids: Iterable[str], server: str = SERVER) -> None:
    for part in _chunks(list(external_ids)):
        catalog._q(f"DELETE FROM external_ids WHERE server = ? AND external_id IN ({','.join('?' * len(part))})", [server, *part])


def track_ids_for_paths(catalog: "Catalog", paths: Iterable[str]) -> dict[str, str]:
    """path -> track id for the paths the catalog knows."""
    out: dict[str, str] = {}
    for part in _chunks(list(dict.fromkeys(paths))):
        rows = catalog._q(f"SELECT path, track_id FROM files WHERE path IN ({','.join('?' * len(part))})", part)
        out.update({r["path"]: r["track_id"] for r in rows})
    return out


def last_file_rowid(catalog: "Catalog") -> int:
    """The files table's highest rowid: file rows added later have higher ones."""
    return catalog._q("SELECT COALESCE(MAX(rowid), 0) AS m FROM files")[0]["m"]


def files_since(catalog: "Catalog", rowid: int, limit: int = 5000) -> list[dict]:
    """File rows added after `rowid`, with their track's tags, oldest first."""
    rows = catalog._q(
        "SELECT f.rowid AS rowid, f.path, f.track_id, t.title, t.album, t.artist, t.duration_s FROM files f"
        " JOIN tracks t USING (track_id) WHERE f.rowid > ? ORDER BY f.rowid LIMIT ?",
        (rowid, limit),
    )
    return [dict(r) for r in rows]


def ratings_of(catalog: "Catalog", user: str) -> dict[str, tuple[int | None, bool, int | None]]:
    rows = catalog._q("SELECT track_id, rating, starred, play_count FROM ratings WHERE user = ?", (user,))
    return {r["track_id"]: (r["rating"], bool(r["starred"]), r["play_count"]) for r in rows}


def tag_index(catalog: "Catalog") -> dict[tuple[str, str], list[tuple[str, str, float | None]]]:
    """(title, album), case-folded -> [(track id, artist, duration)] for matching songs by their tags."""
    out: dict[tuple[str, str], list[tuple[str, str, float | None]]] = {}
    for r in catalog._q("SELECT track_id, title, artist, album, duration_s FROM tracks WHERE title IS NOT NULL"):
        key = (_norm(r["title"]), _norm(r["album"]))
        out.setdefault(key, []).append((r["track_id"], _norm(r["artist"]), r["duration_s"]))
    return out


def stored_playlists(catalog: "Catalog", user: str | None = None) -> list[dict]:
    rows = catalog._q(
        "SELECT playlist_id, name, user, track_ids, updated_at FROM playlists WHERE ? IS NULL OR user = ? ORDER BY name, playlist_id",
        (user, user),
    )
    return [dict(r, track_ids=json.loads(r["track_ids"])) for r in rows]


def delete_stored_playlist(catalog: "Catalog", playlist_id: str) -> None:
    catalog._q("DELETE FROM playlists WHERE playlist_id = ?", (playlist_id,))


def _norm(s: str | None) -> str:
    return " ".join((s or "").casefold().split())


# ---- server paths -> local paths
class PathMap:
    """SERVER_PREFIX=LOCAL_PREFIX pairs (several separated by ';'), from SIDECAR_MEDIA_SERVER_PATH_PREFIX.

    A song's path may be relative to the server's music folder (Subsonic servers, supysonic) or absolute
    (Navidrome with Report Real Path). An absolute path under SERVER_PREFIX has it replaced by LOCAL_PREFIX; a
    relative path is joined to LOCAL_PREFIX (with a leading SERVER_PREFIX stripped as well). Without a
    mapping, absolute paths are taken as they are and relative ones are joined to each music folder.
    Every candidate is only looked up in the catalog, so a wrong one costs nothing."""

    def __init__(self, spec: str, roots: Iterable[Path | str]):
        self.spec = spec.strip()
        self.roots = [str(r) for r in roots]
        self.pairs: list[tuple[str, str]] = []
        for part in self.spec.replace("\n", ";").split(";"):
            if not part.strip():
                continue
            server, sep, local = part.partition("=")
            if not sep or not local.strip():
                raise ValueError(
                    f"SIDECAR_MEDIA_SERVER_PATH_PREFIX must be SERVER_PREFIX=LOCAL_PREFIX (several separated by ';'), not {part!r}"
                )
            self.pairs.append((server.strip().replace("\\", "/").rstrip("/"), local.strip().rstrip("/") or "/"))

    def candidates(self, server_path: str | None) -> list[str]:
        if not server_path:
            return []
        p = server_path.replace("\\", "/")
        out: list[str] = []
        absolute = p.startswith("/") or (len(p) > 2 and p[1] == ":" and p[2] == "/")  # C:/music/...
        for server, local in self.pairs:
            if absolute:
                if server and (p == server or p.startswith(server + "/")):
                    out.append(os.path.join(local, p[len(server):].lstrip("/")))
            else:
                rel = server.lstrip("/")
                if rel and p.startswith(rel + "/"):
                    out.append(os.path.join(local, p[len(rel) + 1 :]))
                out.append(os.path.join(local, p))
        if absolute:
            out.append(p)
        else:
            out += [os.path.join(root, p) for root in self.roots]
        return list(dict.fromkeys(os.path.normpath(c) for c in out))


@dataclass
class _Note:
    """What the server says about one song for the configured user."""

    starred: bool | None = None
    rating: int | None = None
    play_count: int | None = None
    played: float | None = None

    def merge(self, s: Song) -> None:
        if s.starred is not None:
            self.starred = True
        if s.user_rating is not None:
            self.rating = s.user_rating
        if s.play_count is not None:
            self.play_count = s.play_count
        if s.played is not None:
            self.played = max(self.played or 0.0, s.played.timestamp())

    @property
    def empty(self) -> bool:
        return not self.starred and not self.rating and not self.play_count and self.played is None


@dataclass
class _Pending:
    paths: list[str]
    title: str | None = None
    album: str | None = None
    artist: str | None = None
    duration_s: float | None = None


@dataclass
class _Listing:
    mapped: dict[str, str] = field(default_factory=dict)  # song id -> track id
    via_tags: int = 0
    pending: dict[str, _Pending] = field(default_factory=dict)
    total: int = 0
    example: str | None = None
    by_path: dict[str, str] = field(default_factory=dict)  # candidate local path -> pending song id
    by_tags: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (title, album) -> pending song ids
    files_rowid: int = 0  # file rows above this one were added after the listing was matched

    def index_pending(self) -> None:
        """Index the pending songs by path, and by tags those whose file is not on this disk (made-up paths)."""
        self.by_path, self.by_tags = {}, {}
        for sid, x in self.pending.items():
            for p in x.paths:
                self.by_path.setdefault(p, sid)
            if x.title and not any(os.path.exists(p) for p in x.paths):
                self.by_tags.setdefault((_norm(x.title), _norm(x.album)), []).append(sid)


def _utc(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, timezone.utc) if ts else None


class MediaServerService:
    """Background work and state for one media server. Never raises out of start(): a server that is down
    or refuses the credentials is retried, and the sidecar serves meanwhile."""

    def __init__(self, sc: "Sidecar", settings=None, adapter=None):
        self.sc = sc
        self.settings = s = settings or sc.settings
        self.options: dict[str, str] = dict(s.plugins.get("subsonic", {}))
        self.error: str | None = None
        self.error_at: float | None = None
        self._error_keys: dict[str, str] = {}
        self.adapter = adapter
        if self.adapter is None:
            try:
                cls = load_adapter_class(self.options.get("adapter", "subsonic"))
                self.adapter = cls.from_settings(s)
            except (ValueError, LookupError) as e:
                self._record_error(f"media server {redact(s.media_server_url)} is not usable: {e}")
        try:
            self.paths = PathMap(s.media_server_path_prefix, sc.roots or s.music_dir)
        except ValueError as e:
            self.paths = PathMap("", sc.roots or s.music_dir)
            self.adapter = None
            self._record_error(f"media server {redact(s.media_server_url)} is not used: {e}")
        self.user: str | None = s.media_server_user or None
        self.connected = False
        self.info = None
        self.listing = _Listing()
        self.notes: dict[str, _Note] = {}
        self.ratings_reported = False
        self.plays_reported = False  # the listing carries playCount: no need to walk the played albums
        self.last_listing_at: float | None = None
        self.last_sync_at: float | None = None
        self.last_scan_event_at: float | None = None
        self.scan_watch: str | None = None
        self.events_state = "off"
        self.listings = 0  # completed listings, for tests and status
        self.scan_events = 0
        self._wake = asyncio.Event()
        self._want_full = False
        self._want_songs: set[str] = set()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._warned_unmatched = False
        self._played_seen: dict[str, float] = {}
        self._schedules_path = s.data_dir / "media_playlists.json"
        self.schedules: dict[str, dict] = self._load_schedules()

    # ---- options
    def _opt(self, key: str, default: float) -> float:
        try:
            return float(self.options.get(key, default))
        except ValueError:
            return default

    @property
    def url(self) -> str:
        return getattr(self.adapter, "url", None) or redact(self.settings.media_server_url)

    # ---- lifecycle
    async def start(self) -> None:
        if self.adapter is None:
            return
        self._tasks.append(asyncio.create_task(self._main(), name="media-server"))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.adapter is not None:
            await self.adapter.close()

    def wake(self, full: bool = True, songs: Iterable[str] = ()) -> None:
        """Sync now (coalesced with a run already due): `full` lists every song again (new ids after a scan);
        otherwise only the listening history, re-reading the given songs (a star or rating changed)."""
        self._want_full |= full
        self._want_songs.update(songs)
        self._wake.set()

    def wake_for_resources(self, resources: Any) -> None:
        """Navidrome's refreshResource payload: {"*": "*"} or {"song": ["id", ...], "album": [...], ...}."""
        if not isinstance(resources, dict) or "*" in resources or any(v == "*" or v == ["*"] for v in resources.values()):
            self.wake(full=True)
            return
        songs = resources.get("song") or []
        self.wake(full=False, songs=[str(x) for x in (songs if isinstance(songs, list) else [songs])])

    def _record_error(self, message: str, then: str = "", source: str = "sync") -> None:
        """Log an error once per source (again only when it changes); `then` says what happens next."""
        secrets = getattr(self.adapter, "secrets", ())
        message, then = redact(message, *secrets), redact(then, *secrets)
        if message != self._error_keys.get(source):
            log.error("%s%s", message, then)
        else:
            log.debug("%s%s (again)", message, then)
        self._error_keys[source] = message
        self.error, self.error_at = message + then, time.time()

    def _recovered(self, source: str = "sync") -> None:
        if self._error_keys.pop(source, None) is not None:
            log.info("media server %s answers again", self.url)
        if not self._error_keys:
            self.error = self.error_at = None

    async def _main(self) -> None:
        lo, hi = self._opt("retry_min_s", 5), self._opt("retry_max_s", 300)
        delay = lo
        while True:
            try:
                await self.connect()
                break
            except MediaServerError as e:
                self._record_error(str(e), f"; the sidecar goes on without the media server and retries in {delay:g} s")
            except Exception as e:  # a bug must not take the sidecar down either
                log.exception("media server %s: unexpected error while connecting", self.url)
                self._record_error(f"media server {self.url}: unexpected error {type(e).__name__}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, hi)
        self._tasks.append(asyncio.create_task(self._pending_loop(), name="media-server-pending"))
        self._tasks.append(asyncio.create_task(self._scan_poll_loop(), name="media-server-scan-poll"))
        self._tasks.append(asyncio.create_task(self._schedule_loop(), name="media-server-playlists"))
        if self.options.get("events", "off").lower() in ("on", "true", "1", "yes"):
            self._tasks.append(asyncio.create_task(self._events_loop(), name="media-server-events"))
        interval = self.settings.media_server_sync_interval_s
        delay = lo
        full = True
        while True:
            songs, self._want_songs = self._want_songs, set()
            try:
                if full:
                    await self.refresh_ids()
                elif songs:
                    await self.refresh_songs(songs)
                await self.sync_history()
                delay = lo
                timeout = interval or None
            except MediaServerError as e:
                self._record_error(str(e), f"; retrying in {delay:g} s")
                timeout, delay = delay, min(delay * 2, hi)
                self._want_full |= full
                self._want_songs |= songs
            except Exception:
                log.exception("media server sync failed")
                timeout = delay
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                full = False
            except asyncio.TimeoutError:
                full = True  # the periodic run lists everything
            await asyncio.sleep(0.2)  # coalesce a burst of wake-ups
            self._wake.clear()
            full, self._want_full = full or self._want_full, False

    async def connect(self) -> None:
        self.info = await self.adapter.ping()
        if self.user is None and getattr(self.adapter, "uses_api_key", False):
            self.user = await self.adapter.token_info()
            if self.user is None:
                log.warning("media server %s does not say whose API key this is: set SIDECAR_MEDIA_SERVER_USER to sync listening history", self.url)
        self.connected = True
        self._recovered()
        kind = f"{self.info.type} {self.info.server_version or ''}".strip() if self.info.type else f"Subsonic API {self.info.api_version}"
        log.info("media server %s (%s) connected as %s", self.url, kind, self.user or "API key")

    # ---- identity
    async def refresh_ids(self) -> _Listing:
        """List every song on the server and record the server's id of each track the sidecar knows."""
        async with self._lock:
            try:
                songs = await self.adapter.songs()
            except (AuthError, Unreachable):
                self.connected = False
                raise
            self.connected = True
            self._recovered()
            notes: dict[str, _Note] = {}
            reported = False
            plays = False
            for s in songs:
                reported |= s.user_rating is not None
                plays |= s.play_count is not None
                n = _Note()
                n.merge(s)
                if not n.empty:
                    notes[s.id] = n
            self.notes = notes
            self.ratings_reported = reported or (getattr(self.info, "type", None) == "navidrome")
            self.plays_reported = plays
            self.listing = await asyncio.to_thread(self._apply_listing, songs)
            self.last_listing_at = time.time()
            self.listings += 1
        lst = self.listing
        log.info(
            "media server %s: %d songs, %d matched to tracks%s, %d not (yet) analysed here",
            self.url, lst.total, len(lst.mapped), f" ({lst.via_tags} by tags)" if lst.via_tags else "", len(lst.pending),
        )
        return lst

    async def refresh_songs(self, song_ids: Iterable[str]) -> None:
        """Re-read a few songs (a star, a rating or a play changed on the server), and match new ones."""
        new: dict[str, _Pending] = {}
        for sid in list(song_ids)[:200]:
            try:
                s = await self.adapter.song(sid)
            except NotFound:
                self.notes.pop(sid, None)
                continue
            n = _Note()
            n.merge(s)
            if n.empty:
                self.notes.pop(sid, None)
            else:
                self.notes[sid] = n
            if sid not in self.listing.mapped:
                new[sid] = _Pending(self.paths.candidates(s.path), s.title, s.album, s.artist, s.duration_s)
        if new:
            async with self._lock:
                mapped, _, left = await asyncio.to_thread(self._match, new)
                await asyncio.to_thread(self._store_ids, mapped)
                self.listing.mapped.update(mapped)
                self.listing.pending.update(left)
                await asyncio.to_thread(self.listing.index_pending)

    def _apply_listing(self, songs: list[Song]) -> _Listing:
        catalog = self.sc.catalog
        rowid = last_file_rowid(catalog)  # before matching: files added meanwhile are seen by match_pending
        existing = external_map(catalog)
        pending = {
            s.id: _Pending(self.paths.candidates(s.path), s.title, s.album, s.artist, s.duration_s) for s in songs
        }
        out = _Listing(total=len(songs))
        out.mapped, out.via_tags, out.pending = self._match(pending)
        for sid, tid in out.mapped.items():
            if existing.get(sid) != tid:
                catalog.set_external_id(SERVER, sid, tid)
        on_server = {s.id for s in songs}
        stale = [e for e in existing if e not in on_server]
        if stale:
            forget_external_ids(catalog, stale)
        # a song still on the server whose file is not analysed yet keeps the id it had, if any
        for sid in out.pending:
            if sid in existing:
                out.mapped[sid] = existing[sid]
        out.pending = {sid: p for sid, p in out.pending.items() if sid not in existing}
        example = next((p for p in out.pending.values() if p.paths), None)
        out.example = example.paths[0] if example else None
        out.files_rowid = rowid
        out.index_pending()
        return out

    def _match(self, pending: dict[str, _Pending]) -> tuple[dict[str, str], int, dict[str, _Pending]]:
        """(song id -> track id, how many by tags, what is left) for songs by path, then by tags."""
        catalog = self.sc.catalog
        found = track_ids_for_paths(catalog, (p for x in pending.values() for p in x.paths))
        mapped: dict[str, str] = {}
        left: dict[str, _Pending] = {}
        for sid, x in pending.items():
            tid = next((found[p] for p in x.paths if p in found), None)
            if tid is not None:
                mapped[sid] = tid
            else:
                left[sid] = x
        via_tags = 0
        if left and any(x.title for x in left.values()):
            index = tag_index(catalog)
            taken = set(mapped.values())
            for sid, x in list(left.items()):
                if not x.title or any(os.path.exists(p) for p in x.paths):
                    continue  # the file is here, only not analysed yet: wait for it rather than guess
                hits = [
                    (tid, artist) for tid, artist, dur in index.get((_norm(x.title), _norm(x.album)), ())
                    if tid not in taken and (x.duration_s is None or dur is None or abs(dur - x.duration_s) <= 2.0)
                ]
                if len(hits) > 1 and x.artist:
                    hits = [h for h in hits if h[1] == _norm(x.artist)]
                if len(hits) == 1:
                    mapped[sid] = hits[0][0]
                    taken.add(hits[0][0])
                    del left[sid]
                    via_tags += 1
        return mapped, via_tags, left

    async def _pending_loop(self) -> None:
        """Match waiting songs as the catalog gains files (no server call: only the catalog is read)."""
        every = self._opt("pending_check_s", 2)
        while True:
            await asyncio.sleep(every)
            try:
                await self.match_pending()
            except Exception:
                log.exception("matching the media server's songs failed")

    async def match_pending(self) -> int:
        """Match waiting songs to the file rows the catalog gained since the last look: by path, or by tags
        for songs whose path is made up. Reads only the new rows, so it is cheap while a big library is
        being analysed."""
        lst = self.listing
        if not lst.pending:
            return 0
        rows = await asyncio.to_thread(files_since, self.sc.catalog, lst.files_rowid)
        if not rows:
            await self._warn_unmatched()
            return 0
        async with self._lock:
            if self.listing is not lst:  # a new listing came meanwhile: it has seen these rows
                return 0
            lst.files_rowid = rows[-1]["rowid"]
            mapped: dict[str, str] = {}
            via_tags = 0
            for r in rows:
                sid = lst.by_path.get(os.path.normpath(r["path"]))
                if sid is not None and sid in lst.pending and sid not in mapped:
                    mapped[sid] = r["track_id"]
                    continue
                fits = [
                    s for s in lst.by_tags.get((_norm(r["title"]), _norm(r["album"])), ())
                    if s in lst.pending and s not in mapped and (
                        lst.pending[s].duration_s is None or r["duration_s"] is None
                        or abs(lst.pending[s].duration_s - r["duration_s"]) <= 2.0
                    )
                ]
                if len(fits) > 1:
                    fits = [s for s in fits if _norm(lst.pending[s].artist) == _norm(r["artist"])]
                if len(fits) == 1:
                    mapped[fits[0]] = r["track_id"]
                    via_tags += 1
            if not mapped:
                return 0
            await asyncio.to_thread(self._store_ids, mapped)
            lst.mapped.update(mapped)
            lst.via_tags += via_tags
            for sid in mapped:
                lst.pending.pop(sid, None)
            notes = {sid: self.notes[sid] for sid in mapped if sid in self.notes}
            if notes and self.user:
                await asyncio.to_thread(self._apply_history, notes, None)
        log.debug("media server: %d more songs matched, %d waiting", len(mapped), len(lst.pending))
        return len(mapped)

    def _store_ids(self, mapped: dict[str, str]) -> None:
        for sid, tid in mapped.items():
            self.sc.catalog.set_external_id(SERVER, sid, tid)

    async def _warn_unmatched(self) -> None:
        """Once the sidecar has analysed everything, songs still unmatched point at a wrong prefix mapping."""
        if self._warned_unmatched or not self.listing.pending:
            return
        try:
            idle = await self.sc.is_idle()
        except Exception:
            return
        if not idle:
            return
        self._warned_unmatched = True
        hint = ""
        if getattr(self.info, "type", None) == "navidrome":
            hint = (
                " Navidrome reports made-up paths unless ND_SUBSONIC_DEFAULTREPORTREALPATH=true (or Report Real Path is on for"
                f" player {getattr(self.adapter, 'client', 'music-sidecar')!r} in Settings > Players)."
            )
        log.warning(
            "media server %s: %d of %d songs match no file the sidecar analysed, e.g. %r; check "
            "SIDECAR_MEDIA_SERVER_PATH_PREFIX (now %r) and that the sidecar sees the same music folder.%s",
            self.url, len(self.listing.pending), self.listing.total, self.listing.example, self.paths.spec, hint,
        )

    # ---- listening history
    async def sync_history(self) -> None:
        """Stars, ratings, play counts and last plays of the configured user, into the catalog."""
        if not self.user:
            return
        notes = {sid: _Note(**n.__dict__) for sid, n in self.notes.items()}
        starred = await self.adapter.starred()
        for s in starred:
            notes.setdefault(s.id, _Note()).merge(s)
        for kind in () if self.plays_reported else ("recent", "frequent"):
            try:
                for s in await self.adapter.played_songs(kind, int(self._opt("played_albums", 50))):
                    notes.setdefault(s.id, _Note()).merge(s)
            except (AuthError, Unreachable):
                raise
            except MediaServerError as e:
                log.debug("media server: no %s albums: %s", kind, e)
        changed = await asyncio.to_thread(self._apply_history, notes, {s.id for s in starred})
        self.last_sync_at = time.time()
        log.info("media server %s: listening history of %s synced (%d changes)", self.url, self.user, changed)

    def _apply_history(self, notes: dict[str, _Note], starred_ids: set[str] | None) -> int:
        """Write what changed. `starred_ids`: the complete set of starred songs (to unstar the rest), or None."""
        catalog, user = self.sc.catalog, self.user
        ids = external_map(catalog)
        current = ratings_of(catalog, user)
        changes = 0
        for sid, n in notes.items():
            tid = ids.get(sid)
            if tid is None:
                continue
            rating, starred, plays = current.get(tid, (None, False, None))
            update: dict[str, Any] = {}
            if n.starred and not starred:
                update["starred"] = True
            if n.rating is not None and n.rating != (rating or 0):
                update["rating"] = n.rating
            if n.play_count is not None and n.play_count != plays:
                update["play_count"] = n.play_count
            if update:
                changes += catalog.set_rating(user, tid, **update)
            if n.played is not None and n.played > self._played_seen.get(sid, 0.0):
                if catalog.add_listen(user, tid, n.played, submission=True, source="subsonic"):
                    self._played_seen[sid] = n.played
                    changes += 1
        if starred_ids is not None:
            server_starred = {ids[s] for s in starred_ids if s in ids}
            on_server = set(ids.values())
            for tid, (rating, starred, _) in current.items():
                if starred and tid in on_server and tid not in server_starred:
                    changes += catalog.set_rating(user, tid, starred=False)
            if self.ratings_reported:  # a song without userRating is unrated now
                rated_on_server = {ids[s] for s, n in notes.items() if s in ids and n.rating}
                for tid, (rating, _, _) in current.items():
                    if rating and tid in on_server and tid not in rated_on_server:
                        changes += catalog.set_rating(user, tid, rating=0)
        return changes

    # ---- library changes
    async def scan_finished(self, source: str) -> ScanCompleted:
        """The server finished a scan: reconcile the music folders (a bus event) and refresh the ids."""
        event = ScanCompleted(roots=[str(r) for r in self.sc.roots], source=source)
        await self.sc.bus.publish(event)
        self.last_scan_event_at = time.time()
        self.scan_events += 1
        log.info("media server %s finished a scan (%s): reconciling the music folders", self.url, source)
        self.wake()
        return event

    async def _scan_signature(self) -> tuple[tuple | None, bool]:
        """(what identifies the library's last scan, scanning now?)."""
        status = None
        if self.scan_watch != "getIndexes":
            try:
                status = await self.adapter.scan_status()
                self.scan_watch = "getScanStatus"
            except (AuthError, Unreachable):
                raise
            except MediaServerError as e:
                log.info("media server %s: getScanStatus is not available (%s); watching getIndexes' lastModified instead", self.url, e)
                self.scan_watch = "getIndexes"
        if status is not None and status.scanning:
            return None, True
        last_modified = None
        if status is None or status.last_scan is None:
            last_modified = await self.adapter.indexes_last_modified()
        if status is None:
            return (last_modified,), False
        return (status.last_scan, status.count, status.folder_count, last_modified), False

    async def _scan_poll_loop(self) -> None:
        every = self.settings.media_server_scan_poll_s
        if not every:
            self.scan_watch = "off"
            return
        previous: tuple | None = None
        was_scanning = False
        while True:
            try:
                signature, scanning = await self._scan_signature()
                self._recovered("scan")
                if scanning:
                    was_scanning = True
                else:
                    changed = previous is not None and (was_scanning or signature != previous)
                    if changed and self.events_state != "connected":  # the event stream reports it sooner
                        await self.scan_finished("subsonic-poll")
                    previous, was_scanning = signature, False
            except MediaServerError as e:
                self._record_error(f"{e} (watching for scans)", source="scan")
            except Exception:
                log.exception("watching the media server's scans failed")
            await asyncio.sleep(every)

    async def _events_loop(self) -> None:
        """Navidrome's server-sent events: scanStatus (scanning -> not scanning means a scan finished) and
        refreshResource (something changed: refresh ids and history)."""
        lo, hi = self._opt("retry_min_s", 5), self._opt("retry_max_s", 300)
        delay = lo
        scanning = False
        server_start = None
        while True:
            self.events_state = "connecting"
            try:
                token = await self.adapter.navidrome_login()
                async for name, data in self.adapter.events(token):
                    if self.events_state != "connected":
                        self._recovered("events")
                    self.events_state, delay = "connected", lo
                    if name == "scanStatus" and isinstance(data, dict):
                        if data.get("scanning"):
                            scanning = True
                        elif scanning:
                            scanning = False
                            await self.scan_finished("navidrome-events")
                    elif name == "refreshResource":
                        self.wake_for_resources(data)
                    elif name == "serverStart":  # sent on every connection; a new start time: it restarted
                        started = data.get("startTime") if isinstance(data, dict) else None
                        if server_start is not None and started != server_start:
                            self.wake()
                        server_start = started
            except MediaServerError as e:
                self._record_error(f"{e} (event stream)", f"; retrying in {delay:g} s", source="events")
            except Exception:
                log.exception("Navidrome's event stream failed")
            self.events_state = "connecting"
            await asyncio.sleep(delay)
            delay = min(delay * 2, hi)

    # ---- playlists
    async def write_playlist(self, req: PlaylistRequest) -> tuple[PlaylistResult, bool]:
        """Create or replace the playlist on the server; returns (result, created)."""
        from sidecar.recommend.engine import RecommendError

        catalog = self.sc.catalog
        warnings: list[str] = []
        skipped: list[str] = []
        pairs: list[tuple[str, str]] = []  # (server id, our id)
        if req.recommendation is not None:
            rec = req.recommendation
            if rec.user is None and req.user:
                rec = rec.model_copy(update={"user": req.user})
            try:
                result = await asyncio.to_thread(self.sc.engine.recommend, rec)
            except RecommendError as e:
                raise ApiError(400, str(e), f"recommendation.{e.field}") from None
            warnings += result.warnings
            ours = [t.track_id for t in result.tracks]
            server = await asyncio.to_thread(server_ids_for, catalog, ours)
            for tid in ours:
                if tid in server:
                    pairs.append((server[tid], tid))
                else:
                    skipped.append(tid)
            if skipped:
                warnings.append(f"{len(skipped)} recommended tracks are not on the media server (or not matched yet) and were left out")
            if not pairs:
                raise ApiError(409, f"none of the {len(ours)} recommended tracks is on the media server (or matched yet)", "recommendation")
        else:
            resolved = await asyncio.to_thread(catalog.resolve_ids, req.track_ids)
            server = await asyncio.to_thread(server_ids_for, catalog, set(resolved.values()))
            ids = await asyncio.to_thread(external_ids_among, catalog, req.track_ids)
            for i, given in enumerate(req.track_ids):
                tid = resolved.get(given)
                if tid is None:
                    raise ApiError(400, f"unknown track id {given!r} (neither the sidecar's nor the media server's)", f"track_ids.{i}")
                sid = given if ids.get(given) == tid else server.get(tid)
                if sid is None:
                    raise ApiError(400, f"track {given!r} is not on the media server (or not matched to it yet)", f"track_ids.{i}")
                pairs.append((sid, tid))
        song_ids = [s for s, _ in pairs]
        try:
            playlist, created = await self._put_playlist(req, song_ids)
        except NotFound:
            raise ApiError(404, f"media server {self.url} has no playlist {req.playlist_id!r}", "playlist_id") from None
        back = playlist.song_ids or []
        if back != song_ids:
            warnings.append(f"the server holds {len(back)} songs, not the {len(song_ids)} sent (it may have dropped unknown ones)")
        ours_by_server = dict(pairs)
        if set(back) - set(ours_by_server):
            ours_by_server.update(await asyncio.to_thread(external_ids_among, catalog, set(back) - set(ours_by_server)))
        our_ids = [ours_by_server.get(s, s) for s in back]
        await asyncio.to_thread(catalog.save_playlist, playlist.id, playlist.name, req.user, our_ids)
        if req.refresh_interval_s:
            self.schedules[playlist.id] = {
                "name": playlist.name, "user": req.user, "interval_s": req.refresh_interval_s, "last_run": time.time(),
                "recommendation": req.recommendation.model_dump(mode="json", exclude_unset=True),
            }
            self._save_schedules()
        elif playlist.id in self.schedules and req.track_ids is not None:
            self.schedules.pop(playlist.id)  # replaced by a fixed list: no longer generated
            self._save_schedules()
        log.info("media server %s: playlist %r %s with %d songs", self.url, playlist.name, "created" if created else "replaced", len(back))
        return PlaylistResult(
            playlist_id=playlist.id, name=playlist.name, user=req.user, track_ids=back, sidecar_track_ids=our_ids,
            created=created, skipped=skipped, warnings=warnings,
            refresh_interval_s=self.schedules.get(playlist.id, {}).get("interval_s"),
        ), created

    async def _put_playlist(self, req: PlaylistRequest, song_ids: list[str]) -> tuple[Playlist, bool]:
        if req.playlist_id:
            return await self.adapter.replace_playlist(req.playlist_id, song_ids, name=req.name), False
        if req.replace:
            mine = [p["playlist_id"] for p in await asyncio.to_thread(stored_playlists, self.sc.catalog, req.user) if p["name"] == req.name]
            on_server = await self.adapter.playlists()
            owner = self.user
            names = {p.id: p for p in on_server}
            target = next((pid for pid in mine if pid in names), None)
            if target is None:  # one the server already has under this name, made by this account
                target = next((p.id for p in on_server if p.name == req.name and (p.owner in (None, owner))), None)
            if target is not None:
                return await self.adapter.replace_playlist(target, song_ids, name=req.name), False
        return await self.adapter.create_playlist(req.name, song_ids), True

    async def delete_playlist(self, playlist_id: str) -> None:
        try:
            await self.adapter.delete_playlist(playlist_id)
        except NotFound:
            pass
        await asyncio.to_thread(delete_stored_playlist, self.sc.catalog, playlist_id)
        if self.schedules.pop(playlist_id, None) is not None:
            self._save_schedules()

    def _load_schedules(self) -> dict[str, dict]:
        try:
            return json.loads(self._schedules_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.error("cannot read the playlist schedules in %s: %s", self._schedules_path, e)
            return {}

    def _save_schedules(self) -> None:
        tmp = self._schedules_path.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(self.schedules, indent=1))
        tmp.replace(self._schedules_path)

    async def refresh_playlists(self, force: bool = False) -> list[str]:
        """Re-run the recommendation of every generated playlist that is due; returns their ids."""
        from schemas.recommend import RecommendationRequest

        done = []
        for pid, s in list(self.schedules.items()):
            if not force and time.time() - s.get("last_run", 0) < s["interval_s"]:
                continue
            req = PlaylistRequest(
                name=s["name"], user=s.get("user"), playlist_id=pid, refresh_interval_s=s["interval_s"],
                recommendation=RecommendationRequest.model_validate(s["recommendation"]),
            )
            try:
                await self.write_playlist(req)
                self._recovered("playlists")
                done.append(pid)
            except ApiError as e:
                log.error("regenerating playlist %r failed: %s", s["name"], e.body.error)
                if e.status == 404:
                    self.schedules.pop(pid, None)
            except MediaServerError as e:
                self._record_error(f"{e} (regenerating playlist {s['name']!r})", source="playlists")
                continue
            if pid in self.schedules:
                self.schedules[pid]["last_run"] = time.time()
            self._save_schedules()
        return done

    async def _schedule_loop(self) -> None:
        every = self._opt("schedule_check_s", 30)
        while True:
            await asyncio.sleep(every)
            if self.schedules:
                try:
                    await self.refresh_playlists()
                except Exception:
                    log.exception("regenerating playlists failed")

    # ---- status
    def status(self) -> MediaServerStatus:
        lst = self.listing
        return MediaServerStatus(
            configured=True, url=self.url, user=self.user, auth="api key" if self.settings.media_server_api_key else self.settings.media_server_auth,
            connected=self.connected, server_type=getattr(self.info, "type", None),
            server_version=getattr(self.info, "server_version", None) or getattr(self.info, "api_version", None),
            last_error=self.error, last_error_at=_utc(self.error_at), songs_on_server=lst.total if self.listings else None,
            songs_matched=len(lst.mapped), songs_unmatched=len(lst.pending), unmatched_example=lst.example,
            path_prefix=self.paths.spec or None, last_listing_at=_utc(self.last_listing_at), last_sync_at=_utc(self.last_sync_at),
            last_scan_event_at=_utc(self.last_scan_event_at), scan_watch=self.scan_watch, events=self.events_state,
        )


# ---- HTTP
def media_of(request: web.Request) -> MediaServerService:
    media = getattr(sidecar_of(request), "media", None)
    if media is None:
        raise ApiError(503, "no media server is configured: set SIDECAR_MEDIA_SERVER_URL (and its user and password)")
    if media.adapter is None:
        raise ApiError(503, media.error or "the media server is not usable")
    return media


def _server_error(e: MediaServerError) -> ApiError:
    return ApiError(503 if isinstance(e, Unreachable) else 502, str(e))


@routes.post("/webhooks/navidrome")
@documented("A library event from Navidrome (scan finished...)", body=NavidromeWebhook, response=WebhookResult, responses={202: WebhookResult}, tag="webhooks")
async def navidrome_webhook(request: web.Request) -> web.Response:
    """A scan finished (or another library event) on the server: reconcile the music folders.
    (The shared secret is checked for every webhook by sidecar.http.access.)"""
    hook = await parse_body(request, NavidromeWebhook)
    sc = sidecar_of(request)
    media = getattr(sc, "media", None)
    if hook.finished_scan:
        if media is not None:
            event = await media.scan_finished("webhook")
        else:
            event = ScanCompleted(roots=[str(r) for r in sc.roots], source="webhook")
            await sc.bus.publish(event)
        return json_response(WebhookResult(status="accepted", event=hook.event, action="reconcile", event_id=event.event_id), 202)
    if hook.event == "refresh_resource" and media is not None:
        media.wake_for_resources(hook.resources if hook.resources is not None else {"*": "*"})
        return json_response(WebhookResult(status="accepted", event=hook.event, action="sync"), 202)
    if hook.event == "ping":
        return json_response(WebhookResult(status="ok", event=hook.event))
    return json_response(WebhookResult(status="ignored", event=hook.event))


@routes.get("/api/mediaserver")
@documented("The media server connection: matched songs, last sync, errors", response=MediaServerStatus)
async def media_status(request: web.Request) -> web.Response:
    media = getattr(sidecar_of(request), "media", None)
    if media is None:
        return json_response(MediaServerStatus(configured=False))
    return json_response(media.status())


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
    media = media_of(request)
    try:
        result, created = await media.write_playlist(req)
    except MediaServerError as e:
        raise _server_error(e) from None
    return json_response(result, 201 if created else 200)


@routes.get("/api/playlists")
@documented("Playlists the sidecar wrote", query=PlaylistsQuery, response=PlaylistList)
async def list_playlists(request: web.Request) -> web.Response:
    sc = sidecar_of(request)
    user = parse_query(request, PlaylistsQuery).user or None
    rows = await asyncio.to_thread(stored_playlists, sc.catalog, user)
    server = await asyncio.to_thread(server_ids_for, sc.catalog, {t for r in rows for t in r["track_ids"]})
    media = getattr(sc, "media", None)
    schedules = media.schedules if media is not None else {}
    return json_response(PlaylistList(playlists=[
        PlaylistInfo(
            playlist_id=r["playlist_id"], name=r["name"], user=r["user"], track_ids=r["track_ids"],
            server_track_ids=[server.get(t) for t in r["track_ids"]], updated_at=_utc(r["updated_at"]),
            refresh_interval_s=schedules.get(r["playlist_id"], {}).get("interval_s"),
        )
        for r in rows
    ]))


@routes.delete("/api/playlists/{playlist_id}")
@documented("Delete a playlist the sidecar wrote", response=None, status=204, errors=(404, 502, 503))
async def delete_playlist(request: web.Request) -> web.Response:
    media = media_of(request)
    playlist_id = request.match_info["playlist_id"]
    # only playlists the sidecar wrote: the server's own are the user's business (and an id it never gave out
    # would come back as an opaque server error)
    if playlist_id not in {r["playlist_id"] for r in await asyncio.to_thread(stored_playlists, media.sc.catalog)}:
        raise ApiError(404, f"the sidecar wrote no playlist {playlist_id!r}", "playlist_id")
    try:
        await media.delete_playlist(playlist_id)
    except MediaServerError as e:
        raise _server_error(e) from None
    return web.Response(status=204)

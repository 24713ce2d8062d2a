"""MediaServerService: the background work and state for one media server, owned by the Sidecar (`sc.media`).

It connects (retried with backoff), lists the server's songs and matches them to our tracks (then matches
waiting songs as the catalog gains files), syncs the user's listening history every
SIDECAR_MEDIA_SERVER_SYNC_INTERVAL_S or when woken, watches for finished scans (publishing a ScanCompleted
on the bus so the worker reconciles the music folders) and regenerates scheduled playlists."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Iterable

from plugins.mediaserver import AuthError, MediaServerError, NotFound, Unreachable, redact
from schemas.events import ScanCompleted
from schemas.mediaserver import MediaServerStatus, PlaylistRequest, PlaylistResult
from sidecar.mediaserver.errorlog import ErrorLog
from sidecar.mediaserver.matching import Listing, PathMap, PendingSong, match_songs
from sidecar.mediaserver.playlists import PlaylistWriter
from sidecar.mediaserver.scans import ScanWatcher
from sidecar.mediaserver.sync import Note, apply_history, apply_listing, notes_of, store_ids
from sidecar.plugins.api import MediaServerOptions
from sidecar.plugins.loader import load_media_server

if TYPE_CHECKING:
    from sidecar.plugins.api import MediaServer
    from sidecar.service import Sidecar

log = logging.getLogger(__name__)


class MediaServerService:
    """Never raises out of start(): a server that is down or refuses the credentials is retried, and the
    sidecar serves meanwhile. `adapter` is None when the settings make no usable one (`error` says why)."""

    def __init__(self, sc: "Sidecar", settings=None, adapter: "MediaServer | None" = None):
        self.sc = sc
        self.settings = s = settings or sc.settings
        problem = None
        try:
            self.options = MediaServerOptions.of(s)
        except ValueError as e:
            self.options, adapter, problem = MediaServerOptions(), None, f"media server {redact(s.media_server_url)} is not used: {e}"
        if adapter is None and problem is None:
            try:
                adapter = load_media_server(self.options.adapter, s)
            except (ValueError, LookupError, TypeError) as e:
                problem = f"media server {redact(s.media_server_url)} is not usable: {e}"
        try:
            self.paths = PathMap(s.media_server_path_prefix, sc.roots or s.music_dir)
        except ValueError as e:
            self.paths = PathMap("", sc.roots or s.music_dir)
            adapter, problem = None, f"media server {redact(s.media_server_url)} is not used: {e}"
        self.adapter = adapter
        self.url = adapter.url if adapter is not None else redact(s.media_server_url)
        self.errors = ErrorLog(self.url, adapter.secrets if adapter is not None else ())
        if problem:
            self.errors.record(problem)
        self.user: str | None = s.media_server_user or None
        self.connected = False
        self.info = None
        self.listing = Listing()
        self.notes: dict[str, Note] = {}  # song id -> what the last listing said for the user
        self.ratings_reported = False
        self.plays_reported = False  # the listing carries playCount: no need to walk the played albums
        self.last_listing_at: float | None = None
        self.last_sync_at: float | None = None
        self.last_scan_event_at: float | None = None
        self.listings = 0  # completed listings, for tests and status
        self.scan_events = 0
        self.scans = ScanWatcher(adapter, self.errors, self.scan_finished, self.wake_for_resources, self._backoff())
        self.playlists = PlaylistWriter(sc.catalog, sc.engine, adapter, legacy_schedules=s.data_dir / "media_playlists.json")
        self._wake = asyncio.Event()
        self._want_full = False
        self._want_songs: set[str] = set()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._warned_unmatched = False
        self._played_seen: dict[str, float] = {}  # song id -> the last play recorded as a listen

    def _backoff(self) -> tuple[float, float]:
        return self.options.retry_min_s, self.options.retry_max_s

    @property
    def error(self) -> str | None:
        return self.errors.error

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

    async def _main(self) -> None:
        lo, hi = self._backoff()
        delay = lo
        while True:
            try:
                await self.connect()
                break
            except MediaServerError as e:
                self.errors.record(str(e), f"; the sidecar goes on without the media server and retries in {delay:g} s")
            except Exception as e:  # a bug must not take the sidecar down either
                log.exception("media server %s: unexpected error while connecting", self.url)
                self.errors.record(f"media server {self.url}: unexpected error {type(e).__name__}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, hi)
        self._tasks.append(asyncio.create_task(self._pending_loop(), name="media-server-pending"))
        self._tasks.append(asyncio.create_task(self.scans.poll(self.settings.media_server_scan_poll_s), name="media-server-scan-poll"))
        self._tasks.append(asyncio.create_task(self._schedule_loop(), name="media-server-playlists"))
        if self.options.events:
            self._tasks.append(asyncio.create_task(self.scans.follow_events(), name="media-server-events"))
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
                self.errors.record(str(e), f"; retrying in {delay:g} s")
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
        if self.user is None and self.adapter.uses_api_key:
            self.user = await self.adapter.token_info()
            if self.user is None:
                log.warning(
                    "media server %s does not say whose API key this is: set SIDECAR_MEDIA_SERVER_USER to sync listening history", self.url
                )
        self.connected = True
        self.errors.recovered()
        kind = f"{self.info.type} {self.info.server_version or ''}".strip() if self.info.type else f"Subsonic API {self.info.api_version}"
        log.info("media server %s (%s) connected as %s", self.url, kind, self.user or "API key")

    # ---- identity
    async def refresh_ids(self) -> Listing:
        """List every song on the server and record the server's id of each track the sidecar knows."""
        async with self._lock:
            try:
                songs = await self.adapter.songs()
            except (AuthError, Unreachable):
                self.connected = False
                raise
            self.connected = True
            self.errors.recovered()
            self.notes = notes_of(songs)
            self.ratings_reported = any(s.user_rating is not None for s in songs) or getattr(self.info, "type", None) == "navidrome"
            self.plays_reported = any(s.play_count is not None for s in songs)
            self.listing = await asyncio.to_thread(apply_listing, self.sc.catalog, self.paths, songs)
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
        new: dict[str, PendingSong] = {}
        for sid in list(song_ids)[:200]:
            self.notes.pop(sid, None)
            try:
                s = await self.adapter.song(sid)
            except NotFound:
                continue
            self.notes |= notes_of([s])
            if sid not in self.listing.mapped:
                new[sid] = PendingSong.of(s, self.paths)
        if new:
            async with self._lock:
                mapped, _, left = await asyncio.to_thread(match_songs, self.sc.catalog, new)
                await asyncio.to_thread(store_ids, self.sc.catalog, mapped)
                self.listing.mapped.update(mapped)
                self.listing.pending.update(left)
                await asyncio.to_thread(self.listing.index_pending)

    async def _pending_loop(self) -> None:
        """Match waiting songs as the catalog gains files (no server call: only the catalog is read)."""
        every = self.options.pending_check_s
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
        rows, cursor = await asyncio.to_thread(self.sc.catalog.files_added_since, lst.files_cursor)
        if not rows:
            await self._warn_unmatched()
            return 0
        async with self._lock:
            if self.listing is not lst:  # a new listing came meanwhile: it has seen these rows
                return 0
            lst.files_cursor = cursor
            mapped, via_tags = lst.match_files(rows)
            if not mapped:
                return 0
            await asyncio.to_thread(store_ids, self.sc.catalog, mapped)
            lst.mapped.update(mapped)
            lst.via_tags += via_tags
            for sid in mapped:
                lst.pending.pop(sid, None)
            notes = {sid: self.notes[sid] for sid in mapped if sid in self.notes}
            if notes and self.user:
                await asyncio.to_thread(self._apply_history, notes, None)
        log.debug("media server: %d more songs matched, %d waiting", len(mapped), len(lst.pending))
        return len(mapped)

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
                f" player {self.adapter.client!r} in Settings > Players)."
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
        starred = await self.adapter.starred()
        notes = notes_of(starred, into=self.notes)
        for kind in () if self.plays_reported else ("recent", "frequent"):
            try:
                notes = notes_of(await self.adapter.played_songs(kind, self.options.played_albums), into=notes)
            except (AuthError, Unreachable):
                raise
            except MediaServerError as e:
                log.debug("media server: no %s albums: %s", kind, e)
        changed = await asyncio.to_thread(self._apply_history, notes, {s.id for s in starred})
        self.last_sync_at = time.time()
        log.info("media server %s: listening history of %s synced (%d changes)", self.url, self.user, changed)

    def _apply_history(self, notes: dict[str, Note], starred_ids: set[str] | None) -> int:
        return apply_history(
            self.sc.catalog, self.user, notes, starred_ids, ratings_reported=self.ratings_reported, played_seen=self._played_seen,
        )

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

    # ---- playlists
    async def write_playlist(self, req: PlaylistRequest) -> tuple[PlaylistResult, bool]:
        """Create or replace the playlist on the server; returns (result, created)."""
        return await self.playlists.write(req, self.user)

    async def refresh_playlists(self, force: bool = False) -> list[str]:
        """Re-run the recommendation of every generated playlist that is due; returns their ids."""
        return await self.playlists.refresh(self.user, self.errors, force)

    async def _schedule_loop(self) -> None:
        every = self.options.schedule_check_s
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh_playlists()
            except Exception:
                log.exception("regenerating playlists failed")

    # ---- status
    def status(self) -> MediaServerStatus:
        lst, s = self.listing, self.settings
        return MediaServerStatus(
            configured=True, url=self.url, user=self.user, auth="api key" if s.media_server_api_key else s.media_server_auth,
            connected=self.connected, server_type=getattr(self.info, "type", None),
            server_version=getattr(self.info, "server_version", None) or getattr(self.info, "api_version", None),
            last_error=self.errors.error, last_error_at=self.errors.error_at, songs_on_server=lst.total if self.listings else None,
            songs_matched=len(lst.mapped), songs_unmatched=len(lst.pending), unmatched_example=lst.example,
            path_prefix=self.paths.spec or None, last_listing_at=self.last_listing_at, last_sync_at=self.last_sync_at,
            last_scan_event_at=self.last_scan_event_at, scan_watch=self.scans.watch, events=self.scans.events_state,
        )

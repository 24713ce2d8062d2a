"""What a listing of the server brings into the catalog: the server's song id of each track (kept in the
catalog's external ids, namespace MEDIA_SERVER), and the configured user's stars, ratings, play counts and
last plays as ratings and listens (what recent, favourites, discovery and the fingerprint use). Blocking:
called in a worker thread."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from plugins.mediaserver import Song
from sidecar.data.ids import MEDIA_SERVER
from sidecar.mediaserver.matching import Listing, PathMap, PendingSong, match_songs

if TYPE_CHECKING:
    from sidecar.data import Catalog


@dataclass
class Note:
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


def notes_of(songs: Iterable[Song], into: dict[str, Note] | None = None) -> dict[str, Note]:
    """song id -> what the songs say for the user (merged into `into`, a copy of it), empty ones left out."""
    out = {sid: Note(**n.__dict__) for sid, n in (into or {}).items()}
    for s in songs:
        out.setdefault(s.id, Note()).merge(s)
    return {sid: n for sid, n in out.items() if not n.empty}


def store_ids(catalog: "Catalog", mapped: dict[str, str]) -> None:
    for sid, tid in mapped.items():
        catalog.set_external_id(MEDIA_SERVER, sid, tid)


def apply_listing(catalog: "Catalog", paths: PathMap, songs: list[Song]) -> Listing:
    """Match every song on the server to our tracks, record the ids that changed and forget those of songs
    gone from the server; the songs whose file is not analysed yet wait in the listing."""
    _, cursor = catalog.files_added_since(None)  # before matching: files added meanwhile are seen by match_files
    existing = catalog.tracks_by_external_id()
    out = Listing(total=len(songs), files_cursor=cursor)
    out.mapped, out.via_tags, pending = match_songs(catalog, {s.id: PendingSong.of(s, paths) for s in songs})
    store_ids(catalog, {sid: tid for sid, tid in out.mapped.items() if existing.get(sid) != tid})
    on_server = {s.id for s in songs}
    catalog.forget_external_ids(e for e in existing if e not in on_server)
    # a song still on the server whose file is not analysed yet keeps the id it had, if any
    out.mapped |= {sid: existing[sid] for sid in pending if sid in existing}
    out.pending = {sid: p for sid, p in pending.items() if sid not in existing}
    out.example = next((p.paths[0] for p in out.pending.values() if p.paths), None)
    out.index_pending()
    return out


def apply_history(
    catalog: "Catalog", user: str, notes: dict[str, Note], starred_ids: set[str] | None, *,
    ratings_reported: bool, played_seen: dict[str, float],
) -> int:
    """Write what changed; returns how many changes. `starred_ids`: every starred song (to unstar the rest),
    or None. `ratings_reported`: the listing carries ratings, so a song without one is unrated now.
    `played_seen`: song id -> the last play recorded, updated here."""
    ids = catalog.tracks_by_external_id()
    current = catalog.user_ratings(user)
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
        if n.played is not None and n.played > played_seen.get(sid, 0.0):
            if catalog.add_listen(user, tid, n.played, submission=True, source="subsonic"):
                played_seen[sid] = n.played
                changes += 1
    if starred_ids is not None:
        server_starred = {ids[s] for s in starred_ids if s in ids}
        on_server = set(ids.values())
        for tid, (rating, starred, _) in current.items():
            if starred and tid in on_server and tid not in server_starred:
                changes += catalog.set_rating(user, tid, starred=False)
        if ratings_reported:
            rated_on_server = {ids[s] for s, n in notes.items() if s in ids and n.rating}
            for tid, (rating, _, _) in current.items():
                if rating and tid in on_server and tid not in rated_on_server:
                    changes += catalog.set_rating(user, tid, rating=0)
    return changes

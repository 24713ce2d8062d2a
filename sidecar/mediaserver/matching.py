"""Which of our tracks is each of the server's songs: by path (the server's path turned into local ones by
the prefix mapping), else by tags (same title and album, duration within 2 s, one candidate only) for songs
whose path is made up (Navidrome's, unless Report Real Path is on)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, TypeVar

from plugins.mediaserver import Song
from sidecar.data.ids import norm_name

if TYPE_CHECKING:
    from sidecar.data import Catalog

DURATION_TOLERANCE_S = 2.0
T = TypeVar("T")


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
class PendingSong:
    """A server song not matched yet: where its file may be here, and its tags."""

    paths: list[str]
    title: str | None = None
    album: str | None = None
    artist: str | None = None
    duration_s: float | None = None

    @classmethod
    def of(cls, song: Song, paths: PathMap) -> PendingSong:
        return cls(paths.candidates(song.path), song.title, song.album, song.artist, song.duration_s)

    @property
    def file_here(self) -> bool:
        """Its file is on this disk, only not analysed yet: wait for it rather than guess by tags."""
        return any(os.path.exists(p) for p in self.paths)


def tag_key(title: str | None, album: str | None) -> tuple[str, str]:
    return norm_name(title), norm_name(album)


def only_fit(
    candidates: Iterable[T], duration_s: float | None, artist: str | None,
    duration_of: Callable[[T], float | None], artist_of: Callable[[T], str | None],
) -> T | None:
    """The one candidate (of the same title and album) that can be the same song: its duration within 2 s
    (an unknown one fits), and where several fit, the one by the same artist. None if none or several are left."""
    def close(c: T) -> bool:
        d = duration_of(c)
        return duration_s is None or d is None or abs(d - duration_s) <= DURATION_TOLERANCE_S

    fits = [c for c in candidates if close(c)]
    if len(fits) > 1:
        fits = [c for c in fits if norm_name(artist_of(c)) == norm_name(artist)]
    return fits[0] if len(fits) == 1 else None


def match_by_tags(tracks: Iterable[dict], songs: dict[str, PendingSong], taken: set[str]) -> dict[str, str]:
    """song id -> track id for the songs whose file is not here, among `tracks` (Catalog.titled_tracks rows)
    not `taken` yet (each track is one song's)."""
    index: dict[tuple[str, str], list[dict]] = {}
    for t in tracks:
        index.setdefault(tag_key(t["title"], t["album"]), []).append(t)
    taken = set(taken)
    out: dict[str, str] = {}
    for sid, x in songs.items():
        if not x.title or x.file_here:
            continue
        free = (t for t in index.get(tag_key(x.title, x.album), ()) if t["track_id"] not in taken)
        hit = only_fit(free, x.duration_s, x.artist, lambda t: t["duration_s"], lambda t: t["artist"])
        if hit is not None:
            out[sid] = hit["track_id"]
            taken.add(hit["track_id"])
    return out


def match_songs(catalog: Catalog, songs: dict[str, PendingSong]) -> tuple[dict[str, str], int, dict[str, PendingSong]]:
    """(song id -> track id, how many of those by tags, the songs left) for songs by path, then by tags."""
    found = catalog.track_ids_at(p for x in songs.values() for p in x.paths)
    mapped: dict[str, str] = {}
    left: dict[str, PendingSong] = {}
    for sid, x in songs.items():
        tid = next((found[p] for p in x.paths if p in found), None)
        if tid is None:
            left[sid] = x
        else:
            mapped[sid] = tid
    by_tags: dict[str, str] = {}
    if any(x.title for x in left.values()):
        by_tags = match_by_tags(catalog.titled_tracks(), left, set(mapped.values()))
    return mapped | by_tags, len(by_tags), {sid: x for sid, x in left.items() if sid not in by_tags}


@dataclass
class Listing:
    """The last listing of the server's songs: which are matched, and which wait for their file."""

    mapped: dict[str, str] = field(default_factory=dict)  # song id -> track id
    via_tags: int = 0
    pending: dict[str, PendingSong] = field(default_factory=dict)
    total: int = 0
    example: str | None = None  # a waiting song's local path, to show what the prefix mapping makes
    files_cursor: int | None = None  # Catalog.files_added_since: file rows added after the listing was matched
    by_path: dict[str, str] = field(default_factory=dict)  # candidate local path -> pending song id
    by_tags: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # tag_key -> pending song ids

    def index_pending(self) -> None:
        """Index the pending songs by path, and by tags those whose file is not on this disk (made-up paths)."""
        self.by_path, self.by_tags = {}, {}
        for sid, x in self.pending.items():
            for p in x.paths:
                self.by_path.setdefault(p, sid)
            if x.title and not x.file_here:
                self.by_tags.setdefault(tag_key(x.title, x.album), []).append(sid)

    def match_files(self, rows: Iterable[dict]) -> tuple[dict[str, str], int]:
        """(song id -> track id, how many by tags) of pending songs for new file rows (Catalog.files_added_since)."""
        mapped: dict[str, str] = {}
        via_tags = 0
        for r in rows:
            sid = self.by_path.get(os.path.normpath(r["path"]))
            if sid is not None and sid in self.pending and sid not in mapped:
                mapped[sid] = r["track_id"]
                continue
            waiting = (s for s in self.by_tags.get(tag_key(r["title"], r["album"]), ()) if s in self.pending and s not in mapped)
            sid = only_fit(waiting, r["duration_s"], r["artist"], lambda s: self.pending[s].duration_s, lambda s: self.pending[s].artist)
            if sid is not None:
                mapped[sid] = r["track_id"]
                via_tags += 1
        return mapped, via_tags

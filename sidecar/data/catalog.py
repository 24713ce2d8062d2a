"""The catalog: what the sidecar knows about each track, in one SQLite file beside the vectors.

- tracks: stable identity (track_id), the content hash of its audio, duration and tags;
- files: where a track lives (path -> track_id); a move changes this row and nothing else;
- embeddings: per (track, model) the content hash and model version that produced the stored vector,
  or the reason it failed; a track is embedded again only when either differs;
- failures: files that could not be decoded, with the reason.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS tracks (
    track_id TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    duration_s REAL,
    sample_rate INTEGER,
    channels INTEGER,
    title TEXT, artist TEXT, album TEXT, genre TEXT, year TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tracks_hash ON tracks(content_hash);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    track_id TEXT NOT NULL REFERENCES tracks(track_id) ON DELETE CASCADE,
    size INTEGER, mtime_ns INTEGER
);
CREATE INDEX IF NOT EXISTS files_track ON files(track_id);
CREATE TABLE IF NOT EXISTS embeddings (
    track_id TEXT NOT NULL REFERENCES tracks(track_id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    error TEXT,
    tags TEXT, features TEXT,
    seconds REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (track_id, model)
);
CREATE TABLE IF NOT EXISTS replays (
    replay_id TEXT PRIMARY KEY,
    consumer_group TEXT NOT NULL,
    models TEXT NOT NULL,
    scope TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'cancelled', 'failed')),
    started_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS listens (
    user TEXT NOT NULL,
    track_id TEXT NOT NULL REFERENCES tracks(track_id) ON DELETE CASCADE,
    played_at REAL NOT NULL,
    submission INTEGER NOT NULL DEFAULT 1,
    source TEXT,
    PRIMARY KEY (user, track_id, played_at)
);
CREATE INDEX IF NOT EXISTS listens_recent ON listens(user, played_at DESC);
CREATE TABLE IF NOT EXISTS ratings (
    user TEXT NOT NULL,
    track_id TEXT NOT NULL REFERENCES tracks(track_id) ON DELETE CASCADE,
    rating INTEGER CHECK (rating BETWEEN 0 AND 5),
    starred INTEGER NOT NULL DEFAULT 0,
    play_count INTEGER,
    updated_at REAL NOT NULL,
    PRIMARY KEY (user, track_id)
);
CREATE TABLE IF NOT EXISTS external_ids (
    server TEXT NOT NULL,
    external_id TEXT NOT NULL,
    track_id TEXT NOT NULL REFERENCES tracks(track_id) ON DELETE CASCADE,
    PRIMARY KEY (server, external_id)
);
CREATE INDEX IF NOT EXISTS external_by_track ON external_ids(track_id);
CREATE TABLE IF NOT EXISTS playlists (
    playlist_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    user TEXT,
    track_ids TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    size INTEGER, mtime_ns INTEGER,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL
);
"""


# the media server's song id of a track, as a column of a query over `tracks t`
SERVER_ID = "(SELECT MIN(e.external_id) FROM external_ids e WHERE e.track_id = t.track_id AND e.server = 'subsonic') AS server_id"


@dataclass(frozen=True)
class FileRow:
    path: str
    track_id: str
    size: int | None
    mtime_ns: int | None


class Catalog:
    """Thread-safe: one connection behind a lock; every call is a short transaction."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._stamp: tuple | None = None  # ((data_version, total_changes), analysis_stamp) when last counted
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Bring a catalog written by an older version up to this schema (PRAGMA user_version counts steps)."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version < 1:
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(replays)")}
            if "scope" not in columns:
                self._db.execute("ALTER TABLE replays ADD COLUMN scope TEXT")
            self._db.execute("PRAGMA user_version = 1")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self):
        return _Transaction(self)

    def _q(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    # ---- files and identity
    def file(self, path: str) -> FileRow | None:
        rows = self._q("SELECT path, track_id, size, mtime_ns FROM files WHERE path = ?", (path,))
        return FileRow(**dict(rows[0])) if rows else None

    def files_under(self, root: str) -> dict[str, tuple[int | None, int | None]]:
        prefix = root.rstrip("/") + "/"
        rows = self._q(
            "SELECT path, size, mtime_ns FROM files WHERE substr(path, 1, ?) = ? "
            "UNION ALL SELECT path, size, mtime_ns FROM failures WHERE substr(path, 1, ?) = ?",
            (len(prefix), prefix, len(prefix), prefix),
        )
        return {r["path"]: (r["size"], r["mtime_ns"]) for r in rows}

    def resolve_track(self, path: str, content_hash: str, size: int, mtime_ns: int, info: dict[str, Any]) -> tuple[str, str | None]:
        """Attach `path` to a track and return (track_id, orphaned_track_id).

        Identity: the track this path already belongs to keeps its id (its audio may have changed); a new
        path whose audio matches a known track joins that track (a move the watcher did not see, or a
        duplicate file). Otherwise a new track is made. If the path left a track that now has no file,
        that track's id is returned as orphaned so its vectors can be deleted.
        """
        now = time.time()
        with self._tx() as db:
            old = db.execute("SELECT track_id FROM files WHERE path = ?", (path,)).fetchone()
            same_audio = db.execute(
                "SELECT track_id FROM tracks WHERE content_hash = ? ORDER BY created_at LIMIT 1", (content_hash,)
            ).fetchone()
            if same_audio is not None:
                track_id = same_audio["track_id"]
            elif old is not None:
                track_id = old["track_id"]
            else:
                track_id = uuid.uuid4().hex
            fields = {k: info.get(k) for k in ("duration_s", "sample_rate", "channels", "title", "artist", "album", "genre", "year")}
            db.execute(
                "INSERT INTO tracks (track_id, content_hash, duration_s, sample_rate, channels, title, artist, album, genre, year,"
                " created_at, updated_at) VALUES (:track_id, :content_hash, :duration_s, :sample_rate, :channels, :title, :artist,"
                " :album, :genre, :year, :now, :now) ON CONFLICT(track_id) DO UPDATE SET content_hash = excluded.content_hash,"
                " duration_s = excluded.duration_s, sample_rate = excluded.sample_rate, channels = excluded.channels,"
                " title = excluded.title, artist = excluded.artist, album = excluded.album, genre = excluded.genre,"
                " year = excluded.year, updated_at = excluded.updated_at",
                dict(fields, track_id=track_id, content_hash=content_hash, now=now),
            )
            db.execute(
                "INSERT INTO files (path, track_id, size, mtime_ns) VALUES (?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET"
                " track_id = excluded.track_id, size = excluded.size, mtime_ns = excluded.mtime_ns",
                (path, track_id, size, mtime_ns),
            )
            db.execute("DELETE FROM failures WHERE path = ?", (path,))
            orphan = None
            if old is not None and old["track_id"] != track_id:
                orphan = self._orphan_or_none(db, old["track_id"])
        return track_id, orphan

    def move_file(self, src: str, dest: str, size: int | None, mtime_ns: int | None) -> str | None:
        """Point the file row at its new path; returns the track id, or None if `src` was unknown."""
        with self._tx() as db:
            row = db.execute("SELECT track_id FROM files WHERE path = ?", (src,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM files WHERE path = ?", (dest,))
            db.execute("UPDATE files SET path = ?, size = ?, mtime_ns = ? WHERE path = ?", (dest, size, mtime_ns, src))
            return row["track_id"]

    def remove_file(self, path: str) -> str | None:
        """Forget a path; returns the track id if that track now has no file left (delete its vectors)."""
        with self._tx() as db:
            db.execute("DELETE FROM failures WHERE path = ?", (path,))
            row = db.execute("SELECT track_id FROM files WHERE path = ?", (path,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM files WHERE path = ?", (path,))
            return self._orphan_or_none(db, row["track_id"])

    @staticmethod
    def _orphan_or_none(db: sqlite3.Connection, track_id: str) -> str | None:
        left = db.execute("SELECT 1 FROM files WHERE track_id = ? LIMIT 1", (track_id,)).fetchone()
        return None if left else track_id

    def delete_track(self, track_id: str) -> None:
        """Called after the track's vectors were deleted from the store."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM files WHERE track_id = ? LIMIT 1", (track_id,)).fetchone() is None:
                db.execute("DELETE FROM tracks WHERE track_id = ?", (track_id,))

    # ---- embeddings
    def embedding_state(self, track_id: str) -> dict[str, sqlite3.Row]:
        return {r["model"]: r for r in self._q("SELECT * FROM embeddings WHERE track_id = ?", (track_id,))}

    def models_to_run(
        self, track_id: str, content_hash: str, versions: dict[str, str], force: Iterable[str] = (), force_before: float = 0.0
    ) -> list[str]:
        """The models whose stored result is missing or was made from other audio or another model version.

        Models in `force` also run when their result is older than `force_before` (a replay's start), so a
        replay that meets several events of one track embeds it once.
        """
        state = self.embedding_state(track_id)
        force = set(force)
        todo = []
        for model, version in versions.items():
            row = state.get(model)
            fresh = row is not None and row["content_hash"] == content_hash and row["model_version"] == version
            if not fresh or (model in force and row["updated_at"] < force_before):
                todo.append(model)
        return todo

    def record_embedding(
        self, track_id: str, model: str, version: str, content_hash: str, *, error: str | None = None,
        tags: dict | None = None, features: dict | None = None, seconds: float | None = None,
    ) -> None:
        self._q(
            "INSERT INTO embeddings (track_id, model, model_version, content_hash, status, error, tags, features, seconds, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(track_id, model) DO UPDATE SET model_version = excluded.model_version,"
            " content_hash = excluded.content_hash, status = excluded.status, error = excluded.error, tags = excluded.tags,"
            " features = excluded.features, seconds = excluded.seconds, updated_at = excluded.updated_at",
            (track_id, model, version, content_hash, "failed" if error else "done", error,
             json.dumps(tags) if tags is not None else None, json.dumps(features) if features is not None else None,
             seconds, time.time()),
        )

    def embedded_models(self, track_id: str) -> list[str]:
        return [r["model"] for r in self._q("SELECT model FROM embeddings WHERE track_id = ? AND status = 'done'", (track_id,))]

    def is_current(self, path: str, size: int | None, mtime_ns: int | None, versions: dict[str, str], **force) -> bool:
        """True when the file is unchanged since it was analysed and every model's result is current."""
        f = self.file(path)
        if f is None or f.size != size or f.mtime_ns != mtime_ns or size is None:
            return False
        track = self._q("SELECT content_hash FROM tracks WHERE track_id = ?", (f.track_id,))
        return bool(track) and not self.models_to_run(f.track_id, track[0]["content_hash"], versions, **force)

    def failed_unchanged(self, path: str, size: int | None, mtime_ns: int | None) -> bool:
        """True when this exact file (same size and mtime) already failed to decode."""
        rows = self._q("SELECT size, mtime_ns FROM failures WHERE path = ?", (path,))
        return bool(rows) and (rows[0]["size"], rows[0]["mtime_ns"]) == (size, mtime_ns)

    # ---- failures of whole files (decode)
    def record_failure(self, path: str, size: int | None, mtime_ns: int | None, reason: str) -> None:
        self._q(
            "INSERT INTO failures (path, size, mtime_ns, reason, failed_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(path)"
            " DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, reason = excluded.reason, failed_at = excluded.failed_at",
            (path, size, mtime_ns, reason[:2000], time.time()),
        )

    def failures(self, limit: int = 100) -> list[dict]:
        rows = self._q(
            "SELECT path, NULL AS track_id, NULL AS model, reason, failed_at FROM failures UNION ALL "
            "SELECT f.path, e.track_id, e.model, e.error, e.updated_at FROM embeddings e JOIN files f USING (track_id) "
            "WHERE e.status = 'failed' ORDER BY failed_at DESC LIMIT ?",
            (limit,),
        )
        return [dict(r) for r in rows]

    def clear_failures(self) -> list[str]:
        """Forget every recorded failure so that the files are tried again; returns their paths."""
        with self._tx() as db:
            paths = [r["path"] for r in db.execute("SELECT path FROM failures")]
            paths += [
                r["path"] for r in db.execute(
                    "SELECT MIN(f.path) AS path FROM embeddings e JOIN files f USING (track_id) WHERE e.status = 'failed'"
                    " GROUP BY e.track_id"
                )
            ]
            db.execute("DELETE FROM failures")
            db.execute("DELETE FROM embeddings WHERE status = 'failed'")
            db.execute("UPDATE files SET size = NULL WHERE path IN (SELECT value FROM json_each(?))", (json.dumps(paths),))
        return sorted(set(paths))

    # ---- replays (re-embeds)
    def start_replay(self, replay_id: str, group: str, models: list[str], scope: str | None = None) -> dict:
        self._q(
            "INSERT OR IGNORE INTO replays (replay_id, consumer_group, models, scope, status, started_at)"
            " VALUES (?, ?, ?, ?, 'running', ?)",
            (replay_id, group, json.dumps(models), scope, time.time()),
        )
        return self.replay(replay_id)

    def finish_replay(self, replay_id: str, status: str = "done") -> None:
        self._q("UPDATE replays SET status = ?, finished_at = ? WHERE replay_id = ?", (status, time.time(), replay_id))

    def replay(self, replay_id: str) -> dict | None:
        rows = self._q("SELECT * FROM replays WHERE replay_id = ?", (replay_id,))
        return dict(rows[0], models=json.loads(rows[0]["models"])) if rows else None

    def replays(self, status: str | None = None) -> list[dict]:
        rows = self._q("SELECT * FROM replays WHERE ? IS NULL OR status = ? ORDER BY started_at", (status, status))
        return [dict(r, models=json.loads(r["models"])) for r in rows]

    # ---- listening history: plays, stars, ratings (from scrobbles and the media server)
    def add_listen(self, user: str, track_id: str, played_at: float, *, submission: bool = True, source: str = "") -> bool:
        """Record a play; a second report of the same play is ignored. False if the track is unknown."""
        if not self._q("SELECT 1 FROM tracks WHERE track_id = ?", (track_id,)):
            return False
        self._q(
            "INSERT OR IGNORE INTO listens (user, track_id, played_at, submission, source) VALUES (?, ?, ?, ?, ?)",
            (user, track_id, played_at, int(submission), source),
        )
        return True

    def recent_listens(self, user: str, limit: int = 50, *, submissions_only: bool = True) -> list[tuple[str, float]]:
        rows = self._q(
            "SELECT track_id, MAX(played_at) AS played_at FROM listens WHERE user = ? AND (submission = 1 OR ? = 0)"
            " GROUP BY track_id ORDER BY played_at DESC LIMIT ?",
            (user, int(submissions_only), limit),
        )
        return [(r["track_id"], r["played_at"]) for r in rows]

    def played_tracks(self, user: str) -> set[str]:
        return {r["track_id"] for r in self._q("SELECT DISTINCT track_id FROM listens WHERE user = ?", (user,))} | {
            r["track_id"] for r in self._q("SELECT track_id FROM ratings WHERE user = ? AND play_count > 0", (user,))
        }

    def set_rating(
        self, user: str, track_id: str, *, rating: int | None = None, starred: bool | None = None, play_count: int | None = None
    ) -> bool:
        """Update what is given, keep the rest. False if the track is unknown."""
        if not self._q("SELECT 1 FROM tracks WHERE track_id = ?", (track_id,)):
            return False
        self._q(
            "INSERT INTO ratings (user, track_id, rating, starred, play_count, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(user, track_id) DO UPDATE SET rating = COALESCE(excluded.rating, rating),"
            " starred = CASE WHEN ? IS NULL THEN starred ELSE excluded.starred END,"
            " play_count = COALESCE(excluded.play_count, play_count), updated_at = excluded.updated_at",
            (user, track_id, rating, int(bool(starred)), play_count, time.time(), starred),
        )
        return True

    def favorites(self, user: str, min_rating: int = 4) -> list[tuple[str, float]]:
        """Starred or well-rated tracks, with when that was last said."""
        rows = self._q(
            "SELECT track_id, updated_at FROM ratings WHERE user = ? AND (starred = 1 OR rating >= ?) ORDER BY updated_at DESC",
            (user, min_rating),
        )
        return [(r["track_id"], r["updated_at"]) for r in rows]

    def low_rated(self, user: str, max_rating: int = 2) -> set[str]:
        rows = self._q("SELECT track_id FROM ratings WHERE user = ? AND rating BETWEEN 1 AND ?", (user, max_rating))
        return {r["track_id"] for r in rows}

    # ---- the media server's ids for our tracks
    def set_external_id(self, server: str, external_id: str, track_id: str) -> None:
        self._q(
            "INSERT INTO external_ids (server, external_id, track_id) VALUES (?, ?, ?) ON CONFLICT(server, external_id)"
            " DO UPDATE SET track_id = excluded.track_id",
            (server, external_id, track_id),
        )

    def external_ids(self, track_ids: Iterable[str], server: str = "subsonic") -> dict[str, str]:
        """Our track id -> the media server's song id (the smallest, if a file is there twice); unknown left out."""
        ids = list(dict.fromkeys(track_ids))
        out: dict[str, str] = {}
        for i in range(0, len(ids), 900):  # SQLite's limit on bound parameters
            part = ids[i : i + 900]
            rows = self._q(
                f"SELECT track_id, MIN(external_id) AS external_id FROM external_ids WHERE server = ?"
                f" AND track_id IN ({','.join('?' * len(part))}) GROUP BY track_id",
                [server, *part],
            )
            out.update({r["track_id"]: r["external_id"] for r in rows})
        return out

    def resolve_ids(self, ids: Iterable[str]) -> dict[str, str]:
        """Our track id for each given id, which may be ours or a media server's; unknown ids are left out."""
        ids = list(ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        out = {r["track_id"]: r["track_id"] for r in self._q(f"SELECT track_id FROM tracks WHERE track_id IN ({marks})", ids)}
        for r in self._q(f"SELECT external_id, track_id FROM external_ids WHERE external_id IN ({marks})", ids):
            out.setdefault(r["external_id"], r["track_id"])
        return out

    # ---- playlists the sidecar made (written back to the media server by its adapter)
    def save_playlist(self, playlist_id: str, name: str, user: str | None, track_ids: list[str]) -> None:
        self._q(
            "INSERT INTO playlists (playlist_id, name, user, track_ids, updated_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(playlist_id) DO UPDATE SET name = excluded.name, user = excluded.user,"
            " track_ids = excluded.track_ids, updated_at = excluded.updated_at",
            (playlist_id, name, user, json.dumps(track_ids), time.time()),
        )

    def playlist_tracks(self, playlist_id: str) -> list[str] | None:
        rows = self._q("SELECT track_ids FROM playlists WHERE playlist_id = ?", (playlist_id,))
        return json.loads(rows[0]["track_ids"]) if rows else None

    # ---- the analysed library, for text search, instant playlists and the text projection
    def analysed_tracks(self, with_model: str | None = None) -> list[dict]:
        """Every track MusiCNN has analysed, by track id: its metadata and content hash, `tags` (MusiCNN's
        probabilities) and `features` (the DSP analysis, {} where there is none), parsed. With `with_model`,
        only the tracks that also have that model's result."""
        return list(self.iter_analysed_tracks(with_model))

    def iter_analysed_tracks(self, with_model: str | None = None, page: int = 2000) -> Iterator[dict]:
        """analysed_tracks() a page at a time: at 100k tracks the whole list of parsed rows takes about 0.4 GB."""
        after = ""
        while True:
            rows = self._q(
                "SELECT t.track_id, t.content_hash, t.title, t.artist, t.album, t.genre, t.year, m.tags, d.features"
                " FROM tracks t JOIN embeddings m ON m.track_id = t.track_id AND m.model = 'musicnn' AND m.status = 'done'"
                " LEFT JOIN embeddings d ON d.track_id = t.track_id AND d.model = 'dsp' AND d.status = 'done'"
                " WHERE t.track_id > ? AND (? IS NULL OR EXISTS (SELECT 1 FROM embeddings e WHERE e.track_id = t.track_id"
                " AND e.model = ? AND e.status = 'done')) ORDER BY t.track_id LIMIT ?",
                (after, with_model, with_model, page),
            )
            for r in rows:
                yield dict(r, tags=json.loads(r["tags"]) if r["tags"] else {}, features=json.loads(r["features"]) if r["features"] else {})
            if len(rows) < page:
                return
            after = rows[-1]["track_id"]

    def writes(self) -> tuple[int, int]:
        """A token that changes after any write to the file, by this connection or another; cheap (no scan)."""
        with self._lock:
            return self._db.execute("PRAGMA data_version").fetchone()[0], self._db.total_changes

    def analysis_stamp(self) -> tuple:
        """Changes whenever a track or an analysis does: a cheap check before rebuilding an index. The counts
        scan the tables (0.1 s at 100k tracks), so they are taken again only after some write to the file:
        by this connection (total_changes) or by another one (data_version)."""
        with self._lock:
            writes = self.writes()
            if self._stamp is None or self._stamp[0] != writes:
                stamp = tuple(self._q("SELECT COUNT(*), MAX(updated_at) FROM embeddings WHERE status = 'done'")[0]) + tuple(
                    self._q("SELECT COUNT(*), MAX(updated_at) FROM tracks")[0]
                )
                self._stamp = (writes, stamp)
            return self._stamp[1]

    # ---- reads for the API
    def track(self, track_id: str) -> dict | None:
        rows = self._q("SELECT * FROM tracks WHERE track_id = ?", (track_id,))
        if not rows:
            return None
        t = dict(rows[0])
        t["paths"] = [r["path"] for r in self._q("SELECT path FROM files WHERE track_id = ? ORDER BY path", (track_id,))]
        t["models"] = {
            r["model"]: {
                "status": r["status"], "version": r["model_version"], "error": r["error"], "seconds": r["seconds"],
                "tags": json.loads(r["tags"]) if r["tags"] else None,
                "features": json.loads(r["features"]) if r["features"] else None,
            }
            for r in self._q("SELECT * FROM embeddings WHERE track_id = ? ORDER BY model", (track_id,))
        }
        return t

    def tracks_brief(self, track_ids: Iterable[str]) -> dict[str, dict]:
        ids = list(track_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._q(
            f"SELECT t.track_id, t.title, t.artist, t.album, t.duration_s, MIN(f.path) AS path, {SERVER_ID} FROM tracks t"
            f" LEFT JOIN files f USING (track_id) WHERE t.track_id IN ({marks}) GROUP BY t.track_id",
            ids,
        )
        return {r["track_id"]: dict(r) for r in rows}

    def search(self, query: str, limit: int = 50) -> list[dict]:
        like = f"%{query}%"
        rows = self._q(
            f"SELECT t.track_id, t.title, t.artist, t.album, t.duration_s, MIN(f.path) AS path, {SERVER_ID} FROM tracks t"
            " JOIN files f USING (track_id) WHERE t.title LIKE ? OR t.artist LIKE ? OR t.album LIKE ? OR f.path LIKE ?"
            " GROUP BY t.track_id ORDER BY t.artist, t.album, t.title LIMIT ?",
            (like, like, like, like, limit),
        )
        return [dict(r) for r in rows]

    def counts(self) -> dict[str, Any]:
        per_model = {
            r["model"]: {"done": r["done"], "failed": r["failed"]}
            for r in self._q(
                "SELECT model, SUM(status = 'done') AS done, SUM(status = 'failed') AS failed FROM embeddings GROUP BY model"
            )
        }
        return {
            "tracks": self._q("SELECT COUNT(*) AS n FROM tracks")[0]["n"],
            "files": self._q("SELECT COUNT(*) AS n FROM files")[0]["n"],
            "failed_files": self._q("SELECT COUNT(*) AS n FROM failures")[0]["n"],
            "models": per_model,
        }


class _Transaction:
    def __init__(self, catalog: Catalog):
        self.c = catalog

    def __enter__(self) -> sqlite3.Connection:
        self.c._lock.acquire()
        self.c._db.execute("BEGIN IMMEDIATE")
        return self.c._db

    def __exit__(self, exc_type, *_):
        try:
            self.c._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.c._lock.release()

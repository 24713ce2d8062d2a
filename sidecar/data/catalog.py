"""The catalog: what the sidecar knows about each track. An SQLite file beside the vectors by default; a
PostgreSQL database when several processes share it (settings.catalog_url). The tables and their history are in
sidecar/data/schema.py; the SQL here is written once for both (sidecar/data/sql.py says what differs).

It is long because it is the one place where the catalog's SQL is written: whatever reads or writes the
catalog does it through a named method here, grouped by area (`# ----` headings).
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from sidecar.data.ids import MEDIA_SERVER
from sidecar.data.recordings import (
    CONTOUR, DESCRIPTORS, KEYS_MODEL, Keys, candidate_ranges, contour, descriptors, group_roots, same_recording,
)
from sidecar.data.schema import migrate
from sidecar.data.sql import Database, open_database

DUPLICATES_LOCK = "duplicates"  # held while tracks are grouped into recordings
# the media server's song id of a track, as a column of a query over `tracks t`
SERVER_ID = f"(SELECT MIN(e.external_id) FROM external_ids e WHERE e.track_id = t.track_id AND e.server = '{MEDIA_SERVER}') AS server_id"


@dataclass(frozen=True)
class FileRow:
    path: str
    track_id: str
    size: int | None
    mtime_ns: int | None


class Catalog:
    """Thread-safe; every call is a short transaction."""

    def __init__(self, target: str | Path, *, allow_duplicate_recordings: bool = False):
        self.db: Database = open_database(target)
        # the setting lists apply (sidecar.data.recordings.Recordings.of): may one list hold a recording twice
        self.allow_duplicate_recordings = allow_duplicate_recordings
        self.writer = f"{socket.gethostname()}:{os.getpid()}"  # recorded with each analysis: which process made it
        self._stamp: tuple | None = None  # (writes, analysis_stamp) when last counted
        try:
            migrate(self.db)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def _tx(self):
        return self.db.transaction()

    def _q(self, sql: str, args: Iterable[Any] = ()) -> list:
        return self.db.query(sql, args)

    # ---- files and identity
    def file(self, path: str) -> FileRow | None:
        rows = self._q("SELECT path, track_id, size, mtime_ns FROM files WHERE path = ?", (path,))
        return FileRow(**dict(rows[0])) if rows else None

    def files_under(self, root: str) -> dict[str, tuple[int | None, int | None]]:
        prefix = root.rstrip("/") + "/"
        rows = self._q(
            "SELECT path, size, mtime_ns FROM files WHERE substr(path, 1, CAST(? AS INTEGER)) = ? "
            "UNION ALL SELECT path, size, mtime_ns FROM failures WHERE substr(path, 1, CAST(? AS INTEGER)) = ?",
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
            # on a shared catalog: two workers resolving the same audio take turns (one makes the track, the other
            # joins it), and one deleting the track (its last file gone) waits for us (FOR UPDATE)
            db.lock(f"audio:{content_hash}")
            same_audio = db.execute(
                "SELECT track_id FROM tracks WHERE content_hash = ? ORDER BY created_at LIMIT 1 FOR UPDATE", (content_hash,)
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
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(track_id) DO UPDATE SET"
                " content_hash = excluded.content_hash,"
                " duration_s = excluded.duration_s, sample_rate = excluded.sample_rate, channels = excluded.channels,"
                " title = excluded.title, artist = excluded.artist, album = excluded.album, genre = excluded.genre,"
                " year = excluded.year, updated_at = excluded.updated_at",
                (track_id, content_hash, *fields.values(), now, now),
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
    def _orphan_or_none(db, track_id: str) -> str | None:
        left = db.execute("SELECT 1 FROM files WHERE track_id = ? LIMIT 1", (track_id,)).fetchone()
        return None if left else track_id

    def delete_track(self, track_id: str) -> None:
        """Called after the track's vectors were deleted from the store."""
        with self._tx() as db:
            db.lock(DUPLICATES_LOCK)  # before any row lock, as record_embedding takes it
            db.execute("SELECT track_id FROM tracks WHERE track_id = ? FOR UPDATE", (track_id,))  # see resolve_track
            if db.execute("SELECT 1 FROM files WHERE track_id = ? LIMIT 1", (track_id,)).fetchone() is None:
                self._regroup(db, self._groups_of(db, [track_id]) - {track_id})  # the next of its group leads
                db.execute(
                    "INSERT INTO vector_log (model, track_id, op, at) SELECT model, track_id, 'delete', ? FROM embeddings"
                    " WHERE track_id = ? AND status = 'done'", (time.time(), track_id),
                )
                db.execute("DELETE FROM tracks WHERE track_id = ?", (track_id,))

    # ---- embeddings
    def embedding_state(self, track_id: str) -> dict[str, Any]:
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
        """The result of one model on one track, after its vector is stored (or the reason it failed). A stored
        vector is also logged, for processes that keep a copy of the vectors (see vector_changes). A DSP result's
        loudness contour is kept apart, with what finds its other files (sidecar/data/recordings.py)."""
        now = time.time()
        kept = features if features is None or CONTOUR not in features else {k: v for k, v in features.items() if k != CONTOUR}
        with self._tx() as db:
            if model == KEYS_MODEL:  # first, before any row lock: workers storing two copies at once take turns (the
                db.lock(DUPLICATES_LOCK)  # write token's row serialises them today too; this does not lean on that)
            db.execute(
                "INSERT INTO embeddings (track_id, model, model_version, content_hash, status, error, tags, features, seconds,"
                " updated_at, analysed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(track_id, model) DO UPDATE SET"
                " model_version = excluded.model_version, content_hash = excluded.content_hash, status = excluded.status,"
                " error = excluded.error, tags = excluded.tags, features = excluded.features, seconds = excluded.seconds,"
                " updated_at = excluded.updated_at, analysed_by = excluded.analysed_by",
                (track_id, model, version, content_hash, "failed" if error else "done", error,
                 json.dumps(tags) if tags is not None else None, json.dumps(kept) if kept is not None else None,
                 seconds, now, self.writer),
            )
            if error is None:
                db.execute("INSERT INTO vector_log (model, track_id, op, at) VALUES (?, ?, 'upsert', ?)", (model, track_id, now))
            if model == KEYS_MODEL:  # in this transaction: an event that comes back after a crash runs no model again
                self._place_recording(db, track_id, features if error is None else None)

    # ---- the same recording in other files (sidecar/data/recordings.py)
    def recording_groups(self) -> dict[str, str]:
        """{track id: the first track of its group} for every track that has another file of its recording."""
        rows = self._q("SELECT track_id, duplicate_of FROM tracks WHERE duplicate_of IS NOT NULL")
        return {**{r["duplicate_of"]: r["duplicate_of"] for r in rows}, **{r["track_id"]: r["duplicate_of"] for r in rows}}

    def _place_recording(self, db, track_id: str, features: dict | None) -> None:
        """Key the track by its DSP result (None: it has none now) and regroup it, its old group and the groups of
        the tracks it matches: SQL narrows the candidates by the duration's index and the descriptors' ranges, then
        the rule decides. The caller holds DUPLICATES_LOCK."""
        affected = self._groups_of(db, [track_id])
        row = db.execute("SELECT duration_s FROM tracks WHERE track_id = ?", (track_id,)).fetchone()
        desc = descriptors(features)
        if row is None or row["duration_s"] is None or desc is None:
            db.execute("DELETE FROM duplicate_keys WHERE track_id = ?", (track_id,))
        else:
            keys = Keys(float(row["duration_s"]), desc, contour(features.get(CONTOUR)))
            cols = ", ".join(DESCRIPTORS)
            db.execute(
                f"INSERT INTO duplicate_keys (track_id, duration_s, {cols}, contour) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(track_id) DO UPDATE SET duration_s = excluded.duration_s, contour = excluded.contour, "
                + ", ".join(f"{c} = excluded.{c}" for c in DESCRIPTORS),
                (track_id, keys.duration, *desc, features.get(CONTOUR)),
            )
            near = " AND ".join(f"{c} BETWEEN ? AND ?" for c in ("duration_s",) + DESCRIPTORS)
            rows = db.execute(
                f"SELECT track_id, duration_s, {cols}, contour FROM duplicate_keys WHERE {near} AND track_id <> ?",
                (*(v for r in candidate_ranges(keys.duration, desc) for v in r), track_id),
            ).fetchall()
            matches = [r["track_id"] for r in rows if same_recording(keys, self._keys(r))]
            affected |= self._groups_of(db, matches)
        self._regroup(db, affected | {track_id})

    @staticmethod
    def _keys(row) -> Keys:
        return Keys(row["duration_s"], tuple(row[c] for c in DESCRIPTORS), contour(row["contour"]))

    @staticmethod
    def _groups_of(db, track_ids: list[str]) -> set[str]:
        """Every track of the groups of these tracks, themselves included."""
        if not track_ids:
            return set()
        marks = ",".join("?" * len(track_ids))
        roots = [r["root"] for r in db.execute(
            f"SELECT COALESCE(duplicate_of, track_id) AS root FROM tracks WHERE track_id IN ({marks})", track_ids)]
        found = set(track_ids)
        if roots:
            marks = ",".join("?" * len(roots))
            found |= {r["track_id"] for r in db.execute(
                f"SELECT track_id FROM tracks WHERE track_id IN ({marks}) OR duplicate_of IN ({marks})", [*roots, *roots])}
        return found

    @classmethod
    def _regroup(cls, db, track_ids: set[str]) -> None:
        """Group these tracks (whole groups) anew by the rule: each one's duplicate_of becomes its group's first track
        (the earliest added), NULL for that one and for tracks alone."""
        if not track_ids:
            return
        marks = ",".join("?" * len(track_ids))
        rows = db.execute(
            f"SELECT t.track_id, t.created_at, t.duplicate_of, k.duration_s, {', '.join('k.' + c for c in DESCRIPTORS)}, k.contour"
            f" FROM tracks t LEFT JOIN duplicate_keys k ON k.track_id = t.track_id WHERE t.track_id IN ({marks})",
            list(track_ids),
        ).fetchall()
        rows = sorted(rows, key=lambda r: (r["created_at"], r["track_id"]))
        keyed = [r for r in rows if r["duration_s"] is not None]
        roots = group_roots([cls._keys(r) for r in keyed])
        lead = {r["track_id"]: keyed[j]["track_id"] for r, j in zip(keyed, roots)}
        for r in rows:
            new = lead.get(r["track_id"], r["track_id"])
            new = None if new == r["track_id"] else new
            if new != r["duplicate_of"]:
                db.execute("UPDATE tracks SET duplicate_of = ? WHERE track_id = ?", (new, r["track_id"]))

    # ---- the vector log: what other processes' mirrors must apply
    def vector_log_head(self) -> int:
        """The newest entry's number (0 for none): where a process that just loaded every vector starts following."""
        return self._q("SELECT COALESCE(MAX(seq), 0) AS n FROM vector_log")[0]["n"]

    def vector_changes(self, after: int, limit: int = 10000) -> list[dict]:
        """Vectors stored or deleted since entry `after`, oldest first: {seq, model, track_id, op}."""
        rows = self._q("SELECT seq, model, track_id, op FROM vector_log WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return [dict(r) for r in rows]

    def prune_vector_log(self, older_than_s: float = 7 * 86400) -> None:
        """Forget entries older than any running process can need (one that starts loads every vector anyway)."""
        self._q("DELETE FROM vector_log WHERE at < ?", (time.time() - older_than_s,))

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
            for i in range(0, len(paths), 500):  # bounded parameter lists, in both databases
                part = paths[i : i + 500]
                db.execute(f"UPDATE files SET size = NULL WHERE path IN ({','.join('?' * len(part))})", part)
        return sorted(set(paths))

    # ---- replays (re-embeds)
    def start_replay(self, replay_id: str, group: str, models: list[str], scope: str | None = None) -> dict:
        self._q(
            "INSERT INTO replays (replay_id, consumer_group, models, scope, status, started_at)"
            " VALUES (?, ?, ?, ?, 'running', ?) ON CONFLICT (replay_id) DO NOTHING",
            (replay_id, group, json.dumps(models), scope, time.time()),
        )
        return self.replay(replay_id)

    def finish_replay(self, replay_id: str, status: str = "done") -> None:
        self._q("UPDATE replays SET status = ?, finished_at = ? WHERE replay_id = ?", (status, time.time(), replay_id))

    def replay(self, replay_id: str) -> dict | None:
        rows = self._q("SELECT * FROM replays WHERE replay_id = ?", (replay_id,))
        return dict(rows[0], models=json.loads(rows[0]["models"])) if rows else None

    def replays(self, status: str | None = None) -> list[dict]:
        rows = self._q("SELECT * FROM replays WHERE CAST(? AS TEXT) IS NULL OR status = ? ORDER BY started_at", (status, status))
        return [dict(r, models=json.loads(r["models"])) for r in rows]

    # ---- listening history: plays, stars, ratings (from scrobbles and the media server)
    def add_listen(self, user: str, track_id: str, played_at: float, *, submission: bool = True, source: str = "") -> bool:
        """Record a play; a second report of the same play is ignored. False if the track is unknown."""
        if not self._q("SELECT 1 FROM tracks WHERE track_id = ?", (track_id,)):
            return False
        self._q(
            'INSERT INTO listens ("user", track_id, played_at, submission, source) VALUES (?, ?, ?, ?, ?)'
            ' ON CONFLICT ("user", track_id, played_at) DO NOTHING',
            (user, track_id, played_at, int(submission), source),
        )
        return True

    def recent_listens(self, user: str, limit: int = 50, *, submissions_only: bool = True) -> list[tuple[str, float]]:
        rows = self._q(
            'SELECT track_id, MAX(played_at) AS played_at FROM listens WHERE "user" = ? AND (submission = 1 OR ? = 0)'
            " GROUP BY track_id ORDER BY played_at DESC LIMIT ?",
            (user, int(submissions_only), limit),
        )
        return [(r["track_id"], r["played_at"]) for r in rows]

    def played_tracks(self, user: str) -> set[str]:
        return {r["track_id"] for r in self._q('SELECT DISTINCT track_id FROM listens WHERE "user" = ?', (user,))} | {
            r["track_id"] for r in self._q('SELECT track_id FROM ratings WHERE "user" = ? AND play_count > 0', (user,))
        }

    def set_rating(
        self, user: str, track_id: str, *, rating: int | None = None, starred: bool | None = None, play_count: int | None = None
    ) -> bool:
        """Update what is given, keep the rest. False if the track is unknown."""
        if not self._q("SELECT 1 FROM tracks WHERE track_id = ?", (track_id,)):
            return False
        self._q(
            'INSERT INTO ratings ("user", track_id, rating, starred, play_count, updated_at) VALUES (?, ?, ?, ?, ?, ?)'
            ' ON CONFLICT ("user", track_id) DO UPDATE SET rating = COALESCE(excluded.rating, ratings.rating),'
            " starred = CASE WHEN CAST(? AS INTEGER) IS NULL THEN ratings.starred ELSE excluded.starred END,"
            " play_count = COALESCE(excluded.play_count, ratings.play_count), updated_at = excluded.updated_at",
            (user, track_id, rating, int(bool(starred)), play_count, time.time(), starred),
        )
        return True

    def favorites(self, user: str, min_rating: int = 4) -> list[tuple[str, float]]:
        """Starred or well-rated tracks, with when that was last said."""
        rows = self._q(
            'SELECT track_id, updated_at FROM ratings WHERE "user" = ? AND (starred = 1 OR rating >= ?) ORDER BY updated_at DESC',
            (user, min_rating),
        )
        return [(r["track_id"], r["updated_at"]) for r in rows]

    def low_rated(self, user: str, max_rating: int = 2) -> set[str]:
        rows = self._q('SELECT track_id FROM ratings WHERE "user" = ? AND rating BETWEEN 1 AND ?', (user, max_rating))
        return {r["track_id"] for r in rows}

    # ---- the media server's ids for our tracks
    def set_external_id(self, server: str, external_id: str, track_id: str) -> None:
        self._q(
            "INSERT INTO external_ids (server, external_id, track_id) VALUES (?, ?, ?) ON CONFLICT(server, external_id)"
            " DO UPDATE SET track_id = excluded.track_id",
            (server, external_id, track_id),
        )

    def external_ids(self, track_ids: Iterable[str], server: str = MEDIA_SERVER) -> dict[str, str]:
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
            'INSERT INTO playlists (playlist_id, name, "user", track_ids, updated_at) VALUES (?, ?, ?, ?, ?)'
            ' ON CONFLICT(playlist_id) DO UPDATE SET name = excluded.name, "user" = excluded."user",'
            " track_ids = excluded.track_ids, updated_at = excluded.updated_at",
            (playlist_id, name, user, json.dumps(track_ids), time.time()),
        )

    def playlist_tracks(self, playlist_id: str) -> list[str] | None:
        rows = self._q("SELECT track_ids FROM playlists WHERE playlist_id = ?", (playlist_id,))
        return json.loads(rows[0]["track_ids"]) if rows else None

    # ---- media server: song ids, files to match its songs to, its user's ratings, playlists written to it
    def _rows_in(self, sql: str, args: list, values: Iterable[str], chunk: int = 500) -> list:
        """`sql` run for `values` a chunk at a time (a database limits a statement's parameters): its `{marks}`
        becomes the chunk's placeholders, bound after `args`."""
        values = list(dict.fromkeys(values))
        out: list = []
        for i in range(0, len(values), chunk):
            part = values[i : i + chunk]
            out += self._q(sql.format(marks=",".join("?" * len(part))), [*args, *part])
        return out

    def tracks_by_external_id(self, server: str = MEDIA_SERVER, among: Iterable[str] | None = None) -> dict[str, str]:
        """The server's song id -> our track id: every one, or those of `among` the server's ids are."""
        if among is None:
            rows = self._q("SELECT external_id, track_id FROM external_ids WHERE server = ?", (server,))
        else:
            rows = self._rows_in("SELECT external_id, track_id FROM external_ids WHERE server = ? AND external_id IN ({marks})", [server], among)
        return {r["external_id"]: r["track_id"] for r in rows}

    def forget_external_ids(self, external_ids: Iterable[str], server: str = MEDIA_SERVER) -> None:
        self._rows_in("DELETE FROM external_ids WHERE server = ? AND external_id IN ({marks})", [server], external_ids)

    def track_ids_at(self, paths: Iterable[str]) -> dict[str, str]:
        """path -> track id, for the paths the catalog knows."""
        return {r["path"]: r["track_id"] for r in self._rows_in("SELECT path, track_id FROM files WHERE path IN ({marks})", [], paths)}

    def files_added_since(self, cursor: int | None, limit: int = 5000) -> tuple[list[dict], int]:
        """(file rows added after `cursor`, with their track's tags, oldest first; the cursor to pass next).
        The cursor is opaque; None gives no rows, only the cursor of now."""
        # the order rows were added in: SQLite's rowid, PostgreSQL's identity column (schema step 4); a moved file
        # keeps its row
        n = "seq" if self.db.dialect == "postgres" else "rowid"
        if cursor is None:
            return [], self._q(f"SELECT COALESCE(MAX({n}), 0) AS m FROM files")[0]["m"]
        rows = self._q(
            f"SELECT f.{n} AS n, f.path, f.track_id, t.title, t.album, t.artist, t.duration_s FROM files f"
            f" JOIN tracks t USING (track_id) WHERE f.{n} > ? ORDER BY f.{n} LIMIT ?",
            (cursor, limit),
        )
        return [{k: r[k] for k in r.keys() if k != "n"} for r in rows], rows[-1]["n"] if rows else cursor

    def titled_tracks(self) -> list[dict]:
        """track_id, title, artist, album and duration_s of every track with a title: what songs are matched by."""
        return [dict(r) for r in self._q("SELECT track_id, title, artist, album, duration_s FROM tracks WHERE title IS NOT NULL")]

    def user_ratings(self, user: str) -> dict[str, tuple[int | None, bool, int | None]]:
        """Our track id -> (rating, starred, play count) of one user."""
        rows = self._q('SELECT track_id, rating, starred, play_count FROM ratings WHERE "user" = ?', (user,))
        return {r["track_id"]: (r["rating"], bool(r["starred"]), r["play_count"]) for r in rows}

    def playlists(self, user: str | None = None) -> list[dict]:
        """The playlists the sidecar wrote (all, or one user's), by name, with their track ids parsed and their
        refresh interval (None: not generated on a schedule)."""
        where, args = ('WHERE "user" = ?', (user,)) if user is not None else ("", ())
        rows = self._q(f'SELECT playlist_id, name, "user", track_ids, updated_at, refresh_interval_s FROM playlists {where}'
                       " ORDER BY name, playlist_id", args)
        return [dict(r, track_ids=json.loads(r["track_ids"])) for r in rows]

    def schedule_playlist(self, playlist_id: str, interval_s: float | None, recommendation: dict | None = None,
                          last_run: float | None = None) -> None:
        """Regenerate the playlist from this recommendation request every interval_s (last run: `last_run`);
        interval_s None: no longer."""
        self._q("UPDATE playlists SET refresh_interval_s = ?, recommendation = ?, last_run = ? WHERE playlist_id = ?",
                (interval_s, json.dumps(recommendation) if interval_s else None, last_run if interval_s else None, playlist_id))

    def playlist_schedules(self, playlist_id: str | None = None) -> list[dict]:
        """Every generated playlist (or this one, if it is): id, name, user, refresh_interval_s, last_run and its
        recommendation request, parsed."""
        where, args = ("AND playlist_id = ?", (playlist_id,)) if playlist_id is not None else ("", ())
        rows = self._q('SELECT playlist_id, name, "user", refresh_interval_s, last_run, recommendation FROM playlists'
                       f" WHERE refresh_interval_s IS NOT NULL {where} ORDER BY playlist_id", args)
        return [dict(r, recommendation=json.loads(r["recommendation"])) for r in rows]

    def claim_playlist_run(self, playlist_id: str, now: float, *, force: bool = False) -> bool:
        """Take the playlist's next run if it is due (or `force`), so that of several processes checking the
        same schedules one regenerates it: True for the one that took it."""
        rows = self._q(
            "UPDATE playlists SET last_run = ? WHERE playlist_id = ? AND refresh_interval_s IS NOT NULL"
            " AND (? OR COALESCE(last_run, 0) + refresh_interval_s <= ?) RETURNING playlist_id",
            (now, playlist_id, force, now),
        )
        return bool(rows)

    def delete_playlist(self, playlist_id: str) -> None:
        self._q("DELETE FROM playlists WHERE playlist_id = ?", (playlist_id,))

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
                " WHERE t.track_id > ? AND (CAST(? AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM embeddings e WHERE e.track_id = t.track_id"
                " AND e.model = ? AND e.status = 'done')) ORDER BY t.track_id LIMIT ?",
                (after, with_model, with_model, page),
            )
            for r in rows:
                yield dict(r, tags=json.loads(r["tags"]) if r["tags"] else {}, features=json.loads(r["features"]) if r["features"] else {})
            if len(rows) < page:
                return
            after = rows[-1]["track_id"]

    def writes(self) -> tuple:
        """A token that changes after any committed write, by this process or another; cheap (no scan)."""
        return self.db.writes()

    def analysis_stamp(self) -> tuple:
        """Changes whenever a track or an analysis does: a cheap check before rebuilding an index. The counts
        scan the tables (0.1 s at 100k tracks), so they are taken again only after some write (`writes`)."""
        writes = self.writes()
        if self._stamp is None or self._stamp[0] != writes:
            e = self._q("SELECT COUNT(*) AS n, MAX(updated_at) AS t FROM embeddings WHERE status = 'done'")[0]
            t = self._q("SELECT COUNT(*) AS n, MAX(updated_at) AS t FROM tracks")[0]
            self._stamp = (writes, (e["n"], e["t"], t["n"], t["t"]))
        return self._stamp[1]

    # ---- exploration and clustering: stamps that tell when a cache is stale, labels, tags, plays, word search
    def tracks_stamp(self) -> tuple:
        """Changes when a track is added, removed or retagged (the artists' total length catches a retag that
        kept updated_at)."""
        r = self._q("SELECT COUNT(*) AS n, MAX(updated_at) AS t, COALESCE(SUM(LENGTH(artist)), 0) AS a FROM tracks")[0]
        return r["n"], r["t"], r["a"]

    def model_stamp(self, model: str) -> tuple:
        """Changes when one of the model's results is written or removed."""
        r = self._q("SELECT COUNT(*) AS n, MAX(updated_at) AS t FROM embeddings WHERE model = ? AND status = 'done'", (model,))[0]
        return r["n"], r["t"]

    def track_labels(self) -> dict[str, dict]:
        """Every track's title, artist, album and genre, by track id."""
        return {r["track_id"]: dict(r) for r in self._q("SELECT track_id, title, artist, album, genre FROM tracks")}

    def tag_versions(self, track_ids: Iterable[str] | None = None) -> dict[str, float]:
        """When MusiCNN's result was written, for every track it analysed or for those of `track_ids`: a parse of
        a track's tags is current while this stays."""
        sql = "SELECT track_id, updated_at FROM embeddings WHERE model = 'musicnn' AND status = 'done'"
        rows = self._q(sql) if track_ids is None else self._rows_in(sql + " AND track_id IN ({marks})", [], track_ids)
        return {r["track_id"]: r["updated_at"] for r in rows}

    def musicnn_tags(self, track_ids: Iterable[str]) -> dict[str, dict[str, float]]:
        """MusiCNN's tag probabilities of those of the tracks that have them, parsed."""
        rows = self._rows_in(
            "SELECT track_id, tags FROM embeddings WHERE model = 'musicnn' AND status = 'done' AND tags IS NOT NULL"
            " AND track_id IN ({marks})", [], track_ids,
        )
        return {r["track_id"]: json.loads(r["tags"]) for r in rows}

    def plays(self, user: str, limit: int) -> list[tuple[str, float]]:
        """The user's last `limit` plays, newest first, every play apart (recent_listens keeps one per track)."""
        rows = self._q(
            'SELECT track_id, played_at FROM listens WHERE "user" = ? AND submission = 1 ORDER BY played_at DESC LIMIT ?', (user, limit)
        )
        return [(r["track_id"], r["played_at"]) for r in rows]

    def shown_ids(self, track_ids: Iterable[str]) -> dict[str, str]:
        """Our track id -> the id answers show (sidecar.data.ids.shown_id's rule, for tracks read without their
        brief): the media server's where known, else ours."""
        ids = list(dict.fromkeys(track_ids))
        known = self.external_ids(ids, MEDIA_SERVER)
        return {t: known.get(t, t) for t in ids}

    def search_words(self, words: list[str], limit: int, offset: int = 0) -> list[dict]:
        """Tracks whose title, artist or album holds every one of `words` (ignoring case), by artist, album and
        title, with `server_id` as tracks_brief has it."""
        like = "(LOWER(t.title) LIKE ? ESCAPE '\\' OR LOWER(t.artist) LIKE ? ESCAPE '\\' OR LOWER(t.album) LIKE ? ESCAPE '\\')"
        escaped = ["%" + w.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%" for w in words]
        rows = self._q(
            f"SELECT t.track_id, t.title, t.artist, t.album, {SERVER_ID} FROM tracks t WHERE {' AND '.join([like] * len(words)) or '1 = 1'}"
            " ORDER BY t.artist IS NULL, t.artist, t.album, t.title, t.track_id LIMIT ? OFFSET ?",
            [*(w for w in escaped for _ in range(3)), limit, offset],
        )
        return [dict(r) for r in rows]

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
        like = f"%{query.lower()}%"  # LIKE ignores case in SQLite, not in PostgreSQL: compare lower case in both
        rows = self._q(
            f"SELECT t.track_id, t.title, t.artist, t.album, t.duration_s, MIN(f.path) AS path, {SERVER_ID} FROM tracks t"
            " JOIN files f USING (track_id) WHERE LOWER(t.title) LIKE ? OR LOWER(t.artist) LIKE ? OR LOWER(t.album) LIKE ?"
            " OR LOWER(f.path) LIKE ?"
            " GROUP BY t.track_id ORDER BY t.artist, t.album, t.title LIMIT ?",
            (like, like, like, like, limit),
        )
        return [dict(r) for r in rows]

    def counts(self) -> dict[str, Any]:
        per_model = {
            r["model"]: {"done": r["done"], "failed": r["failed"]}
            for r in self._q(
                "SELECT model, SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END) AS done,"
                " SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed FROM embeddings GROUP BY model"
            )
        }
        return {
            "tracks": self._q("SELECT COUNT(*) AS n FROM tracks")[0]["n"],
            "files": self._q("SELECT COUNT(*) AS n FROM files")[0]["n"],
            "failed_files": self._q("SELECT COUNT(*) AS n FROM failures")[0]["n"],
            "models": per_model,
        }

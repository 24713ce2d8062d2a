"""The catalog's schema, as numbered migrations: one path for SQLite and PostgreSQL alike.

`migrate(db)` brings any catalog up to the newest version, each step in its own transaction, and records the
version in `schema_version`. A step is SQL that both accept, or a pair (SQLite, PostgreSQL) where they differ.
Add a step at the end; never edit one that has shipped.

The tables:
- tracks: stable identity (track_id), the content hash of its audio, duration and tags;
- files: where a track lives (path -> track_id); a move changes this row and nothing else;
- embeddings: per (track, model) the content hash and model version that produced the stored vector, or the
  reason it failed; a track is embedded again only when either differs;
- failures: files that could not be decoded, with the reason;
- replays, listens, ratings, external_ids (the media server's song ids), playlists (with the schedule of a
  generated one: its interval, recommendation request and last run);
- duplicate_keys: what finds the same recording in other files (tracks.duplicate_of, sidecar/data/recordings.py);
- vector_log: every vector written or deleted, in order, so that processes which did not write it (API
  replicas beside ingest workers) bring their in-memory copy up to date.
"""
from __future__ import annotations

from sidecar.data.sql import Database

BASE = """
CREATE TABLE IF NOT EXISTS tracks (
    track_id TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    duration_s DOUBLE PRECISION,
    sample_rate INTEGER,
    channels INTEGER,
    title TEXT, artist TEXT, album TEXT, genre TEXT, year TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS tracks_hash ON tracks(content_hash);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    track_id TEXT NOT NULL REFERENCES tracks(track_id) ON DELETE CASCADE,
    size BIGINT, mtime_ns BIGINT
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
    seconds DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (track_id, model)
);
CREATE TABLE IF NOT EXISTS replays (
    replay_id TEXT PRIMARY KEY,
    consumer_group TEXT NOT NULL,
    models TEXT NOT NULL,
    scope TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'cancelled', 'failed')),
    started_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS listens (
    "user" TEXT NOT NULL,
    track_id TEXT NOT NULL REFERENCES tracks(track_id) ON DELETE CASCADE,
    played_at DOUBLE PRECISION NOT NULL,
    submission INTEGER NOT NULL DEFAULT 1,
    source TEXT,
    PRIMARY KEY ("user", track_id, played_at)
);
CREATE INDEX IF NOT EXISTS listens_recent ON listens("user", played_at DESC);
CREATE TABLE IF NOT EXISTS ratings (
    "user" TEXT NOT NULL,
    track_id TEXT NOT NULL REFERENCES tracks(track_id) ON DELETE CASCADE,
    rating INTEGER CHECK (rating BETWEEN 0 AND 5),
    starred INTEGER NOT NULL DEFAULT 0,
    play_count INTEGER,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY ("user", track_id)
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
    "user" TEXT,
    track_ids TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    size BIGINT, mtime_ns BIGINT,
    reason TEXT NOT NULL,
    failed_at DOUBLE PRECISION NOT NULL
);
"""

# The write token of a shared catalog: a counter that a trigger bumps in the writing transaction, so it moves
# exactly when the write becomes visible (a sequence would move before the commit, and a reader could cache
# the old rows under the new token). SQLite has its own token (PRAGMA data_version).
_PG_STAMP = """
CREATE TABLE IF NOT EXISTS catalog_stamp (id INTEGER PRIMARY KEY CHECK (id = 1), writes BIGINT NOT NULL);
INSERT INTO catalog_stamp (id, writes) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION catalog_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- once per transaction: a bulk load's many statements would otherwise update this one row thousands of times
  -- in one transaction, each update slower than the last (100k inserts: minutes instead of seconds)
  IF current_setting('sidecar.stamped', true) IS DISTINCT FROM 'yes' THEN
    PERFORM set_config('sidecar.stamped', 'yes', true);
    UPDATE catalog_stamp SET writes = writes + 1 WHERE id = 1;
  END IF;
  RETURN NULL;
END $$;
""" + "".join(
    f"CREATE OR REPLACE TRIGGER {t}_bump AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION catalog_bump();\n"
    for t in ("tracks", "files", "embeddings", "external_ids", "ratings", "listens", "playlists", "failures")
)

_VECTOR_LOG = """
CREATE TABLE IF NOT EXISTS vector_log (
    seq {seq},
    model TEXT NOT NULL,
    track_id TEXT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS vector_log_at ON vector_log(at);
"""

# duplicate_of: the first track of the track's recording group (NULL: none, or the first itself). duplicate_keys:
# per track with a DSP result, what the rule compares: the duration and descriptors as columns, so that SQL narrows
# the candidates (their index: the duration's range, the descriptors read from the index itself), and the loudness
# contour, read only for the few left
_DUPLICATES = """
ALTER TABLE tracks ADD COLUMN duplicate_of TEXT;
CREATE INDEX IF NOT EXISTS tracks_duplicate_of ON tracks(duplicate_of, track_id) WHERE duplicate_of IS NOT NULL;
CREATE TABLE IF NOT EXISTS duplicate_keys (
    track_id TEXT PRIMARY KEY REFERENCES tracks(track_id) ON DELETE CASCADE,
    duration_s DOUBLE PRECISION NOT NULL,
    dynamics_db DOUBLE PRECISION NOT NULL,
    percussiveness DOUBLE PRECISION NOT NULL,
    log_brightness DOUBLE PRECISION NOT NULL,
    key_strength DOUBLE PRECISION NOT NULL,
    contour TEXT
);
CREATE INDEX IF NOT EXISTS duplicate_keys_near ON duplicate_keys(duration_s, dynamics_db, percussiveness, log_brightness, key_strength);
"""

# (version, what it does, SQL for both or {dialect: SQL})
MIGRATIONS: list[tuple[int, str, str | dict[str, str]]] = [
    (1, "the base tables", BASE),
    (2, "the vector log, and the write token of a shared catalog", {
        "sqlite": _VECTOR_LOG.format(seq="INTEGER PRIMARY KEY AUTOINCREMENT"),
        "postgres": _VECTOR_LOG.format(seq="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY") + _PG_STAMP,
    }),
    (3, "which process analysed each result (host:pid), for clusters of workers",
     "ALTER TABLE embeddings ADD COLUMN analysed_by TEXT"),
    (4, "file rows in the order they were added (SQLite has it already: its rowid)", {
        "sqlite": "",
        "postgres": "ALTER TABLE files ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY",
    }),
    (5, "the same recording in other files (sidecar/data/recordings.py): each track's group, and the values it is found by",
     _DUPLICATES),
    (6, "generated playlists' schedules, shared by every API process (they were a JSON file in one data dir)", """
ALTER TABLE playlists ADD COLUMN refresh_interval_s DOUBLE PRECISION;
ALTER TABLE playlists ADD COLUMN recommendation TEXT;
ALTER TABLE playlists ADD COLUMN last_run DOUBLE PRECISION
"""),
]
LATEST = MIGRATIONS[-1][0]


def version(db: Database) -> int:
    db.script("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    rows = db.query("SELECT MAX(version) AS v FROM schema_version")
    if rows and rows[0]["v"] is not None:
        return rows[0]["v"]
    if db.dialect == "sqlite":
        _adopt_sqlite_catalog(db)
    return 0


def _adopt_sqlite_catalog(db: Database) -> None:
    """A catalog from before schema_version (PRAGMA user_version 0 or 1): the base step creates only what is
    missing, but cannot add the column that version 0 lacked."""
    columns = db.query("PRAGMA table_info(replays)")
    if columns and not any(r["name"] == "scope" for r in columns):
        db.query("ALTER TABLE replays ADD COLUMN scope TEXT")


def stored_version(db: Database) -> int | None:
    """The catalog's schema version as recorded, or None for a database with no catalog yet; writes nothing."""
    try:
        return db.query("SELECT MAX(version) AS v FROM schema_version")[0]["v"]
    except Exception:  # no schema_version table: an empty database (each dialect raises its own error)
        return None


def migrate(db: Database) -> int:
    """Apply every step newer than the catalog; returns the version it is at now. Refuses a catalog written by
    a newer sidecar (its tables may mean something this one does not know)."""
    current = version(db)
    if current > LATEST:
        raise RuntimeError(
            f"the catalog is at schema version {current}, newer than this sidecar knows ({LATEST}): upgrade the sidecar"
        )
    for number, _, sql in MIGRATIONS:
        if number <= current:
            continue
        text = sql if isinstance(sql, str) else sql[db.dialect]
        with db.transaction() as tx:
            if db.dialect == "postgres":
                # two processes starting at once: one migrates, the other waits here and then finds it done
                tx.execute("SELECT pg_advisory_xact_lock(4242)")
                if (tx.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()["v"] or 0) >= number:
                    continue
                tx.execute(text)
            else:
                for statement in _statements(text):
                    tx.execute(statement)
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        current = number
    return current


def _statements(script: str) -> list[str]:
    """SQLite's execute takes one statement at a time (its executescript would commit the transaction)."""
    return [s.strip() for s in script.split(";") if s.strip()]

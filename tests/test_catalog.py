"""The catalog's contract, the same tests over each database: SQLite (the embedded default) and a real
PostgreSQL server (a catalog shared by several processes). Plus what only a shared catalog does: two
connections see each other's writes, the write token moves when another process writes, and concurrent
workers resolving the same audio make one track."""
from __future__ import annotations

import base64
import sqlite3
import threading

import numpy as np
import pytest

from sidecar.data.catalog import Catalog
from sidecar.data.schema import LATEST

INFO = {"duration_s": 200.0, "sample_rate": 44100, "channels": 2, "title": "Song", "artist": "Band", "album": "Album",
        "genre": "rock", "year": "1999"}


@pytest.fixture(params=["sqlite", "postgres"])
def target(request, tmp_path):
    """Where a fresh catalog lives: an SQLite file or an empty PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "catalog.sqlite3"
    return request.getfixturevalue("postgres_db")


@pytest.fixture
def catalog(target):
    c = Catalog(target)
    yield c
    c.close()


def add(catalog: Catalog, path: str, content: str, **info) -> str:
    track_id, orphan = catalog.resolve_track(path, content, 1000, 1, dict(INFO, **info))
    assert orphan is None
    return track_id


def test_identity_follows_the_audio_and_the_path(catalog):
    a = add(catalog, "/m/a.ogg", "hash-a")
    assert catalog.file("/m/a.ogg").track_id == a
    assert add(catalog, "/m/copy of a.ogg", "hash-a") == a  # same audio: the same track
    b = add(catalog, "/m/b.ogg", "hash-b")
    assert b != a
    # b's file gets new audio: the path keeps its track
    assert catalog.resolve_track("/m/b.ogg", "hash-b2", 2000, 2, INFO) == (b, None)
    # a path moving to audio that another track has leaves its old track orphaned
    c = add(catalog, "/m/c.ogg", "hash-c")
    assert catalog.resolve_track("/m/c.ogg", "hash-a", 3, 3, INFO) == (a, c)


def test_moves_removals_and_orphans(catalog):
    a = add(catalog, "/m/a.ogg", "hash-a")
    add(catalog, "/m/a2.ogg", "hash-a")
    assert catalog.move_file("/m/a.ogg", "/m/x/a.ogg", 1000, 5) == a
    assert catalog.file("/m/a.ogg") is None and catalog.file("/m/x/a.ogg").mtime_ns == 5
    assert catalog.move_file("/m/unknown.ogg", "/m/y.ogg", 1, 1) is None
    assert catalog.remove_file("/m/x/a.ogg") is None  # the other file still holds the track
    assert catalog.remove_file("/m/a2.ogg") == a  # the last one: orphaned, its vectors go
    catalog.delete_track(a)
    assert catalog.track(a) is None
    assert catalog.files_under("/m") == {}


def test_models_run_only_on_new_audio_or_versions(catalog):
    a = add(catalog, "/m/a.ogg", "hash-a")
    assert catalog.models_to_run(a, "hash-a", {"musicnn": "1", "dsp": "1"}) == ["musicnn", "dsp"]
    catalog.record_embedding(a, "musicnn", "1", "hash-a", tags={"rock": 0.9}, seconds=1.5)
    catalog.record_embedding(a, "dsp", "1", "hash-a", error="ValueError: too short")
    assert catalog.models_to_run(a, "hash-a", {"musicnn": "1", "dsp": "1"}) == []  # a failure is a result too
    assert catalog.models_to_run(a, "hash-a", {"musicnn": "2"}) == ["musicnn"]
    assert catalog.models_to_run(a, "hash-other", {"musicnn": "1"}) == ["musicnn"]
    assert catalog.is_current("/m/a.ogg", 1000, 1, {"musicnn": "1"})
    assert not catalog.is_current("/m/a.ogg", 1001, 1, {"musicnn": "1"})
    assert catalog.embedded_models(a) == ["musicnn"]
    assert {r["analysed_by"] for r in catalog.db.query("SELECT analysed_by FROM embeddings")} == {catalog.writer}
    detail = catalog.track(a)
    assert detail["models"]["musicnn"]["tags"] == {"rock": 0.9} and detail["models"]["dsp"]["status"] == "failed"
    counts = catalog.counts()
    assert counts["tracks"] == 1 and counts["models"] == {"musicnn": {"done": 1, "failed": 0}, "dsp": {"done": 0, "failed": 1}}


def test_the_vector_log_lists_stored_and_deleted_vectors_in_order(catalog):
    head = catalog.vector_log_head()
    a = add(catalog, "/m/a.ogg", "hash-a")
    catalog.record_embedding(a, "musicnn", "1", "hash-a")
    catalog.record_embedding(a, "dsp", "1", "hash-a", error="failed: not logged")
    catalog.remove_file("/m/a.ogg")
    catalog.delete_track(a)
    changes = catalog.vector_changes(head)
    assert [(c["model"], c["track_id"], c["op"]) for c in changes] == [("musicnn", a, "upsert"), ("musicnn", a, "delete")]
    assert changes[0]["seq"] < changes[1]["seq"] == catalog.vector_log_head()
    assert catalog.vector_changes(changes[-1]["seq"]) == []
    catalog.prune_vector_log(older_than_s=-1)
    assert catalog.vector_changes(0) == []


def test_failures_are_listed_and_cleared_for_a_retry(catalog):
    catalog.record_failure("/m/bad.ogg", 10, 1, "not audio")
    assert catalog.failed_unchanged("/m/bad.ogg", 10, 1) and not catalog.failed_unchanged("/m/bad.ogg", 11, 1)
    a = add(catalog, "/m/a.ogg", "hash-a")
    catalog.record_embedding(a, "dsp", "1", "hash-a", error="boom")
    assert {f["path"] for f in catalog.failures()} == {"/m/bad.ogg", "/m/a.ogg"}
    assert catalog.clear_failures() == ["/m/a.ogg", "/m/bad.ogg"]
    assert catalog.failures() == [] and catalog.file("/m/a.ogg").size is None  # so the walk sends it again


def test_replays_listens_ratings_playlists_and_external_ids(catalog):
    row = catalog.start_replay("r1", "group-r1", ["dsp"], "/m")
    assert row["status"] == "running" and row["models"] == ["dsp"] and row["scope"] == "/m"
    assert catalog.start_replay("r1", "other", [], None)["consumer_group"] == "group-r1"  # the first one stands
    catalog.finish_replay("r1", "cancelled")
    assert [r["status"] for r in catalog.replays()] == ["cancelled"] and catalog.replays("running") == []

    a, b = add(catalog, "/m/a.ogg", "hash-a"), add(catalog, "/m/b.ogg", "hash-b")
    assert catalog.add_listen("ann", a, 100.0) and catalog.add_listen("ann", a, 100.0)  # the same play twice: once
    assert catalog.add_listen("ann", b, 200.0, submission=False)
    assert not catalog.add_listen("ann", "nope", 1.0)
    assert catalog.recent_listens("ann") == [(a, 100.0)]
    assert [t for t, _ in catalog.recent_listens("ann", submissions_only=False)] == [b, a]
    catalog.set_rating("ann", a, rating=5)
    catalog.set_rating("ann", a, starred=True)  # keeps the rating
    catalog.set_rating("ann", b, rating=1, play_count=3)
    assert [t for t, _ in catalog.favorites("ann")] == [a] and catalog.low_rated("ann") == {b}
    assert catalog.played_tracks("ann") == {a, b}

    catalog.set_external_id("subsonic", "nd-1", a)
    assert catalog.resolve_ids(["nd-1", b, "zzz"]) == {"nd-1": a, b: b}
    assert catalog.external_ids([a, b]) == {a: "nd-1"}
    assert catalog.tracks_brief([a])[a]["server_id"] == "nd-1"

    catalog.save_playlist("p1", "Mix", "ann", [a, b])
    catalog.save_playlist("p1", "Mix 2", None, [b])
    assert catalog.playlist_tracks("p1") == [b] and catalog.playlist_tracks("p2") is None


def test_search_ignores_case_in_both_databases(catalog):
    a = add(catalog, "/m/Loud/a.ogg", "hash-a", title="Thunder Road", artist="The Band")
    assert [r["track_id"] for r in catalog.search("thunder")] == [a]
    assert [r["track_id"] for r in catalog.search("BAND")] == [a]
    assert [r["track_id"] for r in catalog.search("loud/")] == [a]  # the path too
    assert catalog.search("zzz") == []


def test_the_analysed_library_and_its_stamp(catalog):
    stamp = catalog.analysis_stamp()
    a, b = add(catalog, "/m/a.ogg", "hash-a"), add(catalog, "/m/b.ogg", "hash-b")
    catalog.record_embedding(a, "musicnn", "1", "hash-a", tags={"rock": 0.5})
    catalog.record_embedding(a, "dsp", "1", "hash-a", features={"tempo_bpm": 120})
    catalog.record_embedding(b, "musicnn", "1", "hash-b", tags={"jazz": 0.7})
    assert catalog.analysis_stamp() != stamp
    rows = {r["track_id"]: r for r in catalog.analysed_tracks()}
    assert rows[a]["features"] == {"tempo_bpm": 120} and rows[b]["features"] == {} and rows[b]["tags"] == {"jazz": 0.7}
    assert [r["track_id"] for r in catalog.analysed_tracks(with_model="dsp")] == [a]
    assert len(list(catalog.iter_analysed_tracks(page=1))) == 2  # paging


def test_another_connection_sees_the_writes_and_moves_the_token(target):
    first, second = Catalog(target), Catalog(target)  # two processes' catalogs, in effect
    try:
        token = second.writes()
        a = add(first, "/m/a.ogg", "hash-a")
        assert second.file("/m/a.ogg").track_id == a
        assert second.writes() != token
        token = second.writes()
        assert second.writes() == token  # no write, no change
    finally:
        first.close()
        second.close()


def test_concurrent_workers_resolving_the_same_audio_make_one_track(target):
    catalogs = [Catalog(target) for _ in range(4)]
    got: list[str] = []
    try:
        start = threading.Barrier(len(catalogs))

        def resolve(i: int) -> None:
            start.wait()
            got.append(catalogs[i].resolve_track(f"/m/copy-{i}.ogg", "same-hash", 1, 1, INFO)[0])

        threads = [threading.Thread(target=resolve, args=(i,)) for i in range(len(catalogs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # without a lock all four would see no track with this audio and each make one
        assert len(set(got)) == 1 and {catalogs[0].file(f"/m/copy-{i}.ogg").track_id for i in range(4)} == set(got)
    finally:
        for c in catalogs:
            c.close()


def test_a_catalog_from_before_the_migrations_is_adopted(tmp_path):
    """A file written by the version before schema_version existed (PRAGMA user_version 0, no replays.scope)."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE tracks (track_id TEXT PRIMARY KEY, content_hash TEXT NOT NULL, duration_s REAL, sample_rate INTEGER,"
        " channels INTEGER, title TEXT, artist TEXT, album TEXT, genre TEXT, year TEXT, created_at REAL NOT NULL,"
        " updated_at REAL NOT NULL);"
        "CREATE TABLE replays (replay_id TEXT PRIMARY KEY, consumer_group TEXT NOT NULL, models TEXT NOT NULL,"
        " status TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL);"
        "INSERT INTO tracks VALUES ('t1', 'h1', 1.0, 44100, 2, 'Old', NULL, NULL, NULL, NULL, 1.0, 1.0);"
    )
    db.close()
    c = Catalog(path)
    try:
        assert c.db.query("SELECT MAX(version) AS v FROM schema_version")[0]["v"] == LATEST
        assert c.track("t1")["title"] == "Old"
        assert c.start_replay("r", "g", [], "/m")["scope"] == "/m"  # the column the old file lacked
    finally:
        c.close()


def test_a_catalog_newer_than_this_sidecar_is_refused(target):
    Catalog(target).close()
    c = Catalog(target)
    c.db.query("INSERT INTO schema_version (version) VALUES (?)", (LATEST + 1,))
    c.close()
    with pytest.raises(RuntimeError, match="newer than this sidecar"):
        Catalog(target)


def test_the_media_server_reads_and_writes(catalog):
    a, b = add(catalog, "/m/a.ogg", "hash-a", title="A"), add(catalog, "/m/b.ogg", "hash-b", title=None)
    catalog.set_external_id("subsonic", "nd-a", a)
    catalog.set_external_id("subsonic", "nd-b", b)
    assert catalog.tracks_by_external_id() == {"nd-a": a, "nd-b": b}
    assert catalog.tracks_by_external_id(among=["nd-b", "nd-x"]) == {"nd-b": b}
    catalog.forget_external_ids(["nd-b"])
    assert catalog.tracks_by_external_id() == {"nd-a": a}
    assert catalog.track_ids_at(["/m/a.ogg", "/m/none.ogg"]) == {"/m/a.ogg": a}
    assert [t["track_id"] for t in catalog.titled_tracks()] == [a]

    _, cursor = catalog.files_added_since(None)  # only the cursor of now
    c = add(catalog, "/m/c.ogg", "hash-c", title="C")
    catalog.move_file("/m/a.ogg", "/m/moved.ogg", 1, 1)  # a move is no new file
    rows, cursor = catalog.files_added_since(cursor)
    assert [(r["path"], r["track_id"], r["title"]) for r in rows] == [("/m/c.ogg", c, "C")]
    assert catalog.files_added_since(cursor) == ([], cursor)

    catalog.set_rating("ann", a, rating=4, starred=True, play_count=2)
    assert catalog.user_ratings("ann") == {a: (4, True, 2)} and catalog.user_ratings("bob") == {}
    catalog.save_playlist("p2", "Zed", "ann", [a])
    catalog.save_playlist("p1", "Alpha", None, [a, c])
    assert [p["playlist_id"] for p in catalog.playlists()] == ["p1", "p2"]
    assert [(p["name"], p["track_ids"]) for p in catalog.playlists("ann")] == [("Zed", [a])]
    catalog.delete_playlist("p2")
    assert [p["playlist_id"] for p in catalog.playlists()] == ["p1"]


def test_one_process_of_several_claims_each_due_playlist_run(target):
    """API processes sharing a catalog check the same schedules: each due run goes to exactly one of them."""
    first, second = Catalog(target), Catalog(target)
    try:
        first.save_playlist("p1", "Mix", "ann", [])
        first.save_playlist("p2", "Fixed", "ann", [])
        request = {"seeds": [{"track_id": "x"}], "limit": 4}
        first.schedule_playlist("p1", 3600, request, last_run=1000.0)
        [s] = second.playlist_schedules()
        assert (s["playlist_id"], s["refresh_interval_s"], s["last_run"], s["recommendation"]) == ("p1", 3600, 1000.0, request)
        assert [p["refresh_interval_s"] for p in second.playlists()] == [None, 3600]  # by name: Fixed, Mix
        assert not first.claim_playlist_run("p1", 4000.0) and not first.claim_playlist_run("p2", 9999.0, force=True)
        assert first.claim_playlist_run("p1", 4600.0)  # due: the first to ask takes it ...
        assert not second.claim_playlist_run("p1", 4600.5)  # ... and the other finds it run
        assert second.claim_playlist_run("p1", 4601.0, force=True)  # asked for: run now
        assert first.playlist_schedules("p1")[0]["last_run"] == 4601.0
        first.schedule_playlist("p1", None)  # replaced by a fixed list
        assert second.playlist_schedules() == [] and not second.claim_playlist_run("p1", 1e12)
    finally:
        first.close()
        second.close()


# ---- the same recording in other files (sidecar/data/recordings.py)
DSP = {"tempo_bpm": 120.0, "dynamics_db": 9.5, "percussiveness": 0.12, "brightness": 1800.0, "key_strength": 0.7}


def dsp_features(recording: int, shift: int = 0, **changes) -> dict:
    """A DSP result of one recording (a seed): its loudness contour (levels every 0.125 s, as the DSP analysis
    encodes them, the first `shift` steps trimmed) and DSP's descriptors changed by `changes`."""
    rng = np.random.default_rng(recording)
    levels = 3 * np.convolve(rng.normal(size=1100), np.ones(6) / 6, "same")[shift : shift + 960]
    steps = np.clip(np.round((levels - np.median(levels)) * 4), -100, 127).astype(np.int8)
    return dict(DSP, loudness_contour=base64.b64encode(steps.tobytes()).decode("ascii"), **changes)


def analyse(catalog: Catalog, track_id: str, recording: int = 0, shift: int = 0, error: str | None = None, **changes) -> None:
    """Store a DSP result for the track: of `recording`, descriptors changed by `changes`; or a failure."""
    content = catalog.track(track_id)["content_hash"]
    features = None if error else dsp_features(recording, shift, **changes)
    catalog.record_embedding(track_id, "dsp", "1", content, error=error, features=features)


def duplicate_of(catalog: Catalog, *track_ids: str) -> list[str | None]:
    return [catalog.track(t)["duplicate_of"] for t in track_ids]


def test_other_files_of_a_recording_are_grouped_under_the_first_and_leave_when_they_change(catalog):
    a = add(catalog, "/m/a.flac", "hash-a")  # 200 s
    mp3 = add(catalog, "/m/a.mp3", "hash-a-mp3", duration_s=199.9)
    trim = add(catalog, "/m/a-trim.flac", "hash-a-trim", duration_s=195.0)
    quiet = add(catalog, "/m/a-6db.flac", "hash-a-6db")
    alike = add(catalog, "/m/b.flac", "hash-b")  # another recording that measures alike
    other = add(catalog, "/m/c.flac", "hash-c")  # another track of the album: its rhythm differs a little
    longer = add(catalog, "/m/d.flac", "hash-d", duration_s=230.0)  # the same recording, but 30 s longer
    analyse(catalog, a)
    analyse(catalog, mp3, dynamics_db=9.8, brightness=1790.0)
    analyse(catalog, trim, shift=17, key_strength=0.69, percussiveness=0.123)
    analyse(catalog, quiet, dynamics_db=8.0)
    analyse(catalog, alike, recording=1)
    analyse(catalog, other, percussiveness=0.14)
    analyse(catalog, longer)
    assert duplicate_of(catalog, a, mp3, trim, quiet, alike, other, longer) == [None, a, a, a, None, None, None]
    assert catalog.recording_groups() == {a: a, mp3: a, trim: a, quiet: a}
    detail = catalog.track(mp3)["models"]["dsp"]["features"]
    assert "loudness_contour" not in detail and detail["dynamics_db"] == 9.8  # the contour is kept apart
    analyse(catalog, mp3, dynamics_db=9.8, brightness=1790.0)  # the same result again changes nothing
    assert duplicate_of(catalog, a, mp3) == [None, a]
    # analysed again with other values (new audio in the file): it leaves the group; a failed analysis too
    analyse(catalog, trim, recording=2)
    analyse(catalog, quiet, error="RuntimeError: out of memory")
    assert duplicate_of(catalog, a, mp3, trim, quiet) == [None, a, None, None]
    assert catalog.recording_groups() == {a: a, mp3: a}
    analyse(catalog, a, recording=3)  # the first one changes: the group is gone
    assert duplicate_of(catalog, a, mp3) == [None, None] and catalog.recording_groups() == {}


def test_when_the_first_of_a_group_goes_the_next_leads(catalog):
    a, b, c = (add(catalog, f"/m/{n}.ogg", f"hash-{n}") for n in "abc")
    for t in (a, b, c):
        analyse(catalog, t)
    assert duplicate_of(catalog, a, b, c) == [None, a, a]
    assert catalog.remove_file("/m/a.ogg") == a
    catalog.delete_track(a)
    assert duplicate_of(catalog, b, c) == [None, b] and catalog.recording_groups() == {b: b, c: b}
    assert catalog.remove_file("/m/b.ogg") == b
    catalog.delete_track(b)
    assert duplicate_of(catalog, c) == [None] and catalog.recording_groups() == {}


def test_a_track_like_two_groups_joins_them_and_splits_them_when_it_goes(catalog):
    """The rule is not transitive: a copy of a copy belongs to its original's group (connected parts)."""
    low, high = add(catalog, "/m/low.ogg", "hash-low"), add(catalog, "/m/high.ogg", "hash-high")
    analyse(catalog, low, dynamics_db=9.5)
    analyse(catalog, high, dynamics_db=13.5)  # 4 dB apart: not one recording
    assert duplicate_of(catalog, low, high) == [None, None]
    middle = add(catalog, "/m/middle.ogg", "hash-middle")
    analyse(catalog, middle, dynamics_db=11.5)  # within 2.56 dB of each
    assert duplicate_of(catalog, low, high, middle) == [None, low, low]
    catalog.remove_file("/m/middle.ogg")
    catalog.delete_track(middle)
    assert duplicate_of(catalog, low, high) == [None, None]

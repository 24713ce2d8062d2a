"""The media server's pure parts, without a server: server paths to local ones, matching songs to tracks by
path and by tags, what a listing and the listening history write to a real catalog, playlist requests
resolved to the server's ids, the error log, and the adapter loader. The adapter and the service against a
real Subsonic server are in tests/test_subsonic.py."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import pytest

from plugins.mediaserver import AuthError, Song, Unreachable
from plugins.mediaserver.subsonic import SubsonicAdapter
from schemas.mediaserver import PlaylistRequest
from sidecar.config import Settings
from sidecar.data.catalog import Catalog
from sidecar.data.ids import MEDIA_SERVER
from sidecar.errors import BadInput, NotFound, Unavailable, UpstreamError
from sidecar.mediaserver.errorlog import ErrorLog
from sidecar.mediaserver.matching import Listing, PathMap, PendingSong, match_by_tags, match_songs, only_fit
from sidecar.mediaserver.playlists import PlaylistWriter, server_error, songs_for, written_playlists
from sidecar.mediaserver.sync import Note, apply_history, apply_listing, notes_of
from sidecar.plugins.api import MediaServer
from sidecar.plugins.loader import load_media_server
from tests.test_subsonic import add_track


@pytest.fixture
def catalog(tmp_path):
    c = Catalog(tmp_path / "catalog.db")
    yield c
    c.close()


def song(sid: str, path: str | None = None, title=None, album=None, artist=None, duration_s=30.0, **user) -> Song:
    return Song(id=sid, path=path, title=title, album=album, artist=artist, duration_s=duration_s, **user)


def at(day: int) -> datetime:
    return datetime(2026, 11, day, 12, 0, tzinfo=timezone.utc)


# ---- server paths -> local paths
def test_path_map_joins_relative_paths_and_swaps_absolute_prefixes(tmp_path):
    roots = [tmp_path / "a", tmp_path / "b"]
    plain = PathMap("", roots)
    assert plain.candidates("x/y.ogg") == [str(roots[0] / "x/y.ogg"), str(roots[1] / "x/y.ogg")]
    assert plain.candidates("/srv/music/x.ogg") == ["/srv/music/x.ogg"]
    assert plain.candidates(None) == []

    m = PathMap("/music=/data/library", roots)
    assert m.candidates("/music/Artist/Album/01.flac")[0] == "/data/library/Artist/Album/01.flac"
    assert m.candidates("/musicals/x.flac")[0] == "/musicals/x.flac"  # a prefix matches whole components only
    assert m.candidates("Artist/01.flac")[0] == "/data/library/Artist/01.flac"  # relative: joined to the local side
    assert m.candidates("/music/a/../b.ogg")[0] == "/data/library/b.ogg"  # normalised, as the catalog's paths are
    assert "/data/library/a.mp3" in PathMap("music=/data/library", roots).candidates("music/a.mp3")
    assert PathMap(r"C:\Music=/m", roots).candidates(r"C:\Music\A\b.mp3")[0] == "/m/A/b.mp3"  # a Windows server
    two = PathMap("/music=/l1; /other=/l2", roots)
    assert two.candidates("/other/z.ogg")[0] == "/l2/z.ogg"
    with pytest.raises(ValueError, match="SERVER_PREFIX=LOCAL_PREFIX"):
        PathMap("/music", roots)
    with pytest.raises(ValueError, match="not '/music='"):
        PathMap("/music=", roots)


# ---- the tag rule
def test_only_fit_takes_the_one_candidate_within_two_seconds_and_narrows_by_artist():
    def fit(cands, duration_s, artist=None):
        return only_fit(cands, duration_s, artist, lambda c: c[1], lambda c: c[2])

    assert fit([("a", 200.0, "X")], 202.0) == ("a", 200.0, "X")  # 2 s apart: the same song
    assert fit([("a", 200.0, "X")], 202.5) is None  # 2.5 s: another edit
    assert fit([("a", None, "X")], 202.5) == ("a", None, "X")  # an unknown duration fits
    assert fit([("a", 200.0, "X")], None) == ("a", 200.0, "X")
    two = [("a", 200.0, "The Band"), ("b", 201.0, "Other")]
    assert fit(two, 200.0) is None  # two fit and no artist to choose by
    assert fit(two, 200.0, "the  band") == ("a", 200.0, "The Band")  # artists compared normalised
    assert fit([("a", 200.0, "X"), ("b", 200.0, "X")], 200.0, "X") is None  # still two: no guess
    assert fit([], 200.0, "X") is None


def test_match_by_tags_skips_taken_tracks_and_songs_whose_file_is_here(tmp_path):
    tracks = [
        {"track_id": "t1", "title": "Battle", "album": "Wesnoth", "artist": "WT", "duration_s": 30.0},
        {"track_id": "t2", "title": "battle!", "album": "WESNOTH", "artist": "WT", "duration_s": 30.5},
        {"track_id": "t3", "title": "Elvish", "album": "Wesnoth", "artist": "WT", "duration_s": 90.0},
    ]
    here = tmp_path / "elvish.ogg"
    here.write_bytes(b"not analysed yet")
    songs = {
        "s1": PendingSong(["/made/up/1.ogg"], "Battle", "Wesnoth", "WT", 30.0),
        "s2": PendingSong(["/made/up/2.ogg"], "BATTLE", "wesnoth", "WT", 30.0),
        "s3": PendingSong([str(here)], "Elvish", "Wesnoth", "WT", 90.0),  # its file is here: wait for it
        "s4": PendingSong(["/made/up/4.ogg"], None, "Wesnoth"),  # no title: nothing to match by
    }
    # t1 and t2 have the same normalised tags; t1 is already another song's, so s1 gets t2 and none is left for s2
    assert match_by_tags(tracks, songs, taken={"t1"}) == {"s1": "t2"}
    assert match_by_tags(tracks, songs, taken=set()) == {}  # two candidates each, same artist: no guess
    assert not songs["s4"].file_here and songs["s3"].file_here


def test_match_songs_by_path_then_by_tags_in_a_real_catalog(catalog, tmp_path):
    by_path = add_track(catalog, tmp_path / "m/a.ogg", title="Same Title", album="Album")
    by_tags = add_track(catalog, tmp_path / "m/b.ogg", title="Tagged", album="Album", artist="Band", duration_s=120.0)
    songs = {
        "p": PendingSong([str(tmp_path / "elsewhere/a.ogg"), str(tmp_path / "m/a.ogg")], "Same Title", "Album"),
        "t": PendingSong(["/made/up/b.ogg"], "tagged", "album", "band", 121.0),
        "n": PendingSong(["/made/up/c.ogg"], "Not Here", "Album"),
    }
    mapped, via_tags, left = match_songs(catalog, songs)
    assert mapped == {"p": by_path, "t": by_tags} and via_tags == 1 and list(left) == ["n"]


def test_a_listing_matches_waiting_songs_to_new_file_rows(tmp_path):
    lst = Listing(pending={
        "a": PendingSong([str(tmp_path / "x/a.ogg")], "A", "Album", "Band", 30.0),
        "b": PendingSong(["/made/up/b.ogg"], "B", "Album", "Band", 30.0),
        "c": PendingSong(["/made/up/c.ogg"], "C", "Album", "Band", 30.0),
    })
    lst.index_pending()
    assert set(lst.by_path) == {str(tmp_path / "x/a.ogg"), "/made/up/b.ogg", "/made/up/c.ogg"}
    assert set(lst.by_tags) == {("a", "album"), ("b", "album"), ("c", "album")}  # no file here for any of them
    rows = [
        {"path": str(tmp_path / "x/./a.ogg"), "track_id": "ta", "title": "other", "album": "", "artist": None, "duration_s": 1.0},
        {"path": "/local/b.ogg", "track_id": "tb", "title": "b", "album": "ALBUM", "artist": "band", "duration_s": 31.0},
        {"path": "/local/c.ogg", "track_id": "tc", "title": "C", "album": "Album", "artist": "Band", "duration_s": 60.0},
    ]
    assert lst.match_files(rows) == ({"a": "ta", "b": "tb"}, 1)  # c's file lasts 60 s: not the 30 s song


# ---- what a listing and the history write to the catalog
def test_apply_listing_records_new_ids_forgets_gone_songs_and_keeps_waiting_ones(catalog, tmp_path):
    root = tmp_path / "music"
    t1 = add_track(catalog, root / "a.ogg", title="A")
    t2 = add_track(catalog, root / "b.ogg", title="B")
    catalog.set_external_id(MEDIA_SERVER, "gone", t1)  # a song the server no longer has
    catalog.set_external_id(MEDIA_SERVER, "s3", t2)  # its file is being analysed again: keeps its id
    songs = [song("s1", "a.ogg", "A"), song("s2", "b.ogg", "B"), song("s3", "c.ogg", "C")]
    lst = apply_listing(catalog, PathMap("", [root]), songs)
    assert catalog.tracks_by_external_id() == {"s1": t1, "s2": t2, "s3": t2}
    assert lst.mapped == {"s1": t1, "s2": t2, "s3": t2} and lst.pending == {} and lst.total == 3

    lst = apply_listing(catalog, PathMap("", [root]), songs[:2] + [song("s4", "d.ogg", "D")])
    assert set(lst.pending) == {"s4"} and lst.example == str(root / "d.ogg")
    assert "s3" not in catalog.tracks_by_external_id()
    # the file arrives: only the rows added since the listing are read to match it
    t4 = add_track(catalog, root / "d.ogg", title="D")
    rows, cursor = catalog.files_added_since(lst.files_cursor)
    assert [r["path"] for r in rows] == [str(root / "d.ogg")] and catalog.files_added_since(cursor) == ([], cursor)
    assert lst.match_files(rows) == ({"s4": t4}, 0)


def test_notes_merge_what_the_songs_say_and_leave_out_empty_ones():
    notes = notes_of([song("a", starred=at(1)), song("b"), song("a", user_rating=4, played=at(2)), song("a", played=at(1))])
    assert notes == {"a": Note(starred=True, rating=4, play_count=None, played=at(2).timestamp())}
    more = notes_of([song("c", play_count=3)], into=notes)
    assert set(more) == {"a", "c"} and set(notes) == {"a"}  # `into` is copied, not changed


def test_apply_history_stars_rates_counts_plays_once_and_unstars_the_rest(catalog, tmp_path):
    t1, t2, t3 = (add_track(catalog, tmp_path / f"{i}.ogg") for i in range(3))
    for sid, tid in (("s1", t1), ("s2", t2), ("s3", t3)):
        catalog.set_external_id(MEDIA_SERVER, sid, tid)
    catalog.set_rating("ann", t3, rating=5, starred=True)  # said on the server earlier
    seen: dict[str, float] = {}
    notes = {"s1": Note(starred=True), "s2": Note(rating=4, play_count=2, played=at(3).timestamp()), "unknown": Note(starred=True)}
    changes = apply_history(catalog, "ann", notes, {"s1"}, ratings_reported=True, played_seen=seen)
    assert catalog.user_ratings("ann") == {t1: (None, True, None), t2: (4, False, 2), t3: (0, False, None)}
    assert changes == 5 and seen == {"s2": at(3).timestamp()}
    assert catalog.recent_listens("ann") == [(t2, at(3).timestamp())]
    # the same history again changes nothing; without the full starred list nothing is unstarred
    assert apply_history(catalog, "ann", notes, {"s1"}, ratings_reported=True, played_seen=seen) == 0
    assert apply_history(catalog, "ann", {}, None, ratings_reported=True, played_seen=seen) == 0
    assert catalog.user_ratings("ann")[t1] == (None, True, None)


# ---- playlists
def test_playlist_tracks_resolve_to_server_ids_and_bad_ones_are_named(catalog, tmp_path):
    t1, t2 = add_track(catalog, tmp_path / "1.ogg"), add_track(catalog, tmp_path / "2.ogg")
    unmatched = add_track(catalog, tmp_path / "3.ogg")
    catalog.set_external_id(MEDIA_SERVER, "s1", t1)
    catalog.set_external_id(MEDIA_SERVER, "s2", t2)
    pairs, skipped, warnings = songs_for(catalog, None, PlaylistRequest(name="mix", track_ids=["s2", t1]))
    assert pairs == [("s2", t2), ("s1", t1)] and skipped == warnings == []
    with pytest.raises(BadInput) as e:
        songs_for(catalog, None, PlaylistRequest(name="mix", track_ids=[t1, "nope"]))
    assert e.value.field == "track_ids.1" and "'nope'" in str(e.value)
    with pytest.raises(BadInput) as e:
        songs_for(catalog, None, PlaylistRequest(name="mix", track_ids=[unmatched]))
    assert e.value.field == "track_ids.0" and "not on the media server" in str(e.value)

    catalog.save_playlist("p1", "mix", "ann", [t2, unmatched])
    catalog.save_playlist("p2", "other", "bob", [t1])
    catalog.schedule_playlist("p1", 3600, {"seeds": [{"track_id": t2}]}, 0.0)
    listed = written_playlists(catalog, "ann")
    assert [(p.playlist_id, p.server_track_ids, p.refresh_interval_s) for p in listed.playlists] == [("p1", ["s2", None], 3600)]
    assert [p.playlist_id for p in written_playlists(catalog, None).playlists] == ["p1", "p2"]


def test_an_earlier_versions_schedule_file_moves_into_the_catalog(catalog, tmp_path):
    catalog.save_playlist("p1", "mix", "ann", [])
    legacy = tmp_path / "media_playlists.json"
    request = {"seeds": [{"track_id": "x"}], "limit": 4}
    legacy.write_text(json.dumps({
        "p1": {"name": "mix", "user": "ann", "interval_s": 600, "last_run": 5.0, "recommendation": request},
        "gone": {"name": "old", "user": None, "interval_s": 600, "last_run": 5.0, "recommendation": request},  # not in the catalog
    }))
    PlaylistWriter(catalog, None, None, legacy_schedules=legacy)
    assert [(s["playlist_id"], s["refresh_interval_s"], s["last_run"], s["recommendation"]) for s in catalog.playlist_schedules()] == [
        ("p1", 600, 5.0, request)]
    assert not legacy.exists() and legacy.with_suffix(".imported").exists()  # kept, under another name
    legacy.write_text("{not json")
    PlaylistWriter(catalog, None, None, legacy_schedules=legacy)  # logged, the file left alone
    assert legacy.exists() and len(catalog.playlist_schedules()) == 1


async def test_only_playlists_the_sidecar_wrote_can_be_deleted(catalog):
    writer = PlaylistWriter(catalog, None, None)  # no server call before the check
    with pytest.raises(NotFound) as e:
        await writer.delete("the-users-own")
    assert e.value.field == "playlist_id"


def test_server_errors_become_503_when_down_and_502_otherwise():
    assert isinstance(server_error(Unreachable("media server http://h is unreachable")), Unavailable)
    refused = server_error(AuthError("media server http://h rejected user 'ann'"))
    assert isinstance(refused, UpstreamError) and "rejected user" in str(refused)


# ---- errors and the adapter
def test_error_log_says_each_error_once_without_secrets_and_clears_on_recovery(caplog):
    caplog.set_level(logging.DEBUG)
    errlog = ErrorLog("http://h:4533", secrets=("hunter22",))
    for _ in range(3):
        errlog.record("login with hunter22 failed", "; retrying", source="sync")
    errlog.record("scan status failed", source="scan")
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == ["login with *** failed; retrying", "scan status failed"]
    assert "hunter22" not in caplog.text and errlog.error == "scan status failed" and errlog.error_at
    errlog.recovered("sync")
    assert errlog.error == "scan status failed"  # the scan source still fails
    errlog.recovered("scan")
    assert errlog.error is None and errlog.error_at is None


def test_adapters_load_through_the_plugin_loader_and_implement_the_protocol():
    settings = Settings(media_server_url="http://navidrome:4533", media_server_user="ann", media_server_password="pw")
    adapter = load_media_server("subsonic", settings, timeout_s=2.0)
    assert isinstance(adapter, SubsonicAdapter) and isinstance(adapter, MediaServer) and adapter.timeout_s == 2.0
    with pytest.raises(LookupError, match=r"named 'nosuch' is installed.*installed: subsonic"):
        load_media_server("nosuch", settings)
    with pytest.raises(ValueError, match="http"):
        load_media_server("subsonic", settings.model_copy(update={"media_server_url": "ftp://x"}))

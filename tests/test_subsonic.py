"""The media-server adapter and service against a real Subsonic server (supysonic, started by the
`supysonic` fixture of tests/supysonic_server.py) on real music, and against Navidrome's response shapes
(token auth, API keys, form POSTs, play counts, ratings, scan status, server-sent events), written as
Navidrome's source writes them and served by a small aiohttp app (no live Navidrome here).

Run: .venv/bin/python -m pytest tests/test_subsonic.py -q -p tests.supysonic_server
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from plugins.mediaserver import AuthError, NotFound, Unreachable, parse_time, redact
from plugins.mediaserver.subsonic import SubsonicAdapter, token_for
from schemas.events import ScanCompleted
from sidecar.data.catalog import Catalog
from sidecar.config import Settings
from sidecar.data.ids import MEDIA_SERVER
from sidecar.mediaserver.matching import PathMap
from sidecar.mediaserver.service import MediaServerService

PASSWORD_SECRETS = ("correct horse&battery", "correct%20horse", "correct+horse")


def adapter_for(server, **kw) -> SubsonicAdapter:
    kw.setdefault("user", server.user)
    kw.setdefault("password", server.password)
    kw.setdefault("auth", "password")
    return SubsonicAdapter(server.url, **kw)


async def until(predicate, timeout: float = 30, what: str = "condition", step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(step)


def assert_no_secret(text: str, *secrets: str) -> None:
    for s in secrets + PASSWORD_SECRETS:
        assert s not in text, f"a secret leaked: {s!r} in {text[:500]!r}"


class RecordingBus:
    def __init__(self):
        self.events = []

    async def publish(self, event) -> None:
        self.events.append(event)


def light_sidecar(tmp_path: Path, roots: list[Path], **settings) -> SimpleNamespace:
    """What MediaServerService needs of a sidecar, without models: settings, roots, a real catalog, a bus."""
    for r in roots:
        r.mkdir(parents=True, exist_ok=True)
    s = Settings(music_dir=roots, data_dir=tmp_path / "data", **settings)
    s.data_dir.mkdir(parents=True, exist_ok=True)

    async def is_idle():
        return True

    return SimpleNamespace(settings=s, roots=list(s.music_dir), catalog=Catalog(s.catalog_path), bus=RecordingBus(), is_idle=is_idle, engine=None)


def add_track(catalog: Catalog, path: Path | str, title=None, album=None, artist=None, duration_s=30.0) -> str:
    info = {"title": title, "album": album, "artist": artist, "duration_s": duration_s}
    track_id, _ = catalog.resolve_track(str(path), hashlib.sha1(str(path).encode()).hexdigest(), 1000, 1, info)
    return track_id


# ---------------------------------------------------------------------------------------------------------
# pure pieces
def test_redaction_removes_every_kind_of_secret():
    url = "http://h:4533/rest/ping?u=al&p=enc%3A736563&t=abc123&s=salt1&apiKey=k3y&jwt=ey.J&v=1.16.1"
    out = redact(url)
    for secret in ("enc%3A736563", "abc123", "salt1", "k3y", "ey.J"):
        assert secret not in out
    assert "u=al" in out and "v=1.16.1" in out
    assert redact("http://bob:pw@host/x") == "http://***@host/x"
    assert redact('{"username": "a", "password": "hunter2", "token": "tt"}') == '{"username": "a", "password": "***", "token": "***"}'
    assert "hunter2" not in redact("failed: hunter2 is wrong", "hunter2")
    assert parse_time("2026-11-20T18:04:05.123456789Z") == datetime(2026, 11, 20, 18, 4, 5, 123456, timezone.utc)


# ---------------------------------------------------------------------------------------------------------
# Navidrome's response shapes (0.5x, OpenSubsonic; from its server/subsonic and server/events sources),
# served by a small aiohttp app
NAVIDROME = {"status": "ok", "version": "1.16.1", "type": "navidrome", "serverVersion": "0.53.3 (13af8ed4)", "openSubsonic": True}


def nd_song(sid: str, title: str, album: str, *, path: str | None = None, **extra) -> dict:
    """A song as Navidrome's search3/getAlbum/getStarred2 give it (display path unless Report Real Path)."""
    return {
        "id": sid, "parent": "al-" + album, "isDir": False, "title": title, "album": album, "artist": "Wesnoth Team",
        "track": 1, "year": 2020, "genre": "Soundtrack", "coverArt": "mf-" + sid, "size": 512345, "contentType": "audio/ogg",
        "suffix": "ogg", "duration": 30, "bitRate": 128, "path": path or f"Wesnoth Team/{album}/01 - {title}.ogg",
        "discNumber": 1, "created": "2026-11-01T09:00:00.000000001Z", "albumId": "al-" + album, "artistId": "ar-1",
        "type": "music", "isVideo": False, "bpm": 0, "comment": "", "sortName": "", "mediaType": "song",
        "musicBrainzId": "", "genres": [{"name": "Soundtrack"}], "replayGain": {}, "channelCount": 2, "samplingRate": 44100,
        **extra,
    }


class FakeNavidrome:
    """Answers like Navidrome: token auth (t = md5(password + s)), API keys, form POSTs, and its own
    /auth/login and /api/events. Records what each request carried."""

    def __init__(self, user="alice", password="s3cret!", api_key="ak-123"):
        self.user, self.password, self.api_key = user, password, api_key
        self.songs: list[dict] = []
        self.scan = {"scanning": False, "count": 10, "folderCount": 2, "lastScan": "2026-11-20T10:00:00.123456789Z"}
        self.requests: list[dict] = []
        self.salts: list[str] = []
        self.sse: asyncio.Queue = asyncio.Queue()
        self.jwt = "eyJhbGciOiJIUzI1NiJ9.e30.sig"
        app = web.Application()
        app.router.add_route("*", "/rest/{endpoint}", self.rest)
        app.router.add_post("/auth/login", self.login)
        app.router.add_get("/api/events", self.events)
        self.app = app
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.closing = False
        self.events_enabled = True

    async def __aenter__(self):
        self.runner = web.AppRunner(self.app, access_log=None)  # the server's log, not ours
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = "http://127.0.0.1:%d" % self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc):
        self.closing = True
        await self.runner.cleanup()

    def ok(self, **payload) -> web.Response:
        return web.json_response({"subsonic-response": {**NAVIDROME, **payload}})

    def error(self, code: int, message: str) -> web.Response:
        return web.json_response({"subsonic-response": {**NAVIDROME, "status": "failed", "error": {"code": code, "message": message}}})

    async def rest(self, request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else {}
        params = {**request.query, **form}
        self.requests.append({"method": request.method, "query": dict(request.query), "form": dict(form), "endpoint": request.match_info["endpoint"]})
        for k in ("v", "c", "f"):
            if k not in params:
                return self.error(10, f"Required parameter '{k}' is missing")
        if "apiKey" in params:
            if "u" in params:
                return self.error(43, "Multiple conflicting authentication mechanisms provided")
            if params["apiKey"] != self.api_key:
                return self.error(44, "Invalid API key")
        else:
            if params.get("u") != self.user or "t" not in params or "s" not in params:
                return self.error(40, "Wrong username or password")
            if params["t"] != hashlib.md5((self.password + params["s"]).encode()).hexdigest():
                return self.error(40, "Wrong username or password")
            self.salts.append(params["s"])
        endpoint = request.match_info["endpoint"].removesuffix(".view")
        if endpoint == "ping":
            return self.ok()
        if endpoint == "getOpenSubsonicExtensions":
            return self.ok(openSubsonicExtensions=[
                {"name": "transcodeOffset", "versions": [1]}, {"name": "formPost", "versions": [1]},
                {"name": "songLyrics", "versions": [1]}, {"name": "apiKeyAuthentication", "versions": [1]},
            ])
        if endpoint == "tokenInfo":
            return self.ok(tokenInfo={"username": self.user})
        if endpoint == "search3":
            size, offset = int(params.get("songCount", 20)), int(params.get("songOffset", 0))
            return self.ok(searchResult3={"song": self.songs[offset : offset + size]} if self.songs[offset : offset + size] else {})
        if endpoint == "getStarred2":
            return self.ok(starred2={"song": [s for s in self.songs if s.get("starred")]})
        if endpoint == "getAlbumList2":
            if params.get("type") not in ("recent", "frequent"):
                return self.error(0, "type not supported here")
            played = [s for s in self.songs if s.get("playCount")]
            albums = sorted({s["albumId"] for s in played})
            return self.ok(albumList2={"album": [{"id": a, "name": a[3:], "songCount": 1} for a in albums]})
        if endpoint == "getAlbum":
            return self.ok(album={"id": params["id"], "song": [s for s in self.songs if s["albumId"] == params["id"]]})
        if endpoint == "getSong":
            song = next((x for x in self.songs if x["id"] == params.get("id")), None)
            return self.ok(song=song) if song else self.error(70, "Song not found")
        if endpoint == "getScanStatus":
            return self.ok(scanStatus=dict(self.scan))
        return self.error(0, f"endpoint {endpoint} not recorded")

    async def login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("username") != self.user or body.get("password") != self.password:
            return web.json_response({"error": "Invalid username or password"}, status=401)
        return web.json_response({"id": "u1", "isAdmin": True, "name": "Alice", "username": self.user, "token": self.jwt,
                                  "subsonicSalt": "abc", "subsonicToken": "def", "lastFMApiKey": ""})

    async def events(self, request: web.Request) -> web.StreamResponse:
        if not self.events_enabled:
            return web.Response(status=404, text="404 page not found")
        if request.headers.get("X-ND-Authorization") != f"Bearer {self.jwt}":
            return web.Response(status=401)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform"})
        await resp.prepare(request)
        n = 0
        await resp.write(b'id: 0\nevent: serverStart\ndata: {"startTime":"2026-11-20T10:00:00Z","version":"0.53.3"}\n\n')
        while not self.closing:
            try:
                name, data = await asyncio.wait_for(self.sse.get(), 0.3)
            except asyncio.TimeoutError:  # Navidrome sends one every 15 s; a write to a gone client ends this
                name, data = "keepAlive", {"ts": int(time.time())}
            n += 1
            try:
                await resp.write(f"id: {n}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode())
            except (ConnectionError, RuntimeError):
                break
        return resp


async def test_token_auth_salts_every_request_and_errors_are_typed_without_secrets(caplog):
    caplog.set_level(logging.DEBUG)
    async with FakeNavidrome() as nd:
        async with SubsonicAdapter(nd.url, user="alice", password="s3cret!", auth="token") as a:
            info = await a.ping()
            assert (info.type, info.open_subsonic) == ("navidrome", True) and "formPost" in info.extensions
            await a.ping()
        first = nd.requests[0]
        assert first["method"] == "GET" and first["query"]["u"] == "alice" and "p" not in first["query"]
        assert first["query"]["t"] == token_for("s3cret!", first["query"]["s"]) == hashlib.md5(("s3cret!" + first["query"]["s"]).encode()).hexdigest()
        assert (first["query"]["v"], first["query"]["f"]) == ("1.16.1", "json")
        assert len(set(nd.salts)) == len(nd.salts) >= 3  # a fresh salt per request
        # the server advertised formPost: later calls carry the credentials in the body, not the URL
        last = nd.requests[-1]
        assert last["method"] == "POST" and "t" in last["form"] and "t" not in last["query"] and "u" not in last["query"]

        # an enc: password is decoded for the token
        async with SubsonicAdapter(nd.url, user="alice", password="enc:" + b"s3cret!".hex(), auth="token") as a:
            await a.ping()

        # error 40, as Navidrome answers it (HTTP 200, status failed)
        with pytest.raises(AuthError) as e:
            async with SubsonicAdapter(nd.url, user="alice", password="WRONG-pass", auth="token") as a:
                await a.ping()
        assert e.value.code == 40 and nd.url in str(e.value) and "Wrong username or password" in str(e.value) and "'alice'" in str(e.value)
        assert_no_secret(str(e.value) + repr(e.value) + caplog.text, "WRONG-pass", "s3cret!")
        assert not any(r["query"].get("t") and r["query"]["t"] in caplog.text for r in nd.requests)

        # an API key: apiKey and no u; the user comes from tokenInfo
        async with SubsonicAdapter(nd.url, api_key="ak-123") as a:
            await a.ping()
            assert await a.token_info() == "alice"
        q = nd.requests[-1]["form"] or nd.requests[-1]["query"]
        assert q["apiKey"] == "ak-123" and "u" not in q
        with pytest.raises(AuthError, match="error 44"):
            async with SubsonicAdapter(nd.url, api_key="nope-key") as a:
                await a.ping()
        assert_no_secret(caplog.text, "ak-123", "nope-key", "s3cret!", "WRONG-pass")


async def test_navidrome_history_tag_matching_scan_poll_and_event_stream(tmp_path, caplog):
    """Stars, ratings, play counts and plays from Navidrome's song fields go into the catalog; songs reported
    with display paths are matched by their tags, real paths through the prefix mapping; a finished scan
    (poll or event stream) puts a scan.completed on the bus."""
    caplog.set_level(logging.INFO)
    root = tmp_path / "mount"
    async with FakeNavidrome() as nd:
        sc = light_sidecar(
            tmp_path, [root], media_server_url=nd.url, media_server_user="alice", media_server_password="s3cret!",
            media_server_path_prefix=f"/music={root}", media_server_sync_interval_s=0, media_server_scan_poll_s=0.1,
            plugins={"subsonic": {"events": "on", "retry_min_s": "0.1", "retry_max_s": "0.3", "pending_check_s": "0.1"}},
        )
        nd.events_enabled = False  # first without the event stream: the poller reports scans
        by_path = add_track(sc.catalog, root / "wesnoth/battle.ogg", title="Battle", album="Wesnoth")
        by_tags = add_track(sc.catalog, root / "x/elvish.ogg", title="Elvish Theme", album="Wesnoth", artist="Wesnoth Team")
        played_at = "2026-11-20T18:04:05.123456789Z"
        nd.songs = [
            nd_song("nd1", "Battle", "Wesnoth", path="/music/wesnoth/battle.ogg", starred="2026-11-01T10:00:00Z"),
            nd_song("nd2", "Elvish Theme", "Wesnoth", userRating=4, playCount=3, played=played_at),
            nd_song("nd3", "Not Analysed", "Elsewhere"),
        ]
        media = MediaServerService(sc)
        await media.start()
        try:
            await until(lambda: media.last_sync_at, 10, "the first sync")
            ids = sc.catalog.tracks_by_external_id()
            assert ids == {"nd1": by_path, "nd2": by_tags}
            assert media.listing.via_tags == 1 and set(media.listing.pending) == {"nd3"}
            assert dict(sc.catalog.favorites("alice")).keys() == {by_path, by_tags}  # starred, and rated 4
            assert sc.catalog.user_ratings("alice")[by_tags] == (4, False, 3)
            assert sc.catalog.recent_listens("alice") == [(by_tags, parse_time(played_at).timestamp())]

            # the user unstars, unrates and plays again; the next sync follows
            nd.songs[0].pop("starred")
            nd.songs[1].pop("userRating")
            nd.songs[1].update(playCount=4, played="2026-11-21T08:00:00Z")
            media.wake()
            synced = media.last_sync_at
            await until(lambda: media.last_sync_at != synced, 10, "the second sync")
            assert sc.catalog.favorites("alice") == []
            assert len(sc.catalog._q("SELECT * FROM listens WHERE user = 'alice'")) == 2

            # the third song's file is analysed later: matched without asking the server again
            asked = len(nd.requests)
            nd3 = add_track(sc.catalog, root / "elsewhere/na.ogg", title="Not Analysed", album="Elsewhere")
            await until(lambda: sc.catalog.tracks_by_external_id().get("nd3") == nd3, 10, "the late match")
            assert not any(r["endpoint"] == "search3" for r in nd.requests[asked:])

            # a scan, seen by the poller: scanning, then done with a new lastScan
            await until(lambda: media.scans.watch == "getScanStatus", 5, "the poller")
            nd.scan.update(scanning=True, count=3)
            await asyncio.sleep(0.3)
            nd.scan.update(scanning=False, count=11, lastScan="2026-11-21T09:00:00Z")
            await until(lambda: any(e.source == "subsonic-poll" for e in sc.bus.events), 5, "a scan.completed from the poller")
            e = sc.bus.events[-1]
            assert isinstance(e, ScanCompleted) and e.roots == [str(root)]

            # and by the event stream, once Navidrome serves it (the poller then leaves scans to it)
            assert "no Navidrome event stream (HTTP 404)" in (media.error or "") or media.scans.events_state == "connecting"
            nd.events_enabled = True
            await until(lambda: media.scans.events_state == "connected", 5, "the event stream")
            polled = len(sc.bus.events)
            await nd.sse.put(("scanStatus", {"scanning": True, "count": 1, "folderCount": 1}))
            nd.scan.update(scanning=True)
            await asyncio.sleep(0.3)
            nd.scan.update(scanning=False, count=12, lastScan="2026-11-21T10:00:00Z")
            await nd.sse.put(("scanStatus", {"scanning": False, "count": 12, "folderCount": 2}))
            await until(lambda: any(e.source == "navidrome-events" for e in sc.bus.events), 5, "a scan.completed from the events")
            await asyncio.sleep(0.3)
            assert [e.source for e in sc.bus.events[polled:]] == ["navidrome-events"]  # one scan, one walk

            # a rating changed in Navidrome: refreshResource names the song; only it is read again
            asked = len(nd.requests)
            synced = media.last_sync_at
            nd.songs[1]["userRating"] = 5
            await nd.sse.put(("refreshResource", {"song": ["nd2"], "album": ["al-Wesnoth"]}))
            await until(lambda: media.last_sync_at != synced, 5, "the sync after refreshResource")
            assert sc.catalog.user_ratings("alice")[by_tags][0] == 5
            endpoints = [r["endpoint"] for r in nd.requests[asked:]]
            assert "getSong" in endpoints and "search3" not in endpoints
            assert media.status().connected and media.status().songs_matched == 3
        finally:
            await media.close()
            sc.catalog.close()
    assert_no_secret(caplog.text, "s3cret!", nd.jwt)


# ---------------------------------------------------------------------------------------------------------
# supysonic: a real Subsonic server on real music
async def test_lists_every_song_with_paging_and_maps_paths_to_local_files(supysonic, tmp_path):
    on_disk = sorted(str(p.relative_to(supysonic.music)) for p in supysonic.music.rglob("*.ogg"))
    async with adapter_for(supysonic) as a:
        info = await a.ping()
        assert info.api_version == "1.12.0" and not info.open_subsonic
        small_pages = await a.songs(page_size=4)  # 6 songs: pages of 4 and 2
        assert sorted(s.path for s in small_pages) == on_disk
        assert [s.id for s in await a.songs()] == [s.id for s in small_pages]
        one = await a.song(small_pages[0].id)
        assert one.path == small_pages[0].path and one.title and one.duration_s and 29 <= one.duration_s <= 31
        with pytest.raises(NotFound) as e:
            await a.song("00000000-0000-0000-0000-000000000000")
        assert e.value.code == 70

    # the sidecar sees the same files under another mount: the prefix mapping joins the relative paths to it
    mount = tmp_path / "mount"
    shutil.copytree(supysonic.music, mount)
    paths = PathMap(f"/srv/music={mount}", [tmp_path / "elsewhere"])
    for s in small_pages:
        assert Path(paths.candidates(s.path)[0]).is_file(), s.path


async def test_playlists_are_created_read_back_in_order_replaced_and_deleted(supysonic):
    async with adapter_for(supysonic) as a:
        songs = await a.songs()
        order = [songs[i].id for i in (3, 0, 5, 1)]
        created = await a.create_playlist("test order", order)  # supysonic answers without the id
        assert created.id and created.song_ids == order
        assert created.id in {p.id for p in await a.playlists() if p.name == "test order"}
        again = await a.create_playlist("test order", order[:1])  # same name: a second playlist, told apart
        assert again.id != created.id

        replaced = await a.replace_playlist(created.id, order[::-1] + [songs[2].id], name="test order (new)")
        assert replaced.song_ids == order[::-1] + [songs[2].id] and replaced.name == "test order (new)"
        assert (await a.playlist(created.id)).song_ids == replaced.song_ids

        await a.delete_playlist(created.id)
        await a.delete_playlist(again.id)
        with pytest.raises(NotFound):
            await a.playlist(created.id)
        assert created.id not in {p.id for p in await a.playlists()}


async def test_a_wrong_password_is_a_clear_auth_error_and_no_secret_is_logged(supysonic, caplog):
    caplog.set_level(logging.DEBUG)
    async with adapter_for(supysonic, password="enc:" + supysonic.password.encode().hex()) as a:  # enc: works too
        await a.ping()
    with pytest.raises(AuthError) as e:
        async with adapter_for(supysonic, password="not-the-password") as a:
            await a.ping()
    message = str(e.value)
    assert e.value.code == 40 and supysonic.url in message and "Wrong username or password" in message and "alice" in message
    # supysonic has no token auth: the error says what to set
    with pytest.raises(AuthError, match="SIDECAR_MEDIA_SERVER_AUTH=password"):
        async with adapter_for(supysonic, auth="token") as a:
            await a.ping()
    assert_no_secret(message + repr(e.value) + caplog.text, "not-the-password", supysonic.password.encode().hex())


async def test_an_unreachable_server_fails_fast_after_bounded_retries(caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    from tests.servers import free_port

    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(Unreachable) as e:
        async with SubsonicAdapter(f"http://127.0.0.1:{port}", user="u", password="pw-secret", auth="password", retries=3, backoff_s=0.05) as a:
            await a.ping()
    assert time.monotonic() - t0 < 2
    assert f"127.0.0.1:{port}" in str(e.value) and "tried 3 times" in str(e.value)

    # 503s are retried too, then reported; a server that never answers times out
    hits = []
    release = asyncio.Event()

    async def busy(request):
        hits.append(1)
        if request.path.endswith("hang"):
            await asyncio.wait_for(release.wait(), 10)
        return web.Response(status=503, text="<html>down for maintenance</html>")

    app = web.Application()
    app.router.add_route("*", "/rest/{x}", busy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = "http://127.0.0.1:%d" % runner.addresses[0][1]
    try:
        async with SubsonicAdapter(url, user="u", password="pw-secret", auth="password", retries=2, backoff_s=0.05, timeout_s=0.5) as a:
            with pytest.raises(Unreachable, match="HTTP 503"):
                await a.ping()
            assert len(hits) == 2
            # a call that changes data is not sent twice: the server may have applied it before failing
            with pytest.raises(Unreachable, match="not again since it changes data"):
                await a.call("createPlaylist", [("name", "x")])
            assert len(hits) == 3
            t0 = time.monotonic()
            with pytest.raises(Unreachable, match="no answer within 0.5 s"):
                await a.call("hang")
            assert time.monotonic() - t0 < 2.5
    finally:
        release.set()
        await runner.cleanup()
    assert_no_secret(str(e.value) + caplog.text, "pw-secret")


async def test_stars_become_favourites_and_server_scans_trigger_a_reconcile(supysonic, tmp_path):
    """The service against supysonic, on a catalog holding the server's files: ids mapped from the song paths,
    stars synced both ways, and a scan run by supysonic's daemon (startScan) noticed by the poller."""
    sc = light_sidecar(
        tmp_path, [supysonic.music], media_server_url=supysonic.url, media_server_user=supysonic.user,
        media_server_password=supysonic.password, media_server_auth="password", media_server_sync_interval_s=0,
        media_server_scan_poll_s=0.2, plugins={"subsonic": {"retry_min_s": "0.1"}},
    )
    files = sorted(supysonic.music.rglob("*.ogg"))
    tracks = {str(f): add_track(sc.catalog, f) for f in files}
    media = MediaServerService(sc)
    await media.start()
    try:
        await until(lambda: media.last_sync_at, 10, "the first sync")
        async with adapter_for(supysonic) as a:
            songs = {s.path: s.id for s in await a.songs()}
            assert sc.catalog.tracks_by_external_id() == {songs[str(f.relative_to(supysonic.music))]: tracks[str(f)] for f in files}
            assert sc.catalog.resolve_ids(list(songs.values())) == {sid: tracks[str(supysonic.music / p)] for p, sid in songs.items()}

            star = [songs[str(files[i].relative_to(supysonic.music))] for i in (1, 4)]
            for sid in star:
                await a.star(sid)
            try:
                await media.sync_history()
                assert {t for t, _ in sc.catalog.favorites(supysonic.user)} == {tracks[str(files[i])] for i in (1, 4)}
                await a.unstar(star[0])
                await media.sync_history()
                assert {t for t, _ in sc.catalog.favorites(supysonic.user)} == {tracks[str(files[4])]}
            finally:
                for sid in star[1:]:
                    await a.unstar(sid)

            # a scan by the server's daemon: the poller publishes scan.completed for the music folder
            await until(lambda: media.scans.watch == "getScanStatus", 5, "the poller")
            await asyncio.sleep(1.1)  # supysonic stamps scans to the second
            await a.start_scan()
            event = await until(lambda: next((e for e in sc.bus.events if e.source == "subsonic-poll"), None), 15, "a scan.completed")
            assert isinstance(event, ScanCompleted) and event.roots == [str(supysonic.music)]
    finally:
        await media.close()
        sc.catalog.close()


# ---------------------------------------------------------------------------------------------------------
# end to end: the real sidecar (real models, real ingest) beside the real server
@pytest.fixture
async def start_sidecar(tmp_path, models_dir):
    from sidecar.service import Sidecar

    made = []

    async def start(music: list[Path], **settings):
        data = tmp_path / f"data{len(made)}"
        data.mkdir()
        (data / "models").symlink_to(models_dir)
        sc = Sidecar(Settings(music_dir=music, data_dir=data, reconcile_interval_s=0, **settings))
        made.append(sc)
        await sc.start(watch=False)
        if getattr(sc, "media", None) is None and settings.get("media_server_url"):  # until service.py starts it
            sc.media = MediaServerService(sc)
            await sc.media.start()
        from sidecar.http.app import make_app

        runner = web.AppRunner(make_app(sc), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        sc._test_runner = runner
        sc.base_url = "http://127.0.0.1:%d" % runner.addresses[0][1]
        return sc

    yield start
    for sc in made:
        if getattr(sc, "media", None) is not None:
            await sc.media.close()
        await sc._test_runner.cleanup()
        await sc.close()


async def http(sc, method: str, path: str, body=None, headers=None, raw: bytes | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        kw = {"data": raw} if raw is not None else ({"json": body} if body is not None else {})
        async with s.request(method, sc.base_url + path, headers=headers or {}, **kw) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else {})


@pytest.mark.slow
async def test_end_to_end_ids_recommendations_playlists_and_webhooks(start_sidecar, supysonic, excerpts, caplog):
    from tests.test_ingest import until_idle

    caplog.set_level(logging.INFO)
    secret = "hook-secret-123"
    sc = await start_sidecar(
        [supysonic.music], media_server_url=supysonic.url, media_server_user=supysonic.user,
        media_server_password=supysonic.password, media_server_auth="password", media_server_sync_interval_s=0,
        media_server_scan_poll_s=0, webhook_secret=secret, plugins={"subsonic": {"retry_min_s": "0.2", "pending_check_s": "0.2"}},
    )
    await until_idle(sc)
    async with adapter_for(supysonic) as a:
        songs = await a.songs()
    # every song on the server is matched to the track the sidecar made of its file
    await until(lambda: len(sc.media.listing.mapped) == len(songs), 20, "all songs matched")
    by_path = {str(supysonic.music / s.path): s.id for s in songs}
    for path, sid in by_path.items():
        assert sc.catalog.resolve_ids([sid]) == {sid: sc.catalog.file(path).track_id}
    code, status = await http(sc, "GET", "/api/mediaserver")
    assert code == 200 and status["connected"] and status["songs_matched"] == len(songs) and status["songs_unmatched"] == 0

    # recommendations: seeded by a server id, answered with tracks that all have server ids
    seed = songs[0].id
    code, rec = await http(sc, "POST", "/api/recommendations", {"seeds": [{"track_id": seed}], "limit": 4})
    assert code == 200, rec
    ours = [t["track_id"] for t in rec["tracks"]]
    server_ids = sc.catalog.external_ids(ours)
    assert len(ours) == 4 and set(server_ids) == set(ours)
    if "server_id" in rec["tracks"][0]:  # once the schema carries it (see docs/NAVIDROME.md)
        assert [t["server_id"] for t in rec["tracks"]] == [server_ids[t] for t in ours]

    # a playlist from a recommendation request: on the server, with those songs in that order
    request = {
        "name": "Sidecar mix", "user": "ann", "recommendation": {"seeds": [{"track_id": seed}], "limit": 4}, "refresh_interval_s": 3600,
    }
    code, made = await http(sc, "POST", "/api/playlists", request)
    assert code == 201, made
    assert made["track_ids"] == [server_ids[t] for t in ours] and made["sidecar_track_ids"] == ours and made["created"]
    listed = supysonic.call("getPlaylists")["playlists"]["playlist"]
    assert made["playlist_id"] in {p["id"] for p in listed if p["name"] == "Sidecar mix"}
    entries = supysonic.call("getPlaylist", id=made["playlist_id"])["playlist"]["entry"]
    assert [e["id"] for e in entries] == made["track_ids"]

    # a generated playlist is regenerated on its schedule (kept in the catalog), overwriting edits made meanwhile
    assert made["refresh_interval_s"] == 3600
    [schedule] = sc.catalog.playlist_schedules()
    assert (schedule["playlist_id"], schedule["user"], schedule["recommendation"]) == (made["playlist_id"], "ann", request["recommendation"])
    async with adapter_for(supysonic) as a:
        await a.replace_playlist(made["playlist_id"], [songs[5].id])
        assert await sc.media.refresh_playlists() == []  # not due yet
        assert await sc.media.refresh_playlists(force=True) == [made["playlist_id"]]
        assert (await a.playlist(made["playlist_id"])).song_ids == made["track_ids"]

    # replaced (same name and user): same playlist, new songs in the new order; our ids and server ids mixed
    mixed = [ours[3], server_ids[ours[0]], songs[5].id]
    code, again = await http(sc, "POST", "/api/playlists", {"name": "Sidecar mix", "user": "ann", "track_ids": mixed})
    assert code == 200 and again["playlist_id"] == made["playlist_id"] and not again["created"]
    assert again["track_ids"] == [server_ids[ours[3]], server_ids[ours[0]], songs[5].id]
    assert [e["id"] for e in supysonic.call("getPlaylist", id=made["playlist_id"])["playlist"]["entry"]] == again["track_ids"]
    code, mine = await http(sc, "GET", "/api/playlists?user=ann")
    assert code == 200 and [(p["playlist_id"], p["server_track_ids"]) for p in mine["playlists"]] == [(made["playlist_id"], again["track_ids"])]
    assert mine["playlists"][0]["refresh_interval_s"] is None  # a fixed list replaced the generated one
    code, bad = await http(sc, "POST", "/api/playlists", {"name": "x", "track_ids": [songs[0].id, "no-such-id"]})
    assert (code, bad["field"]) == (400, "track_ids.1") and "no-such-id" in bad["error"]
    code, bad = await http(sc, "POST", "/api/playlists", {"name": "x", "track_ids": ["a"], "recommendation": {"seeds": [{"track_id": seed}]}})
    assert code == 400
    code, _ = await http(sc, "DELETE", f"/api/playlists/{made['playlist_id']}")
    assert code == 204 and made["playlist_id"] not in {p["id"] for p in supysonic.call("getPlaylists").get("playlists", {}).get("playlist", [])}

    # a scrobble with the server's song id lands in the listening history
    code, body = await http(sc, "POST", "/webhooks/scrobble", {"user": "ann", "song_id": songs[2].id}, headers={"X-Webhook-Secret": secret})
    assert code == 202 and body["track_id"] == sc.catalog.resolve_ids([songs[2].id])[songs[2].id]

    # the webhook: bad secret 401, malformed body 400, a finished scan 202 and a reconcile that ingests the new file
    new = supysonic.music / "second" / excerpts[6].name
    shutil.copy2(excerpts[6], new)
    supysonic.scan()
    hook = "/webhooks/navidrome"
    assert (await http(sc, "POST", hook, {"event": "scan_finished"}))[0] == 401
    assert (await http(sc, "POST", hook, {"event": "scan_finished"}, headers={"X-Webhook-Secret": "wrong"}))[0] == 401
    code, body = await http(sc, "POST", hook, raw=b"{not json", headers={"X-Webhook-Secret": secret, "Content-Type": "application/json"})
    assert code == 400
    code, body = await http(sc, "POST", hook, {"event": "exploded"}, headers={"Authorization": f"Bearer {secret}"})
    assert (code, body["field"]) == (400, "event")
    before = sc.worker.stats.processed
    code, body = await http(sc, "POST", hook, {"event": "scanStatus", "scanning": False, "count": 7}, headers={"Authorization": f"Bearer {secret}"})
    assert code == 202 and body["action"] == "reconcile" and body["event_id"]
    await until_idle(sc, processed=before + 2)  # the scan event, then the new file
    assert sc.catalog.file(str(new)) is not None
    async with adapter_for(supysonic) as a:
        new_id = next(s.id for s in await a.songs() if s.path == str(new.relative_to(supysonic.music)))
    await until(lambda: sc.catalog.resolve_ids([new_id]).get(new_id) == sc.catalog.file(str(new)).track_id, 20, "the new song matched")
    assert_no_secret(caplog.text, supysonic.password, secret)


@pytest.mark.slow
async def test_a_wrong_password_or_a_dead_server_leaves_the_sidecar_serving(start_sidecar, supysonic, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    sc = await start_sidecar(
        [], media_server_url=supysonic.url, media_server_user=supysonic.user, media_server_password="WrongPassword!",
        media_server_auth="password", plugins={"subsonic": {"retry_min_s": "0.2", "retry_max_s": "0.5"}},
    )
    await until(lambda: sc.media.error, 10, "the error")
    assert (await http(sc, "GET", "/health"))[0] == 200
    code, status = await http(sc, "GET", "/api/mediaserver")
    assert code == 200 and not status["connected"] and "Wrong username or password" in status["last_error"]
    assert supysonic.url in status["last_error"] and "retries" in status["last_error"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("sidecar.mediaserver")]
    assert errors and "Wrong username or password" in errors[0].getMessage()
    attempts = len([r for r in supysonic.log().splitlines() if "Failed login attempt" in r])
    await asyncio.sleep(1.0)
    assert len([r for r in supysonic.log().splitlines() if "Failed login attempt" in r]) > attempts  # it retries
    code, body = await http(sc, "POST", "/api/playlists", {"name": "x", "track_ids": ["a"]})
    assert code == 400 and body["field"] == "track_ids.0"  # our own validation first: no track 'a'
    tid = add_track(sc.catalog, "/nowhere/x.ogg")
    sc.catalog.set_external_id(MEDIA_SERVER, "song-x", tid)
    code, refused = await http(sc, "POST", "/api/playlists", {"name": "x", "track_ids": ["song-x"]})
    assert code == 502 and supysonic.url in refused["error"] and "Wrong username or password" in refused["error"]

    # the same sidecar pointed at a server that is down: 503 with the URL, still serving
    from tests.servers import free_port

    await sc.media.close()
    dead = f"http://127.0.0.1:{free_port()}"
    settings = sc.settings.model_copy(update={"media_server_url": dead, "media_server_password": "pw-dead-secret"})
    sc.media = MediaServerService(sc, settings=settings)
    await sc.media.start()
    await until(lambda: sc.media.error, 10, "the error")
    code, body = await http(sc, "POST", "/api/playlists", {"name": "x", "track_ids": ["song-x"]})
    assert code == 503 and dead in body["error"] and "unreachable" in body["error"]
    assert (await http(sc, "GET", "/health"))[0] == 200
    assert_no_secret(caplog.text + json.dumps([status, refused, body]), "WrongPassword!", "pw-dead-secret")

    # a misspelt option: the server is not used, the status names the variable and the closest option
    await sc.media.close()
    sc.media = MediaServerService(sc, settings=sc.settings.model_copy(update={"plugins": {"subsonic": {"retry_min": "1"}}}))
    await sc.media.start()
    code, status = await http(sc, "GET", "/api/mediaserver")
    assert code == 200 and not status["connected"]
    assert "SIDECAR_PLUGINS__SUBSONIC__RETRY_MIN='1'" in status["last_error"] and "did you mean SIDECAR_PLUGINS__SUBSONIC__RETRY_MIN_S" in status["last_error"]
    assert (await http(sc, "GET", "/health"))[0] == 200

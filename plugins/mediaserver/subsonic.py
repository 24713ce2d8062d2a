"""The Subsonic API adapter: Navidrome first, any Subsonic server (tested against supysonic and a recorded
Navidrome response shape).

Authentication, per the Subsonic spec and OpenSubsonic:
- `token`: u + t = md5(password + s) with a fresh random salt s per request (Navidrome, Subsonic >= 1.13);
- `password`: u + p, where p is the password as configured: plain, or `enc:<hex>` (servers without tokens);
- an API key (OpenSubsonic `apiKeyAuthentication`): apiKey, and no u.
A configured `enc:<hex>` password is decoded for token auth and for Navidrome's own /auth/login.

Requests are GETs with the parameters in the query, or form POSTs when the server advertises the
OpenSubsonic `formPost` extension (so that credentials and long song lists stay out of its access log).
Connection errors, timeouts and 5xx answers are retried with exponential backoff, `retries` times in all;
Subsonic errors are not retried: they become `AuthError` (40-44), `Forbidden` (50), `NotFound` (70) or
`MediaServerError`. Nothing here logs or raises a secret: URLs are built without credentials in them and every
message goes through `redact`.
"""
from __future__ import annotations

import asyncio
import binascii
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from plugins.mediaserver import (
    AuthError, Forbidden, MediaServerError, NotFound, Playlist, ScanStatus, ServerInfo, Song, Unreachable, parse_time,
    redact,
)
from sidecar.plugins.api import MediaServer, MediaServerOptions

log = logging.getLogger(__name__)

API_VERSION = "1.16.1"
AUTH_CODES = {40, 41, 42, 43, 44}
# calls that change something: retried only when the connection could not be made (nothing was sent), so that
# a request the server did handle before failing to answer is not applied twice
NOT_IDEMPOTENT = {"createPlaylist", "updatePlaylist", "star", "unstar", "scrobble", "startScan"}
PAGE_SIZE = 500


def _list(x: Any) -> list:
    """Subsonic JSON gives a list, a single object (some servers, for one element) or nothing."""
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def _int(x: Any) -> int | None:
    try:
        return int(x) if x is not None and x != "" else None
    except (TypeError, ValueError):
        return None


def decode_password(password: str) -> str:
    """The plain password from a configured one, which may be `enc:<hex>`."""
    if password.startswith("enc:"):
        try:
            return binascii.unhexlify(password[4:]).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise ValueError("the media-server password starts with enc: but is not hex-encoded UTF-8") from None
    return password


def token_for(password: str, salt: str) -> str:
    """The Subsonic token: md5 of the password followed by the salt, as lowercase hex."""
    return hashlib.md5((password + salt).encode("utf-8")).hexdigest()


class SubsonicAdapter(MediaServer):
    name = "subsonic"

    def __init__(
        self, url: str, *, user: str = "", password: str = "", api_key: str = "", auth: str = "token",
        client: str = "music-sidecar", timeout_s: float = 15.0, retries: int = 3, backoff_s: float = 0.5,
        method: str = "auto", page_size: int = PAGE_SIZE, session: aiohttp.ClientSession | None = None,
    ):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the media-server URL must be http(s)://host[:port][/path], not {redact(url)!r}")
        if parts.username and not user:  # http://user:pass@host: take them, keep them out of the URL
            user = parts.username
            password = password or (parts.password or "")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        if ":" in parts.hostname:
            netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
        self.base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.url = self.base  # safe to show: no credentials
        if auth not in ("token", "password"):
            raise ValueError("media-server auth must be token or password")
        if not api_key and not user:
            raise ValueError("the media server needs a user (SIDECAR_MEDIA_SERVER_USER) or an API key")
        self.user, self.auth, self.client = user, auth, client
        self._password = password
        self._plain = decode_password(password) if password else ""
        self._api_key = api_key
        self.uses_api_key = bool(api_key)
        self.timeout_s, self.retries, self.backoff_s = timeout_s, max(1, retries), backoff_s
        self.method, self.page_size = method, page_size
        self._session = session
        self._own_session = session is None
        self._post: bool | None = {"get": False, "post": True}.get(method)
        self.info: ServerInfo | None = None

    @classmethod
    def from_settings(cls, settings, **overrides) -> "SubsonicAdapter":
        """From the sidecar's settings: SIDECAR_MEDIA_SERVER_* and SIDECAR_PLUGINS__SUBSONIC__{TIMEOUT_S,
        RETRIES, BACKOFF_S, METHOD, PAGE_SIZE, CLIENT} (MediaServerOptions)."""
        o = MediaServerOptions.of(settings)
        kw: dict[str, Any] = dict(
            user=settings.media_server_user, password=settings.media_server_password,
            api_key=settings.media_server_api_key, auth=settings.media_server_auth, timeout_s=o.timeout_s,
            retries=o.retries, backoff_s=o.backoff_s, page_size=o.page_size, method=o.method, client=o.client,
        )
        kw.update(overrides)
        return cls(settings.media_server_url, **kw)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self._password, self._plain, self._api_key) if s)

    # ---- transport
    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()

    async def __aenter__(self) -> "SubsonicAdapter":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _auth_params(self) -> list[tuple[str, str]]:
        if self._api_key:
            return [("apiKey", self._api_key)]
        if self.auth == "token":
            salt = secrets.token_hex(8)
            return [("u", self.user), ("t", token_for(self._plain, salt)), ("s", salt)]
        return [("u", self.user), ("p", self._password)]

    def _redact(self, text: Any) -> str:
        return redact(text, *self.secrets)

    def _fail(self, cls: type[MediaServerError], message: str, code: int | None = None) -> MediaServerError:
        return cls(self._redact(message), url=self.url, code=code)

    async def call(self, endpoint: str, params: Iterable[tuple[str, Any]] = (), *, retry: bool = True) -> dict:
        """One Subsonic call; returns the `subsonic-response` object. Raises the typed errors."""
        query = [("v", API_VERSION), ("c", self.client), ("f", "json"), *self._auth_params()]
        query += [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in params if v is not None]
        url = f"{self.base}/rest/{endpoint}"
        attempts = self.retries if retry else 1
        safe = endpoint not in NOT_IDEMPOTENT
        session = await self._get_session()
        last, made = "", 0
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            sent = True
            try:
                if self._post:
                    req = session.post(url, data=query)
                else:
                    req = session.get(url, params=query)
                async with req as r:
                    status, text = r.status, await r.text(errors="replace")
            except asyncio.TimeoutError:
                last = f"no answer within {self.timeout_s:g} s"
            except aiohttp.ClientConnectorError as e:
                sent = False
                last = f"cannot connect to {e.host}:{e.port} ({e.os_error.strerror or type(e.os_error).__name__})"
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
                last = f"the connection failed ({type(e).__name__})"
            except aiohttp.ClientError as e:  # too many redirects...: their text holds the URL, so only the type
                raise self._fail(MediaServerError, f"media server {self.url} failed on {endpoint}: {type(e).__name__}") from None
            else:
                log.debug("%s %s -> HTTP %d in %.0f ms", "POST" if self._post else "GET", endpoint, status, 1000 * (time.monotonic() - started))
                if status >= 500 or status == 429:
                    last = f"HTTP {status}"
                else:
                    return self._parse(endpoint, status, text)
            made = attempt
            if sent and not safe:
                break
            if attempt < attempts:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.debug("media server %s: %s on %s; retrying in %.1f s (%d/%d)", self.url, last, endpoint, delay, attempt, attempts)
                await asyncio.sleep(delay)
        tried = f"tried {made} time{'s' if made > 1 else ''}" + (", not again since it changes data" if made < attempts else "")
        raise self._fail(Unreachable, f"media server {self.url} is unreachable: {last} (on {endpoint}, {tried})")

    def _parse(self, endpoint: str, status: int, text: str) -> dict:
        try:
            data = json.loads(text)["subsonic-response"]
            if not isinstance(data, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            hint = {
                401: " (a reverse proxy asking for its own login? the sidecar must reach the Subsonic API directly)",
                403: " (a reverse proxy or firewall refusing the sidecar?)",
            }.get(status, " (wrong URL? it should be the server's base, e.g. http://navidrome:4533)" if status in (200, 301, 302, 404) else "")
            raise self._fail(
                MediaServerError, f"media server {self.url} did not answer like a Subsonic server: HTTP {status} on {endpoint}{hint}"
            ) from None
        if data.get("status") != "failed":
            return data
        err = data.get("error") or {}
        code, message = _int(err.get("code")), str(err.get("message") or "no message")
        if code == 10 and endpoint == "ping" and self.auth == "token" and not self._api_key:
            raise self._fail(AuthError, (
                f"media server {self.url} does not take token authentication ({message}, Subsonic error 10): "
                "set SIDECAR_MEDIA_SERVER_AUTH=password"
            ), code)
        if code in AUTH_CODES:
            who = "the API key" if self._api_key else f"user {self.user!r} ({self.auth} auth)"
            raise self._fail(AuthError, f"media server {self.url} rejected {who}: {message} (Subsonic error {code})", code)
        cls = {50: Forbidden, 70: NotFound}.get(code, MediaServerError)
        raise self._fail(cls, f"media server {self.url} refused {endpoint}: {message} (Subsonic error {code})", code)

    # ---- system
    async def ping(self) -> ServerInfo:
        """Checks the URL and the credentials; learns the server type and its OpenSubsonic extensions."""
        data = await self.call("ping")
        info = ServerInfo(
            api_version=data.get("version"), type=data.get("type"), server_version=data.get("serverVersion"),
            open_subsonic=bool(data.get("openSubsonic")),
        )
        if info.open_subsonic:
            try:
                ext = await self.call("getOpenSubsonicExtensions")
                info = ServerInfo(**{**info.__dict__, "extensions": {
                    e.get("name"): _list(e.get("versions")) for e in _list(ext.get("openSubsonicExtensions")) if e.get("name")
                }})
            except MediaServerError:
                pass
        if self._post is None:
            self._post = "formPost" in info.extensions
        self.info = info
        return info

    async def token_info(self) -> str | None:
        """The user an API key belongs to (OpenSubsonic tokenInfo), or None if the server cannot say."""
        try:
            data = await self.call("tokenInfo")
        except (AuthError, Unreachable):
            raise
        except MediaServerError:
            return None
        return (data.get("tokenInfo") or {}).get("username")

    # ---- library
    @staticmethod
    def _song(d: dict) -> Song:
        rating = _int(d.get("userRating"))
        return Song(
            id=str(d["id"]), path=d.get("path"), title=d.get("title"), artist=d.get("artist"), album=d.get("album"),
            album_id=str(d["albumId"]) if d.get("albumId") is not None else None,
            duration_s=float(d["duration"]) if d.get("duration") is not None else None,
            starred=parse_time(d.get("starred")), user_rating=rating, play_count=_int(d.get("playCount")),
            played=parse_time(d.get("played")),
        )

    async def song_pages(self, page_size: int | None = None) -> AsyncIterator[list[Song]]:
        """Every song, a page at a time (search3 with an empty query)."""
        size = page_size or self.page_size
        offset = 0
        while True:
            data = await self.call("search3", [
                ("query", ""), ("artistCount", 0), ("albumCount", 0), ("songCount", size), ("songOffset", offset),
            ])
            songs = [self._song(s) for s in _list((data.get("searchResult3") or {}).get("song")) if s.get("id") is not None]
            if songs:
                yield songs
            if len(songs) < size:
                return
            offset += size

    async def songs(self, page_size: int | None = None) -> list[Song]:
        out: list[Song] = []
        seen: set[str] = set()
        async for page in self.song_pages(page_size):
            for s in page:
                if s.id not in seen:  # a library changing under the paging can repeat a song
                    seen.add(s.id)
                    out.append(s)
        return out

    async def song(self, song_id: str) -> Song:
        data = await self.call("getSong", [("id", song_id)])
        return self._song(data["song"])

    async def starred(self) -> list[Song]:
        data = await self.call("getStarred2")
        return [self._song(s) for s in _list((data.get("starred2") or {}).get("song"))]

    async def album_list(self, kind: str, size: int = 50, offset: int = 0) -> list[dict]:
        data = await self.call("getAlbumList2", [("type", kind), ("size", size), ("offset", offset)])
        return _list((data.get("albumList2") or {}).get("album"))

    async def album_songs(self, album_id: str) -> list[Song]:
        data = await self.call("getAlbum", [("id", album_id)])
        return [self._song(s) for s in _list((data.get("album") or {}).get("song"))]

    async def played_songs(self, kind: str = "recent", albums: int = 50) -> list[Song]:
        """Songs of the most recently played (`recent`) or most played (`frequent`) albums, with their
        playCount and played time where the server gives them."""
        out: list[Song] = []
        for album in await self.album_list(kind, albums):
            if album.get("id") is None:
                continue
            try:
                out += await self.album_songs(str(album["id"]))
            except NotFound:  # removed between the two calls
                continue
        return out

    async def scan_status(self) -> ScanStatus:
        data = (await self.call("getScanStatus")).get("scanStatus") or {}
        return ScanStatus(
            scanning=bool(data.get("scanning")), count=_int(data.get("count")), folder_count=_int(data.get("folderCount")),
            last_scan=str(data["lastScan"]) if data.get("lastScan") else None,
        )

    async def start_scan(self, full: bool = False) -> ScanStatus:
        data = (await self.call("startScan", [("fullScan", "true")] if full else [])).get("scanStatus") or {}
        return ScanStatus(scanning=bool(data.get("scanning")), count=_int(data.get("count")))

    async def indexes_last_modified(self) -> int | None:
        """When the library last changed (getIndexes lastModified, epoch ms); asks with an ifModifiedSince in
        the future so that the server can leave the index itself out."""
        data = await self.call("getIndexes", [("ifModifiedSince", int(time.time() * 1000) + 10 * 365 * 86400 * 1000)])
        return _int((data.get("indexes") or {}).get("lastModified"))

    # ---- annotations
    async def star(self, song_id: str) -> None:
        await self.call("star", [("id", song_id)])

    async def unstar(self, song_id: str) -> None:
        await self.call("unstar", [("id", song_id)])

    async def set_rating(self, song_id: str, rating: int) -> None:
        await self.call("setRating", [("id", song_id), ("rating", rating)])

    async def scrobble(self, song_id: str, at: float | None = None, submission: bool = True) -> None:
        params: list[tuple[str, Any]] = [("id", song_id), ("submission", submission)]
        if at is not None:
            params.append(("time", int(at * 1000)))
        await self.call("scrobble", params)

    # ---- playlists
    @staticmethod
    def _playlist(d: dict, with_songs: bool = False) -> Playlist:
        return Playlist(
            id=str(d["id"]), name=d.get("name") or "", owner=d.get("owner"), song_count=_int(d.get("songCount")) or 0,
            public=d.get("public"), changed=parse_time(d.get("changed")),
            song_ids=[str(e["id"]) for e in _list(d.get("entry"))] if with_songs else None,
        )

    async def playlists(self) -> list[Playlist]:
        data = await self.call("getPlaylists")
        return [self._playlist(p) for p in _list((data.get("playlists") or {}).get("playlist"))]

    async def playlist(self, playlist_id: str) -> Playlist:
        """One playlist with its songs' ids, in order."""
        data = await self.call("getPlaylist", [("id", playlist_id)])
        return self._playlist(data["playlist"], with_songs=True)

    async def create_playlist(self, name: str, song_ids: list[str]) -> Playlist:
        """Creates it and returns it with its id. Servers that answer createPlaylist without the playlist
        (Subsonic < 1.14, supysonic) are asked for getPlaylists: the new one is the one that was not there."""
        before = {p.id for p in await self.playlists() if p.name == name}
        data = await self.call("createPlaylist", [("name", name)] + [("songId", s) for s in song_ids])
        if isinstance(data.get("playlist"), dict) and data["playlist"].get("id") is not None:
            return await self.playlist(str(data["playlist"]["id"]))
        new = [p for p in await self.playlists() if p.name == name and p.id not in before]
        if len(new) != 1:
            raise self._fail(MediaServerError, f"media server {self.url} created playlist {name!r} but its id cannot be found ({len(new)} candidates)")
        return await self.playlist(new[0].id)

    async def replace_playlist(self, playlist_id: str, song_ids: list[str], name: str | None = None) -> Playlist:
        """Replaces the songs (createPlaylist with playlistId, which every server treats as replace) and
        renames it if `name` is given."""
        await self.call("createPlaylist", [("playlistId", playlist_id)] + [("songId", s) for s in song_ids])
        if name:
            await self.call("updatePlaylist", [("playlistId", playlist_id), ("name", name)])
        return await self.playlist(playlist_id)

    async def update_playlist(
        self, playlist_id: str, *, name: str | None = None, comment: str | None = None, public: bool | None = None,
        add: Iterable[str] = (), remove_indexes: Iterable[int] = (),
    ) -> None:
        params: list[tuple[str, Any]] = [("playlistId", playlist_id), ("name", name), ("comment", comment), ("public", public)]
        params += [("songIdToAdd", s) for s in add] + [("songIndexToRemove", i) for i in remove_indexes]
        await self.call("updatePlaylist", params)

    async def delete_playlist(self, playlist_id: str) -> None:
        await self.call("deletePlaylist", [("id", playlist_id)])

    # ---- Navidrome's own API: server-sent events
    async def navidrome_login(self) -> str:
        """A Navidrome session token (JWT) from /auth/login; needs the user's password (not an API key)."""
        if self._api_key or not self._plain:
            raise self._fail(AuthError, f"Navidrome's event stream at {self.url} needs a user and password, not an API key")
        session = await self._get_session()
        try:
            async with session.post(f"{self.base}/auth/login", json={"username": self.user, "password": self._plain}) as r:
                status, text = r.status, await r.text(errors="replace")
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise self._fail(Unreachable, f"media server {self.url} is unreachable for /auth/login ({type(e).__name__})") from None
        if status == 401:
            raise self._fail(AuthError, f"Navidrome at {self.url} rejected the login of user {self.user!r} (HTTP 401)")
        try:
            token = json.loads(text)["token"]
        except (ValueError, KeyError, TypeError):
            raise self._fail(MediaServerError, f"{self.url} has no Navidrome /auth/login (HTTP {status})") from None
        return str(token)

    async def events(self, token: str, read_timeout_s: float = 60.0) -> AsyncIterator[tuple[str, Any]]:
        """Navidrome's server-sent events (/api/events) as (event name, parsed data). Navidrome sends a
        keepAlive every 15 s, so a silent minute means the stream is dead: the iterator then ends."""
        session = await self._get_session()
        headers = {"X-ND-Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=read_timeout_s)
        try:
            async with session.get(f"{self.base}/api/events", headers=headers, timeout=timeout) as r:
                if r.status == 401:
                    raise self._fail(AuthError, f"Navidrome at {self.url} refused the event stream (HTTP 401)")
                if r.status != 200 or not r.headers.get("Content-Type", "").startswith("text/event-stream"):
                    raise self._fail(MediaServerError, f"{self.url} has no Navidrome event stream (HTTP {r.status})")
                event, data = "message", []
                async for raw in r.content:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if not line:
                        if data:
                            text = "\n".join(data)
                            try:
                                payload: Any = json.loads(text)
                            except ValueError:
                                payload = text
                            yield event, payload
                        event, data = "message", []
                    elif line.startswith(":"):
                        continue
                    else:
                        key, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if key == "event":
                            event = value
                        elif key == "data":
                            data.append(value)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise self._fail(Unreachable, f"Navidrome's event stream at {self.url} broke off ({type(e).__name__})") from None

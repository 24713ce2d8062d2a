"""Media-server adapters: what the sidecar needs from Navidrome or another Subsonic server.

An adapter implements sidecar.plugins.api.MediaServer and is found through the `sidecar.media_servers`
entry-point group (pyproject.toml) by sidecar.plugins.loader.load_media_server, so another kind of server can
be added by installing a package; `subsonic` (Navidrome first, any Subsonic server) is built in. This module
holds what adapters share: the value types they answer with, their typed errors and `redact`.

Errors are typed so callers can answer clearly: `AuthError` (wrong credentials), `NotFound` (an unknown id),
`Unreachable` (the server is down or answers 5xx, after bounded retries), `MediaServerError` for the rest.
Their messages name the server's URL but never a secret: `redact` removes passwords, tokens, salts and API
keys from anything that might be shown or logged.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger(__name__)

# query parameters and JSON fields that carry secrets (Subsonic: p, t, s, apiKey; Navidrome: jwt, token)
_SECRET_PARAM = re.compile(r"(?i)([?&;](?:p|t|s|apikey|api_key|token|jwt|password)=)[^&#\s'\"]*")
_SECRET_JSON = re.compile(r'(?i)("(?:password|token|subsonicToken|subsonicSalt|apiKey)"\s*:\s*")[^"]*(")')
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@")


def redact(text: Any, *secrets: str) -> str:
    """`text` with secret query parameters, JSON secret fields, URL user-info and the given literal secrets
    replaced by ***."""
    out = str(text)
    for s in secrets:
        if s and len(s) >= 3:
            out = out.replace(s, "***")
    out = _SECRET_PARAM.sub(r"\1***", out)
    out = _SECRET_JSON.sub(r"\1***\2", out)
    return _USERINFO.sub(r"\1***@", out)


class MediaServerError(Exception):
    """The server answered with an error, or with something that is not the Subsonic API.

    `code` is the Subsonic error code where there is one; `url` the server's base URL (no secrets)."""

    def __init__(self, message: str, *, url: str = "", code: int | None = None):
        super().__init__(redact(message))
        self.url, self.code = redact(url), code


class AuthError(MediaServerError):
    """Wrong user name, password, token or API key (Subsonic errors 40, 41, 42, 43, 44)."""


class Forbidden(MediaServerError):
    """The user may not do this (Subsonic error 50), e.g. getScanStatus without admin rights."""


class NotFound(MediaServerError):
    """The song, playlist or album does not exist (Subsonic error 70)."""


class Unreachable(MediaServerError):
    """No answer, a refused connection, a timeout or a 5xx, after the retries."""


@dataclass(frozen=True)
class Song:
    id: str
    path: str | None = None
    title: str | None = None
    artist: str | None = None
    album: str | None = None
    album_id: str | None = None
    duration_s: float | None = None
    starred: datetime | None = None
    user_rating: int | None = None
    play_count: int | None = None
    played: datetime | None = None


@dataclass(frozen=True)
class Playlist:
    id: str
    name: str
    owner: str | None = None
    song_count: int = 0
    public: bool | None = None
    changed: datetime | None = None
    song_ids: list[str] | None = None  # only from a single playlist's read


@dataclass(frozen=True)
class ScanStatus:
    scanning: bool
    count: int | None = None
    folder_count: int | None = None
    last_scan: str | None = None  # as the server gives it (Navidrome: an ISO time); None where not reported


@dataclass(frozen=True)
class ServerInfo:
    api_version: str | None = None
    type: str | None = None  # "navidrome", ... (OpenSubsonic); None for plain Subsonic servers
    server_version: str | None = None
    open_subsonic: bool = False
    extensions: dict[str, list[int]] = field(default_factory=dict)


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time as servers send it (Navidrome: nanoseconds and Z), or epoch milliseconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000, timezone.utc)
    s = str(value).strip().replace("Z", "+00:00")
    m = re.match(r"^(.*T\d{2}:\d{2}:\d{2})(\.\d+)?(.*)$", s)
    if m:  # Python wants at most 6 fractional digits
        s = m.group(1) + (m.group(2)[:7] if m.group(2) else "") + m.group(3)
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


__all__ = [
    "AuthError", "Forbidden", "MediaServerError", "NotFound", "Playlist", "ScanStatus", "ServerInfo", "Song",
    "Unreachable", "parse_time", "redact",
]

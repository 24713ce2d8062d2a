"""Requests and responses of the media-server routes: playlists written back, the Navidrome webhook, status."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.recommend import RecommendationRequest

# what a webhook's `event` may say, and the spellings each one is known by
WEBHOOK_EVENTS: dict[str, tuple[str, ...]] = {
    "scan_finished": ("scan_finished", "scan.finished", "scanfinished", "scan_completed", "scan.completed", "scancompleted", "scan_done"),
    "scan_started": ("scan_started", "scan.started", "scanstarted"),
    "scan_status": ("scan_status", "scanstatus", "scan.status"),
    "refresh_resource": ("refresh_resource", "refreshresource", "library_changed", "library.changed"),
    "ping": ("ping", "test"),
}
_ALIASES = {alias: name for name, aliases in WEBHOOK_EVENTS.items() for alias in aliases}


class NavidromeWebhook(BaseModel):
    """What POST /webhooks/navidrome accepts. `event` names what happened; a `scan_status` event carries
    Navidrome's scanStatus fields (scanning false means the scan finished), a `refresh_resource` event its
    refreshResource map (e.g. {"song": ["id1"]} or {"*": "*"})."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    event: str = Field(min_length=1, max_length=64, description="scan_finished | scan_started | scan_status | refresh_resource | ping")
    scanning: bool | None = None
    count: int | None = Field(default=None, ge=0)
    folder_count: int | None = Field(default=None, ge=0, alias="folderCount")
    resources: dict[str, Any] | None = None

    @field_validator("event")
    @classmethod
    def _known(cls, v: str) -> str:
        name = _ALIASES.get(v.strip().lower().replace("-", "_"))
        if name is None:
            raise ValueError(f"unknown event {v!r}; expected one of {', '.join(WEBHOOK_EVENTS)}")
        return name

    @property
    def finished_scan(self) -> bool:
        return self.event == "scan_finished" or (self.event == "scan_status" and self.scanning is False)


class WebhookResult(BaseModel):
    status: Literal["accepted", "ignored", "ok"]
    event: str
    action: Literal["reconcile", "sync"] | None = Field(default=None, description="reconcile: a scan.completed event was published")
    event_id: str | None = Field(default=None, description="the library event published on the bus")


class PlaylistRequest(BaseModel):
    """POST /api/playlists: give either the tracks (our ids or the server's, in order) or a recommendation
    request whose result becomes the playlist."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    user: str | None = Field(default=None, max_length=200, description="whose playlist, in the sidecar; default for the recommendation's user")
    track_ids: list[str] | None = Field(default=None, min_length=1, max_length=5000, description="our ids or the media server's")
    recommendation: RecommendationRequest | None = None
    replace: bool = Field(default=True, description="replace the songs of this user's playlist with the same name, if there is one")
    playlist_id: str | None = Field(default=None, min_length=1, max_length=200, description="the server playlist to replace")
    refresh_interval_s: float | None = Field(
        default=None, ge=60, le=30 * 86400, description="re-run the recommendation and rewrite the playlist this often"
    )

    @field_validator("name")
    @classmethod
    def _printable(cls, v: str) -> str:
        v = v.strip()
        if not v or any(ord(c) < 32 for c in v):
            raise ValueError("a playlist name must be printable text")
        return v

    @field_validator("track_ids")
    @classmethod
    def _ids(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not t or len(t) > 200 for t in v):
            raise ValueError("each track id must be 1 to 200 characters")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "PlaylistRequest":
        if (self.track_ids is None) == (self.recommendation is None):
            raise ValueError("give exactly one of track_ids or recommendation")
        if self.refresh_interval_s is not None and self.recommendation is None:
            raise ValueError("refresh_interval_s needs a recommendation to re-run")
        return self


class PlaylistResult(BaseModel):
    playlist_id: str = Field(description="the media server's playlist id")
    name: str
    user: str | None = None
    track_ids: list[str] = Field(description="the server's song ids, in order, as read back from the server")
    sidecar_track_ids: list[str] = Field(description="the same tracks by our ids")
    created: bool = Field(description="false when an existing playlist was replaced")
    skipped: list[str] = Field(default_factory=list, description="recommended tracks the server does not have (our ids)")
    warnings: list[str] = Field(default_factory=list)
    refresh_interval_s: float | None = None


class PlaylistInfo(BaseModel):
    playlist_id: str
    name: str
    user: str | None = None
    track_ids: list[str] = Field(description="our ids, in order")
    server_track_ids: list[str | None] = Field(description="the server's song id of each track, where known")
    updated_at: datetime
    refresh_interval_s: float | None = None


class PlaylistList(BaseModel):
    playlists: list[PlaylistInfo]


class MediaServerStatus(BaseModel):
    configured: bool
    url: str | None = None
    user: str | None = None
    auth: str | None = None
    connected: bool = False
    server_type: str | None = None
    server_version: str | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    songs_on_server: int | None = None
    songs_matched: int = 0
    songs_unmatched: int = 0
    unmatched_example: str | None = Field(default=None, description="a server path that matched no file, to check the prefix mapping")
    path_prefix: str | None = None
    last_listing_at: datetime | None = None
    last_sync_at: datetime | None = None
    last_scan_event_at: datetime | None = None
    scan_watch: str | None = Field(default=None, description="how server scans are noticed: getScanStatus, getIndexes or off")
    events: str = Field(default="off", description="Navidrome event stream: off, connecting or connected")


class PlaylistsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(default=None, max_length=200, description="only this user's playlists")

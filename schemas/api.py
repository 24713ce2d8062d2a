"""HTTP API requests and responses."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    error: str
    field: str | None = Field(default=None, description="the request field at fault, where one is")


class TrackBrief(BaseModel):
    track_id: str
    title: str | None = None
    artist: str | None = None
    album: str | None = None
    duration_s: float | None = None
    path: str | None = None


class ModelResult(BaseModel):
    status: str = Field(description="done or failed")
    version: str
    error: str | None = None
    seconds: float | None = None
    tags: dict[str, float] | None = None
    features: dict[str, Any] | None = None


class TrackDetail(TrackBrief):
    content_hash: str
    sample_rate: int | None = None
    channels: int | None = None
    genre: str | None = None
    year: str | None = None
    paths: list[str]
    models: dict[str, ModelResult]


class TrackList(BaseModel):
    tracks: list[TrackBrief]


class TracksQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(default="", max_length=200)
    limit: int = Field(default=50, ge=1, le=500)


class SimilarTracksQuery(BaseModel):
    """AudioMuse-AI compatible: `item_id` and `n`."""

    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(min_length=1, max_length=64)
    n: int = Field(default=10, ge=1, le=500)
    model: str | None = Field(default=None, max_length=64, description="embedder to search; default: the first enabled")


class SimilarTrack(BaseModel):
    """Field names as AudioMuse-AI's API returns them, so its Navidrome plugin can read them."""

    item_id: str
    title: str | None = None
    author: str | None = None
    album: str | None = None
    distance: float = Field(description="cosine distance, 1 - cosine similarity")


class Health(BaseModel):
    status: str
    version: str


class Status(BaseModel):
    tracks: int
    files: int
    failed_files: int
    models: dict[str, dict[str, int]]
    embedders_ready: list[str]
    embedders_unavailable: dict[str, str]
    bus: str
    bus_lag: int
    ingest: dict[str, Any]
    dead_letters: int

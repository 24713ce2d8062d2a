"""HTTP API requests and responses."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ErrorBody(BaseModel):
    error: str
    field: str | None = Field(default=None, description="the request field at fault, where one is")


class TrackBrief(BaseModel):
    track_id: str
    server_id: str | None = Field(default=None, description="the media server's song id, where it has the file")
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
    duplicate_of: str | None = Field(
        default=None, description="the track this one is another file of (another format, bit rate, trim or master of the "
        "same recording): the first added of the group; null for that one and for a track with no other file",
    )


class TrackList(BaseModel):
    tracks: list[TrackBrief]


class TracksQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(default="", max_length=200)
    limit: int = Field(default=50, ge=1, le=500)


class SimilarTracksQuery(BaseModel):
    """AudioMuse-AI compatible: its Navidrome plugin sends item_id (Navidrome's song id), n,
    eliminate_duplicates and radius_similarity."""

    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(min_length=1, max_length=200, description="our track id or the media server's song id")
    n: int = Field(default=10, ge=1, le=500)
    model: str | None = Field(default=None, max_length=64, description="embedder to search; default: the first enabled")
    eliminate_duplicates: bool = Field(default=False, description="leave out tracks with the same title and artist as one already listed")
    radius_similarity: bool | None = Field(default=None, description="accepted for AudioMuse-AI compatibility; results are always exact")
    mood_similarity: bool | None = Field(default=None, description="accepted for AudioMuse-AI compatibility; ignored")
    server: str | None = Field(default=None, max_length=64, description="accepted for AudioMuse-AI compatibility; ignored")


class SimilarTrack(BaseModel):
    """Field names as AudioMuse-AI's API returns them, so its Navidrome plugin can read them."""

    item_id: str = Field(description="the media server's song id where known, else ours")
    title: str | None = None
    author: str | None = None
    album: str = Field(default="unknown", description="'unknown' when the file has no album tag, as AudioMuse-AI says")
    album_artist: str | None = None
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


class ModelInfo(BaseModel):
    name: str
    kind: str = Field(description="embedder or text_encoder")
    version: str | None = None
    dim: int | None = None
    sample_rate: int | None = None
    available: bool
    reason: str | None = Field(default=None, description="why it is unavailable")
    supports_text: bool = False
    text_via: str | None = Field(default=None, description="joint (the model's own text tower) or projection (trained)")
    tracks_embedded: int = 0


class ModelList(BaseModel):
    models: list[ModelInfo]


class EmbedTextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=500)
    model: str = Field(min_length=1, max_length=64)


class EmbedTextResponse(BaseModel):
    model: str
    dim: int
    via: str
    vector: list[float]


class TextRecommendationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=500)
    negative_prompts: list[str] = Field(default_factory=list, max_length=10)
    models: list[str] | None = Field(default=None, max_length=8, description="audio models to search; default: every one with text support")
    limit: int = Field(default=25, ge=1, le=500)
    method: Literal["auto", "tags", "vector"] = Field(
        default="auto", description="tags: zero-shot over analysed tags and features; vector: text projected into each model's space; auto: vector where a model supports text, else tags"
    )
    negative_penalty: float = Field(default=0.5, ge=0, le=2)

    @field_validator("negative_prompts")
    @classmethod
    def _short(cls, v: list[str]) -> list[str]:
        if any(not p.strip() or len(p) > 200 for p in v):
            raise ValueError("each negative prompt must be 1 to 200 characters")
        return v


class ConceptMatch(BaseModel):
    concept: str
    weight: float
    similarity: float
    clause: str


class PlaylistTrack(TrackBrief):
    score: float
    models: list[str] = Field(default_factory=list, description="the models that found it")
    reasons: list[str] = Field(default_factory=list)


class TextPlaylist(BaseModel):
    method: str
    matched: list[ConceptMatch] = Field(default_factory=list)
    tracks: list[PlaylistTrack]


class Accepted(BaseModel):
    status: Literal["accepted"] = Field(default="accepted", description="the work runs in the background")


class FailuresQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=50, ge=1, le=500)


class Failure(BaseModel):
    path: str
    track_id: str | None = Field(default=None, description="null when the file could not be decoded at all")
    model: str | None = Field(default=None, description="the model that failed on the track; null for a decode failure")
    reason: str | None = None
    failed_at: float = Field(description="Unix time")


class FailureList(BaseModel):
    failures: list[Failure]


class RetryResult(BaseModel):
    retrying: int = Field(description="files announced again")
    paths: list[str]


class ScrobbleResult(BaseModel):
    status: Literal["recorded"] = "recorded"
    track_id: str = Field(description="our id of the track played")

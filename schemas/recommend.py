"""POST /api/recommendations: seeds (tracks, raw vectors, text), modes, multi-model merging; and scrobbles."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from schemas.api import TrackBrief


class Seed(BaseModel):
    """One thing to steer by: exactly one of a track, a raw vector (in `model`'s space) or a text prompt."""

    model_config = ConfigDict(extra="forbid")
    track_id: str | None = Field(default=None, max_length=64, description="our id or the media server's")
    vector: list[float] | None = Field(default=None, max_length=32768)
    model: str | None = Field(default=None, max_length=64, validate_default=True, description="the space a raw vector is in")
    text: str | None = Field(default=None, min_length=1, max_length=500)
    weight: float = Field(default=1.0, gt=0, le=100)
    sign: Literal["positive", "negative"] = "positive"
    played_at: datetime | None = Field(default=None, description="older seeds count less (recency_half_life_days)")

    @field_validator("model")
    @classmethod
    def _vector_needs_model(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("vector") is not None and not v:
            raise ValueError("a vector seed needs the model whose space it is in")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> "Seed":
        given = [k for k in ("track_id", "vector", "text") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a seed needs exactly one of track_id, vector or text")
        return self


class RecommendationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["custom", "recent", "favorites", "all", "discovery"] = Field(
        default="custom",
        description="custom: only the given seeds; recent: the user's recent plays; favorites: stars and ratings >= 4; "
        "all: both; discovery: both, leaving out what the user has played, with more diversity",
    )
    user: str | None = Field(
        default=None, max_length=200, validate_default=True, description="needed by recent, favorites, all, discovery"
    )
    seeds: list[Seed] = Field(default_factory=list, max_length=200)
    limit: int = Field(default=25, ge=1, le=500)
    diversity: float | None = Field(default=None, ge=0, le=1, description="0: most similar first; 1: spread out (maximal marginal relevance)")
    exclude_track_ids: list[str] = Field(default_factory=list, max_length=10000)
    exclude_playlist_ids: list[str] = Field(default_factory=list, max_length=100)
    low_rating_penalty: float = Field(default=0.85, ge=0, le=1, description="score multiplier for tracks the user rated 1-2")
    models: list[str] | None = Field(default=None, min_length=1, max_length=8, description="default: the first enabled embedder")
    merge_strategy: Literal["union", "intersection", "priority"] = "union"
    model_priorities: list[str] | None = Field(default=None, max_length=8, description="priority order; default: `models` order")
    min_model_agreement: int = Field(default=1, ge=1, le=8, description="a track must be found by at least this many models")
    negative_prompts: list[str] = Field(default_factory=list, max_length=10, description="each 1 to 200 characters")
    negative_penalty: float = Field(default=0.5, ge=0, le=2)
    recency_half_life_days: float = Field(default=30, gt=0, le=3650)
    candidates_per_model: int | None = Field(default=None, ge=1, le=5000, description="default: 4 x limit")

    @field_validator("user")
    @classmethod
    def _mode_needs_user(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("mode", "custom") != "custom" and not v:
            raise ValueError(f"mode {info.data['mode']} needs a user")
        return v

    @field_validator("min_model_agreement")
    @classmethod
    def _agreement_within_models(cls, v: int, info: ValidationInfo) -> int:
        if v > len(info.data.get("models") or [None]):
            raise ValueError("min_model_agreement cannot exceed the number of models")
        return v

    @field_validator("negative_prompts")
    @classmethod
    def _prompts(cls, v: list[str]) -> list[str]:
        if any(not p.strip() or len(p) > 200 for p in v):
            raise ValueError("each negative prompt must be 1 to 200 characters")
        return v


class NearSeed(BaseModel):
    seed: str = Field(description="the seed's track id, 'text: ...' or 'vector #n'")
    similarity: float
    model: str


class Recommendation(TrackBrief):
    score: float = Field(description="0-1, higher is better")
    models: list[str] = Field(description="the models whose candidates held this track")
    nearest_seeds: list[NearSeed] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)


class RecommendationResponse(BaseModel):
    mode: str
    models: list[str]
    merge_strategy: str
    seeds_used: int
    diversity: float
    tracks: list[Recommendation]
    warnings: list[str] = Field(default_factory=list)


class Scrobble(BaseModel):
    """What a Navidrome scrobbler plugin sends: a play (submission) or now-playing."""

    model_config = ConfigDict(extra="ignore")
    user: str = Field(min_length=1, max_length=200)
    song_id: str | None = Field(default=None, max_length=200, description="the media server's id, or ours")
    track_id: str | None = Field(default=None, max_length=64)
    time: datetime | None = Field(default=None, description="when it was played; default now")
    submission: bool = Field(default=True, description="false for now-playing")

    @field_validator("time", mode="before")
    @classmethod
    def _unix_time(cls, v):
        """Scrobblers send Unix seconds (or milliseconds) as often as ISO times. (Parsed here: request bodies
        are validated strictly, where a before-validator's input no longer counts as JSON text.)"""
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                return datetime.fromtimestamp(v / 1000 if v > 1e11 else v, timezone.utc)
            except (OverflowError, OSError):
                raise ValueError(f"{v} is not a Unix time") from None
        if isinstance(v, str):
            return datetime.fromisoformat(v)  # ValueError names the field in the 400
        return v

    @model_validator(mode="after")
    def _some_id(self) -> "Scrobble":
        if not (self.song_id or self.track_id):
            raise ValueError("a scrobble needs song_id or track_id")
        return self

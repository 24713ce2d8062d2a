"""Clustering the library into playlists: the start request and the job's status (see sidecar/clustering/)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from schemas.api import ErrorBody

ALGORITHMS = ("kmeans", "gmm", "dbscan", "spectral")
MAX_ITERATIONS = 100_000


class ClusteringStart(BaseModel):
    """POST /api/clustering/start. Defaults follow AudioMuse-AI's where it has one (weights 1 and 2, kmeans)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, max_length=64, description="embedder whose vectors are clustered; default: the first enabled")
    algorithms: list[str] = Field(
        default_factory=lambda: ["kmeans"], description="any of kmeans, gmm, dbscan, spectral; the search tries each"
    )
    iterations: int = Field(default=200, ge=1, le=MAX_ITERATIONS, description="clustering runs of the evolutionary search")
    max_songs_per_playlist: int = Field(default=50, ge=1, le=10_000, description="bigger clusters are split, then trimmed")
    min_songs_per_playlist: int = Field(default=3, ge=1, le=10_000, description="smaller clusters are not playlists")
    top_n_playlists: int = Field(default=20, ge=0, le=1000, description="keep the N most diverse playlists; 0 keeps all")
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="makes the search reproducible; default: random")
    k_min: int = Field(default=2, ge=2, le=1000, description="fewest clusters tried (kmeans, gmm, spectral)")
    k_max: int | None = Field(default=None, ge=2, le=1000, description="most clusters tried; default: tracks/5, at most 100")
    use_tags: bool = Field(default=True, description="concatenate the MusiCNN tag probabilities to the model's vectors")
    tag_weight: float = Field(default=1.0, ge=0, le=10, description="weight of the tag block against the vector block")
    pca: bool = Field(default=True, description="let the search reduce the features with PCA")
    pca_max_components: int = Field(default=32, ge=2, le=128)
    score_weight_purity: float = Field(default=1.0, ge=0, le=10)
    score_weight_diversity: float = Field(default=2.0, ge=0, le=10)
    exploitation_probability: float = Field(default=0.7, ge=0, le=1, description="chance of mutating an elite rather than drawing afresh")
    sample_size: int = Field(default=0, ge=0, le=10_000_000, description="tracks clustered per iteration (stratified); 0: all")
    sample_change: float = Field(default=0.2, ge=0, le=1, description="share of the sample swapped between iterations")

    @field_validator("algorithms")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one algorithm")
        bad = [a for a in v if a not in ALGORITHMS]
        if bad:
            raise ValueError(f"unknown algorithm {bad[0]!r}; choose from {', '.join(ALGORITHMS)}")
        return list(dict.fromkeys(v))

    @field_validator("k_max")
    @classmethod
    def _k_range(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v < info.data.get("k_min", 2):
            raise ValueError("k_max must be at least k_min")
        return v

    @field_validator("min_songs_per_playlist")
    @classmethod
    def _size_range(cls, v: int, info: ValidationInfo) -> int:
        if v > info.data.get("max_songs_per_playlist", v):
            raise ValueError("min_songs_per_playlist must not exceed max_songs_per_playlist")
        return v


class ClusteringConflict(ErrorBody):
    """409: a job is running already (its id), or the library has too few tracks for the request (no id)."""

    job_id: str | None = Field(default=None, description="the job that is running, when that is the conflict")


class Progress(BaseModel):
    done: int
    total: int


class ClusterTrack(BaseModel):
    track_id: str
    title: str | None = None
    artist: str | None = None


class TagScore(BaseModel):
    tag: str
    score: float = Field(description="the playlist's mean probability minus the library's")


class ClusterPlaylist(BaseModel):
    name: str
    size: int
    purity: float = Field(description="mean percentile rank of its songs on its defining tags (0.5: a typical track)")
    diversity: float = Field(description="mean distance of its tag identity to the other kept playlists' (0..1)")
    tempo_bpm: float | None = Field(default=None, description="median tempo of its tracks")
    top_tags: list[TagScore]
    tracks: list[ClusterTrack]


class ClusteringJob(BaseModel):
    job_id: str
    status: Literal["running", "done", "cancelled", "failed"]
    model: str
    algorithms: list[str]
    tracks: int = Field(description="tracks with vectors and tags that were clustered")
    seed: int
    progress: Progress
    best_score: float | None = None
    best_purity: float | None = None
    best_diversity: float | None = None
    best_params: dict[str, Any] | None = None
    started_at: float
    finished_at: float | None = None
    elapsed_s: float
    eta_s: float | None = Field(default=None, description="seconds left, from the pace so far")
    cancel_requested: bool = False
    error: str | None = None
    playlists: list[ClusterPlaylist] | None = Field(default=None, description="when done")


class ClusteringJobList(BaseModel):
    jobs: list[ClusteringJob]

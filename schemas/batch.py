"""The re-embed (a replay of the library's events) over HTTP."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BatchStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(default_factory=list, max_length=32, description="models to re-embed even if current; empty: reprocess only")
    scope: str | None = Field(default=None, max_length=4096, description="only files under this folder (inside a music root)")


class BatchProgress(BaseModel):
    replay_id: str
    status: str = Field(description="running, cancelling, done, cancelled, failed or interrupted")
    models: list[str]
    scope: str | None = None
    total: int | None = Field(default=None, description="events to go through; known once the run has started")
    processed: int
    embedded: int
    skipped: int
    failed: int
    current: str | None = None
    rate_per_s: float
    eta_s: float | None = None
    elapsed_s: float

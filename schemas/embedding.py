"""What an embedder plugin returns for one track."""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator


class EmbedResult(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    vector: np.ndarray = Field(description="the track vector, float32, shape (dim,)")
    segments: np.ndarray | None = Field(default=None, description="optional per-segment vectors, shape (n, dim)")
    tags: dict[str, float] | None = Field(default=None, description="optional tag probabilities")
    features: dict[str, float | str] | None = Field(default=None, description="optional scalar features (tempo, key...)")

    @field_validator("vector")
    @classmethod
    def _finite_1d(cls, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float32)
        if v.ndim != 1 or not np.all(np.isfinite(v)):
            raise ValueError("vector must be a finite 1-d array")
        return v

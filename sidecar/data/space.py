"""A model's similarity space (Embedder.space) and its library statistics.

Milvus keeps every raw vector as the embedder made it; reads see them transformed: each dimension z-scored
with the library's mean and standard deviation, times its block's scales, each block made unit length and
multiplied by sqrt(weight / total weight). The cosine of two transformed vectors is then the weighted mean of
their blocks' cosines (every block of a transformed vector is nonzero unless the track equals the mean there).

The mirror holds the transformed vectors projected on their PROJECT principal directions in the library
(`project`; `lift` maps them back): a space of 1,012 dimensions (MusiCNN's) is searched and held in 200, with
the same quality on the labelled corpus (docs/QUALITY.md) at the memory and search time of 200-d vectors
(docs/PERFORMANCE.md). Without the mirror, Milvus holds them so too (space_index.py). Everything else sees
the full transformed space, whose dimension never changes as the library grows.

The statistics follow the library (`due`): fitted once it has MIN_FIT tracks, again each time it has doubled
or halved, and then kept once fitted over FREEZE tracks or more: statistics from 30 random tracks already gave
nearly the whole library's gains (.cache/quality/REPORT.md), and frozen statistics keep every vector the mirror
holds comparable with new ones without a second copy of the raw vectors (the mirror keeps the raw ones only
until then: fewer than FREEZE rows).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sidecar.plugins.api import Block

MIN_FIT = 32  # fewer tracks: no standardisation yet (the statistics of a handful of tracks mislead)
FREEZE = 4096  # statistics fitted over this many tracks or more are kept for good
PROJECT = 200  # dimensions kept by the projection (a space no wider than this is not projected)
CHUNK = 2048  # rows at a time through the float64 work: about 16 MB an array at 1,000-d


@dataclass(frozen=True, eq=False)
class Space:
    """The blocks of one model and the statistics currently in use (immutable: a refit makes a new Space)."""

    bounds: tuple[int, ...]  # block b covers dimensions bounds[b]:bounds[b + 1]
    coef: np.ndarray  # (blocks,) sqrt(weight / total weight)
    scale: np.ndarray  # (dim,) the blocks' scales
    mean: np.ndarray  # (dim,) float64; 0 until fitted
    std: np.ndarray  # (dim,) float64; 1 until fitted
    fitted_on: int = 0  # how many tracks the library had when fitted; 0: not fitted (plain blocks)
    basis: np.ndarray | None = None  # (dim, PROJECT) principal directions of the transformed library; None: not projected

    @classmethod
    def of(cls, blocks: Sequence[Block], dim: int) -> Space:
        sizes = [b.size for b in blocks]
        if sum(sizes) != dim:
            raise ValueError(f"the space's blocks cover {sum(sizes)} dimensions, the vectors have {dim}")
        total = sum(b.weight for b in blocks)
        return cls(
            bounds=tuple(int(x) for x in np.cumsum([0] + sizes)),
            coef=np.sqrt(np.array([b.weight / total for b in blocks])),
            scale=np.concatenate([np.ones(b.size) if b.scales is None else np.asarray(b.scales, np.float64) for b in blocks]),
            mean=np.zeros(dim), std=np.ones(dim),
        )

    @property
    def dim(self) -> int:
        """Of the raw vectors."""
        return len(self.mean)

    @property
    def held_dim(self) -> int:
        """Of the vectors the mirror holds (projected)."""
        return self.dim if self.basis is None else self.basis.shape[1]

    @property
    def frozen(self) -> bool:
        return self.fitted_on >= FREEZE

    def due(self, n: int) -> bool:
        """Whether a library of n tracks should refit: reached MIN_FIT, or doubled or halved since the last fit
        (never once frozen)."""
        if not self.fitted_on:
            return n >= MIN_FIT
        return not self.frozen and (n >= 2 * self.fitted_on or 2 * n <= self.fitted_on)

    # ---- the transform
    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Raw vectors (n, dim) -> transformed (n, dim) float32: standardised, scaled, each block unit length
        times its coefficient."""
        raw = np.asarray(raw).reshape(-1, self.dim)
        out = np.empty(raw.shape, np.float32)
        for i in range(0, len(raw), CHUNK):
            y = (raw[i : i + CHUNK] - self.mean) * (self.scale / self.std)
            for b, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
                norm = np.linalg.norm(y[:, lo:hi], axis=1)
                out[i : i + CHUNK, lo:hi] = y[:, lo:hi] * (self.coef[b] / np.where(norm > 0, norm, 1.0))[:, None]
        return out

    def held(self, raw: np.ndarray) -> np.ndarray:
        """Raw vectors (n, dim) -> as the mirror and the space index hold them: transformed, then projected."""
        return self.project(self.transform(raw))

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Transformed vectors (n, dim) -> (n, held_dim), for the mirror (cosines kept within the library's span)."""
        return vectors if self.basis is None else np.asarray(vectors, np.float32) @ self.basis

    def lift(self, held: np.ndarray) -> np.ndarray:
        """The mirror's vectors back in the transformed space (n, dim), in its library's span."""
        return held if self.basis is None else np.asarray(held, np.float32) @ self.basis.T

    # ---- fitting
    def fitted(self, raw: np.ndarray, library_size: int) -> Space:
        """A Space with statistics of these raw vectors (all of the library's, or a random sample of them), for a
        library of `library_size` tracks, and their principal directions. Below MIN_FIT tracks: not fitted."""
        if library_size < MIN_FIT:
            return replace(self, mean=np.zeros(self.dim), std=np.ones(self.dim), fitted_on=0, basis=None)
        raw = np.asarray(raw).reshape(-1, self.dim)
        if len(raw) < 2:
            return self
        n, total, squares = 0, np.zeros(self.dim), np.zeros(self.dim)
        for i in range(0, len(raw), CHUNK):
            z = (np.asarray(raw[i : i + CHUNK], np.float64) - self.mean) / self.std  # near 0 and 1 once fitted: no cancellation
            n, total, squares = n + len(z), total + z.sum(axis=0), squares + np.square(z).sum(axis=0)
        mz = total / n
        mean = self.mean + mz * self.std
        std = np.sqrt(np.maximum(squares / n - mz * mz, 0.0)) * self.std
        for lo, hi in zip(self.bounds, self.bounds[1:]):
            # a dimension that hardly varies over the library would blow up the first track that differs there
            std[lo:hi] = np.maximum(std[lo:hi], 1e-3 * np.median(std[lo:hi]) + 1e-12)
        keep = self.scale == 0  # never stored: nothing to fit
        new = replace(self, mean=np.where(keep, self.mean, mean), std=np.where(keep, self.std, std), fitted_on=library_size, basis=None)
        return replace(new, basis=new._principal(raw))

    def _principal(self, raw: np.ndarray) -> np.ndarray | None:
        """The PROJECT leading principal directions of the transformed vectors, or None where projecting would not
        shrink the space or the sample is too small to tell its directions (fewer than 2 x PROJECT tracks)."""
        if self.dim <= PROJECT or len(raw) < 2 * PROJECT:
            return None
        cov = np.zeros((self.dim, self.dim))
        mean = np.zeros(self.dim)
        for i in range(0, len(raw), CHUNK):
            y = self.transform(raw[i : i + CHUNK]).astype(np.float64)
            cov += y.T @ y
            mean += y.sum(axis=0)
        mean /= len(raw)
        cov = cov / len(raw) - np.outer(mean, mean)
        _, vectors = np.linalg.eigh(cov)  # ascending eigenvalues
        return np.ascontiguousarray(vectors[:, ::-1][:, :PROJECT], np.float32)

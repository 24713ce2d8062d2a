"""The in-memory copy of a model's vectors that answers searches (see VectorStore), and the row order of a
similarity result."""
from __future__ import annotations

import numpy as np


class Mirror:
    """An exact in-memory copy of one collection's track vectors (raw, as stored) and their norms."""

    def __init__(self, dim: int):
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        self._mat = np.zeros((1024, dim), np.float32)
        self._inv_norm = np.zeros(1024, np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def matrix(self) -> np.ndarray:
        return self._mat[: len(self.ids)]

    def put(self, ids: list[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, np.float32).reshape(len(ids), -1)
        for tid, v in zip(ids, vectors):
            i = self.pos.get(tid)
            if i is None:
                i = len(self.ids)
                if i == len(self._mat):  # grow by doubling (at least 1024 rows)
                    more = max(len(self._mat), 1024)
                    self._mat = np.concatenate([self._mat, np.zeros((more, self._mat.shape[1]), np.float32)])
                    self._inv_norm = np.concatenate([self._inv_norm, np.zeros(more, np.float32)])
                self.ids.append(tid)
                self.pos[tid] = i
            self._mat[i] = v
            self._inv_norm[i] = 1.0 / max(float(np.linalg.norm(v)), 1e-12)

    def compact(self) -> None:
        """Drop the spare rows that growing by doubling left (a quarter of the matrix at 100k)."""
        n = len(self.ids)
        self._mat, self._inv_norm = self._mat[:n].copy(), self._inv_norm[:n].copy()

    def remove(self, ids: list[str]) -> None:
        for tid in ids:
            i = self.pos.pop(tid, None)
            if i is None:
                continue
            last = len(self.ids) - 1
            if i != last:  # move the last row into the hole
                moved = self.ids[last]
                self._mat[i], self._inv_norm[i] = self._mat[last], self._inv_norm[last]
                self.ids[i] = moved
                self.pos[moved] = i
            self.ids.pop()

    def get(self, ids: list[str]) -> dict[str, np.ndarray]:
        return {t: self._mat[self.pos[t]].copy() for t in ids if t in self.pos}

    def similarities(self, queries: np.ndarray) -> np.ndarray:
        """Cosine similarity of every stored vector to a query (d,) -> (n,), or to several (k, d) -> (n, k)."""
        q = np.asarray(queries, np.float32)
        q = q / np.linalg.norm(q, axis=-1, keepdims=True).clip(1e-12)
        n = len(self.ids)
        inv = self._inv_norm[:n] if q.ndim == 1 else self._inv_norm[:n, None]
        sims = self._mat[:n] @ q.T
        sims *= inv  # in place: one pass fewer over the library
        return sims

    def search(self, query: np.ndarray, limit: int, exclude=()) -> list[tuple[str, float]]:
        sims = self.similarities(query)
        for tid in exclude:
            if (i := self.pos.get(tid)) is not None:
                sims[i] = -np.inf
        k = min(limit, len(sims))
        if k <= 0:
            return []
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(self.ids[i], float(sims[i])) for i in top if sims[i] > -np.inf]


class Rows(list):
    """Track ids in the row order of a similarity result (a copy taken with it). `row` finds a track's row through
    the live mirror's index, checked against the copy, so a write since the copy cannot mislead it."""

    def __init__(self, ids: list[str], pos: dict[str, int]):
        super().__init__(ids)
        self._pos = pos

    def row(self, track_id: str) -> int | None:
        i = self._pos.get(track_id)
        if i is None:
            return None
        if i < len(self) and self[i] == track_id:
            return i
        try:  # moved by a write since the copy (rare): look it up in the copy itself
            return self.index(track_id)
        except ValueError:
            return None

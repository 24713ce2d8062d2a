"""The in-memory copy of a model's vectors that answers searches (see VectorStore), and the row order of a
similarity result."""
from __future__ import annotations

import numpy as np

from sidecar.data.space import CHUNK, Space


class Mirror:
    """An exact in-memory copy of one collection's track vectors: raw, as stored, or, with a `space`, transformed
    into it and held projected (Space.project). Until the space's statistics are frozen (Space.frozen) the raw
    rows are kept too, so that the space can refit itself as the library grows or shrinks (Space.due)."""

    def __init__(self, dim: int, space: Space | None = None, capacity: int = 1024):
        """`capacity`: rows to make room for at once (a loader that knows the count copies nothing growing)."""
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        self.space = space
        self.dim = dim  # of the vectors given and returned
        self._mat = np.zeros((capacity, space.held_dim if space else dim), np.float32)
        self._inv_norm = np.zeros(capacity, np.float32)
        self._raw = np.zeros((capacity, dim), np.float32) if space and not space.frozen else None

    def __len__(self) -> int:
        return len(self.ids)

    def _held(self, raw: np.ndarray) -> np.ndarray:
        return raw if self.space is None else self.space.held(raw)

    def _lift(self, held: np.ndarray) -> np.ndarray:
        return held if self.space is None else self.space.lift(held)

    def vectors(self, rows: list[int] | None = None) -> np.ndarray:
        """The vectors of these rows (all: None), in the space, as a new array."""
        out = self._lift(self._mat[: len(self.ids)] if rows is None else self._mat[rows])
        return out.copy() if np.shares_memory(out, self._mat) else out

    def held(self, rows: list[int] | slice) -> np.ndarray:
        """These rows as held (projected: cosines among them are the space's), as a new array."""
        return self._mat[rows].copy() if isinstance(rows, slice) else self._mat[rows]

    def put(self, ids: list[str], vectors: np.ndarray, *, settle: bool = True, held: bool = False) -> None:
        """Raw vectors in (transformed here with the space's current statistics), or with `held`, vectors
        already as held (a frozen space's: no raw copy to keep). `settle`: refit the space if the library has
        grown enough (a loader putting batches settles once, at the end)."""
        if held:
            assert self._raw is None, "vectors given as held need a frozen space"
            raw, vectors = None, np.asarray(vectors, np.float32).reshape(len(ids), -1)
        else:
            raw = np.asarray(vectors, np.float32).reshape(len(ids), -1)
            vectors = self._held(raw)
        for k, (tid, v) in enumerate(zip(ids, vectors)):
            i = self.pos.get(tid)
            if i is None:
                i = len(self.ids)
                if i == len(self._mat):  # grow by an eighth (at least 1024 rows), not double
                    self._grow(max(len(self._mat) // 8, 1024))
                self.ids.append(tid)
                self.pos[tid] = i
            self._mat[i] = v
            self._inv_norm[i] = 1.0 / max(float(np.linalg.norm(v)), 1e-12)
            if self._raw is not None:
                self._raw[i] = raw[k]
        if settle:
            self.settle()

    def _grow(self, more: int) -> None:
        self._mat = np.concatenate([self._mat, np.zeros((more, self._mat.shape[1]), np.float32)])
        self._inv_norm = np.concatenate([self._inv_norm, np.zeros(more, np.float32)])
        if self._raw is not None:
            self._raw = np.concatenate([self._raw, np.zeros((more, self._raw.shape[1]), np.float32)])

    def settle(self) -> None:
        """Refit the space's statistics over every raw vector here if Space.due says so, and hold every row
        again in the new space (the raw rows are dropped once it is frozen). Reads wait for it: under a second
        up to FREEZE tracks, and never again after."""
        n = len(self.ids)
        if self.space is None or self._raw is None or not self.space.due(n):
            return
        self.space = self.space.fitted(self._raw[:n], n)
        if self._mat.shape[1] != self.space.held_dim:
            self._mat = np.zeros((len(self._mat), self.space.held_dim), np.float32)
        for i in range(0, n, CHUNK):
            j = min(i + CHUNK, n)
            self._mat[i:j] = self._held(self._raw[i:j])
            self._inv_norm[i:j] = 1.0 / np.linalg.norm(self._mat[i:j], axis=1).clip(1e-12)
        if self.space.frozen:
            self._raw = None

    def compact(self) -> None:
        """Drop the spare rows that growing left."""
        n = len(self.ids)
        if n == len(self._mat):
            return
        self._mat, self._inv_norm = self._mat[:n].copy(), self._inv_norm[:n].copy()
        if self._raw is not None:
            self._raw = self._raw[:n].copy()

    def remove(self, ids: list[str]) -> None:
        for tid in ids:
            i = self.pos.pop(tid, None)
            if i is None:
                continue
            last = len(self.ids) - 1
            if i != last:  # move the last row into the hole
                moved = self.ids[last]
                self._mat[i], self._inv_norm[i] = self._mat[last], self._inv_norm[last]
                if self._raw is not None:
                    self._raw[i] = self._raw[last]
                self.ids[i] = moved
                self.pos[moved] = i
            self.ids.pop()
        self.settle()  # a library halved

    def get(self, ids: list[str]) -> dict[str, np.ndarray]:
        have = [t for t in ids if t in self.pos]
        return dict(zip(have, self.vectors([self.pos[t] for t in have])))

    def similarities(self, queries: np.ndarray) -> np.ndarray:
        """Cosine similarity of every stored vector to a query (d,) -> (n,), or to several (k, d) -> (n, k)."""
        q = np.asarray(queries, np.float32)
        if self.space is not None and self.space.basis is not None:  # its part in the library's span
            q = self.space.project(q.reshape(-1, self.dim)).reshape(*q.shape[:-1], -1)
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

"""A model's vectors already in its similarity space, in a Milvus collection of their own, for reads without
the in-memory mirror: Milvus's index then ranks tracks as the space does.

The collection `spc_<source>` holds each track's vector as the mirror holds it (Space.transform, then
Space.project: 200-d for MusiCNN's 1,012), so a search is one Milvus call over 200-d vectors. Every process
that writes the model's vectors must transform them with the same statistics, so the statistics are stored in
Milvus too, beside the vectors they describe: `sts_<source>` holds the rows "mean", "std" and one per principal
direction ("p000"...), each a vector of the raw dimension, all tagged with one key (`<fitted_on>:<digest>`).

- Whoever finds the library due a refit (Space.due, checked at most every REFIT_CHECK_S, or at once when its
  own writes make it due) fits the statistics from a sample, stores them, and rewrites the vectors. The
  statistics freeze at FREEZE tracks (space.py): past that they never change, and a library grows with one
  transform per new track.
- Every other process adopts stored statistics it has not seen at its next check, and writes again the
  vectors that lack their key (those it wrote meanwhile with the previous ones among them).
- Searches are filtered on the key: a vector transformed with other statistics is never compared with the
  query. Until its writer catches up (at most REFIT_CHECK_S, and only while the library is under FREEZE
  tracks) such a track is not found.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from sidecar.data.milvus import HASH_FIELD, ID_FIELD, VECTOR_FIELD, quoted
from sidecar.data.space import Space

if TYPE_CHECKING:
    from collections.abc import Callable

    from sidecar.data.milvus import Milvus
    from sidecar.data.mirror import Mirror

log = logging.getLogger(__name__)

WRITE_BATCH = 2000  # vectors per upsert while rewriting


def index_names(source: str) -> tuple[str, str]:
    """(the space's vectors, its statistics) of the raw collection `source`."""
    return f"spc_{source}", f"sts_{source}"


class SpaceIndex:
    """The space collection of one raw collection. Calls are blocking, as the store's are; `lock` keeps one
    process's rewrite and its writes in order (a write waits for a rewrite, then lands after it)."""

    def __init__(self, milvus: Milvus, source: str, template: Space):
        self.milvus, self.source, self.template = milvus, source, template
        self.vectors_name, self.stats_name = index_names(source)
        self.space: Space = template  # the statistics in use: stored ones, or the template's until fitted
        self.key = _key(template, _rows(template))
        self.lock = threading.Lock()
        self._dim = 0  # of the vectors collection (0: not made yet)

    # ---- the statistics
    def refresh(self, library_size: int, sample: Callable[[], np.ndarray]) -> Space:
        """Adopt the stored statistics, or fit and store new ones where the library is due; write again every
        vector that lacks their key. The statistics in use after."""
        with self.lock:
            stored = self._load()
            space = stored or self.space
            if stored is not False and space.due(library_size):  # (False: another process is storing them)
                space = self._store(space.fitted(sample(), library_size))
            if space is not self.space or not self._dim:
                self.space, self.key = space, _key(space, _rows(space))
                self._rewrite()
            return self.space

    def _load(self) -> Space | None | bool:
        """The stored statistics; None where none are stored; False while they are half written."""
        self._ensure_stats()
        with self.milvus.lock:
            rows = self.milvus.client.query(self.stats_name, filter=f'{ID_FIELD} != ""', output_fields=[ID_FIELD, VECTOR_FIELD, HASH_FIELD],
                                            limit=16384, **self.milvus.strong)
        if not rows:
            return None
        keys = {r[HASH_FIELD] for r in rows}
        got = {r[ID_FIELD]: np.asarray(r[VECTOR_FIELD], np.float32) for r in rows}
        if len(keys) > 1 or {"mean", "std"} - set(got) or len(got) != 2 + sum(k.startswith("p") for k in got):
            return False
        key = keys.pop()
        if key == self.key:
            return self.space
        basis = sorted(k for k in got if k.startswith("p"))
        return replace(self.template, mean=got["mean"].astype(np.float64), std=got["std"].astype(np.float64),
                       fitted_on=int(key.split(":")[0]),
                       basis=np.ascontiguousarray(np.stack([got[k] for k in basis], axis=1)) if basis else None)

    def _store(self, space: Space) -> Space:
        """Store these statistics (as float32, the form every process reads back) and return that form."""
        rows = _rows(space)
        key = _key(space, rows)
        with self.milvus.lock:
            self.milvus.client.upsert(self.stats_name, [{ID_FIELD: k, VECTOR_FIELD: v.tolist(), HASH_FIELD: key} for k, v in rows.items()])
            self.milvus.client.delete(self.stats_name, filter=f"{ID_FIELD} not in [{quoted(rows)}]")
        log.info("%s: similarity-space statistics fitted over %d tracks (%s)", self.source, space.fitted_on, key)
        return replace(space, mean=rows["mean"].astype(np.float64), std=rows["std"].astype(np.float64))

    def _ensure_stats(self) -> None:
        self.milvus.ensure(self.stats_name, self.template.dim, derived=True)

    # ---- the vectors
    def _rewrite(self) -> None:
        """Write again, in the current space, every track whose vector lacks the current key; drop any the raw
        collection no longer has."""
        if self._dim != self.space.held_dim:
            self._dim = self.milvus.ensure(self.vectors_name, self.space.held_dim, derived=True)
        raw_ids = dict.fromkeys(self.milvus.ids(self.source))
        keys = self.milvus.keys(self.vectors_name)
        stale = [t for t in raw_ids if keys.get(t) != self.key]
        gone = [t for t in keys if t not in raw_ids]
        if gone:
            with self.milvus.lock:
                self.milvus.client.delete(self.vectors_name, ids=gone)
        if stale:
            log.info("%s: writing %d vectors in the similarity space (%d-d) for searches without the mirror",
                     self.source, len(stale), self.space.held_dim)
        for i in range(0, len(stale), WRITE_BATCH):
            found = self.milvus.fetch(self.source, stale[i : i + WRITE_BATCH], strong=True)
            if found:
                self._write(list(found), np.stack(list(found.values())))
        if len(stale) > WRITE_BATCH and not self.milvus.is_lite:
            with self.milvus.lock:
                self.milvus.client.flush(self.vectors_name)  # sealed segments get their HNSW index

    def write(self, ids: list[str], raw: np.ndarray) -> None:
        """New raw vectors of these tracks, in the current space."""
        with self.lock:
            if self._dim:
                self._write(ids, raw)

    def _write(self, ids: list[str], raw: np.ndarray) -> None:
        data = [{ID_FIELD: t, VECTOR_FIELD: v.tolist(), HASH_FIELD: self.key} for t, v in zip(ids, self.space.held(raw))]
        with self.milvus.lock:
            self.milvus.client.upsert(self.vectors_name, data)

    def delete(self, ids: list[str]) -> None:
        with self.lock, self.milvus.lock:
            if self._dim:
                self.milvus.client.delete(self.vectors_name, ids=list(ids))

    # ---- reads
    def search(self, queries: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        """Per query (in the full space), the nearest tracks and their cosines, as the mirror gives them."""
        return self.milvus.search(self.vectors_name, self.space.project(queries), limit, where=f'{HASH_FIELD} == "{self.key}"')

    def fill(self, mirror: Mirror) -> None:
        """A mirror in this (frozen) space, filled from this collection. Called right after a refresh, which
        wrote every track's vector with the current key and dropped those the raw collection lost; what is
        written after that reaches the mirror as any later write does."""
        size = min(8192, max(512, 2**21 // self.space.held_dim))  # pymilvus decodes about 2M floats at a time
        for ids, held in self.milvus.batches(self.vectors_name, size, where=f'{HASH_FIELD} == "{self.key}"'):
            mirror.put(ids, held, settle=False, held=True)

    def held(self, ids: list[str]) -> tuple[list[str], np.ndarray]:
        """Those of the tracks the collection has, in order, and their vectors as held (projected)."""
        found = self.milvus.fetch(self.vectors_name, list(dict.fromkeys(ids)))
        have = [t for t in ids if t in found]
        return have, np.array([found[t] for t in have], np.float32).reshape(len(have), self.space.held_dim)

    def drop(self) -> None:
        for name in (self.vectors_name, self.stats_name):
            self.milvus.drop(name)


def _rows(space: Space) -> dict[str, np.ndarray]:
    rows = {"mean": space.mean.astype(np.float32), "std": space.std.astype(np.float32)}
    if space.basis is not None:
        rows |= {f"p{j:03d}": np.ascontiguousarray(space.basis[:, j], np.float32) for j in range(space.basis.shape[1])}
    return rows


def _key(space: Space, rows: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha1(b"".join(v.tobytes() for v in rows.values())).hexdigest()[:16]
    return f"{space.fitted_on}:{digest}"

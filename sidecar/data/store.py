"""Vectors in Milvus: one collection per embedder and dimension, primary key = track id, cosine metric. A long
module, as the one way to the vectors: every read and write, with and without the mirror, during upgrades.

Writes are upserts keyed by track id (a replayed event leaves one row per track and model). Milvus Lite is the
embedded default; a server URI is used as it is. Calls block: callers run them in a worker thread.

Milvus is the store of record and keeps the raw vectors. Reads of track vectors (search, get) are served from
an exact in-memory mirror of each collection, loaded at start and kept in step by every write: an exact search
over 100k 200-d vectors is a few milliseconds of numpy, where Milvus Lite takes 50-100 ms (see FACTS.md).

Where the embedder declares a similarity space (Embedder.space; sidecar/data/space.py), every read returns
and compares vectors in that space, and every query vector is taken to be in it. The mirror holds them
transformed, with statistics fitted over the whole library (again as it doubles or halves). Without it,
Milvus searches a second collection of the vectors already in the space (SpaceIndex, space_index.py: its
statistics fitted on SAMPLE tracks and shared by every process through Milvus). Every store on a server
keeps that collection, mirror or not (another process may read without one); on Lite only a store without
a mirror does. A mirror on a server loads from it once its statistics are frozen.

A new dimension (a new version of an embedder) gets a collection of its own, `emb_<model>_D<dim>`, while the
previous one keeps answering every read until each track it holds has a vector in the new one (or is deleted):
then reads move over and the previous collection is dropped (logged). Meanwhile new tracks are written but not
searched, and the previous collection is compared by plain cosine; a track the new version fails on keeps it in
service: retry it (`sidecar replay`) or remove the file.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sidecar.data.lite import release_arrow
from sidecar.data.milvus import HASH_FIELD, ID_FIELD, VECTOR_FIELD, Milvus, StoreError, quoted
from sidecar.data.mirror import Mirror, Rows
from sidecar.data.space import FREEZE, Space
from sidecar.data.space_index import SpaceIndex, index_names
from sidecar.errors import Conflict

if TYPE_CHECKING:
    from sidecar.plugins.api import Block

log = logging.getLogger(__name__)

__all__ = ["StoreError", "VectorStore", "collection_name", "segments_name"]


def collection_name(model: str) -> str:
    """The model's first collection; a later dimension's is this + "_D<dim>" (model names are lowercase)."""
    return f"emb_{model}"


def segments_name(model: str) -> str:
    return f"seg_{model}"


POOL = 2000  # without a mirror, whole-library similarities are taken over each query's nearest POOL tracks
SAMPLE = 4096  # a space's statistics for its SpaceIndex come from about this many random tracks
REFIT_CHECK_S = 300.0  # how often a SpaceIndex's statistics are compared with the library's size (Space.due)


@dataclass
class _Collections:
    """Where one model's vectors are. Written to `write`; read from `read`, which is the previous dimension's
    collection while an upgrade fills `write` (`pending`: its tracks with no vector in `write` yet)."""

    write: str
    read: str
    space: Space | None = None  # the model's space, as declared (statistics unfitted)
    pending: set[str] = field(default_factory=set)
    filling: Mirror | None = None  # the mirror of `write` while `read` answers
    index: SpaceIndex | None = None  # the space's vectors in Milvus (see the module doc); None while upgrading
    checked: float = 0.0  # when the index's statistics were last checked against the library's size
    counted: int = 0  # the library's size then, plus the rows written since (a bound: some may be updates)

    @property
    def upgrading(self) -> bool:
        return self.read != self.write


class VectorStore:
    """Milvus (Lite or a server) as the store of record. With `mirror` (the default) every read is answered
    from an exact in-memory copy; without, from Milvus itself: its HNSW index on a server, for libraries whose
    vectors do not fit in memory, and for ingest workers, which only write."""

    def __init__(self, uri: str, token: str = "", *, mirror: bool = True):
        self.uri, self.mirror = uri, mirror
        self.milvus = Milvus(uri, token)
        self.client, self.is_lite = self.milvus.client, self.milvus.is_lite
        # The mirrors' lock, held only for numpy work, never across a Milvus call, so that searches do not wait
        # for a write to Milvus (a re-embed writes all the time). Writers take it inside the Milvus lock.
        self._lock = threading.Lock()
        self._dims: dict[str, int] = {}  # collection -> dimension
        self._models: dict[str, _Collections] = {}
        self.mirrors: dict[str, Mirror] = {}  # model -> exact copy of the track vectors it reads

    def close(self) -> None:
        self.milvus.close()

    # ---- collections
    def ensure_collection(self, model: str, dim: int, *, segments: bool = False, space: Sequence[Block] | None = None) -> None:
        """Create the model's collection for `dim`-d vectors if missing, load it, and its mirror (in `space`).
        An earlier dimension's collection keeps answering until the new one has all its tracks (see the module
        doc). With `segments`, also the collection of its per-segment vectors (primary key "<track id>:<n>")."""
        if model not in self._models:
            template = Space.of(space, dim) if space else None
            write, read = self._collections_of(model, dim)
            c = self._models[model] = _Collections(write, read, template)
            index = self._refresh(c, force=True)
            if self.mirror:  # on a server, with the statistics every process shares once frozen
                shared = index if index is not None and index.space.frozen else None
                self.mirrors[model] = self._load_mirror(read, None if c.upgrading else template, shared)
                if c.upgrading:
                    c.filling = self._load_mirror(write, template)
                    c.pending = set(self.mirrors[model].ids) - set(c.filling.pos)
            elif c.upgrading:
                c.pending = set(self.milvus.ids(read)) - set(self.milvus.ids(write))
            if c.upgrading:
                log.warning("%s: %d of the %d-d collection's tracks still need a %d-d vector; it answers searches until then",
                            model, len(c.pending), self._dims[read], dim)
                if not c.pending:
                    self._switch(model, c)
            if self.mirror:  # the mirror answers every read: Lite need not hold these in memory between writes
                for name in dict.fromkeys((c.read, c.write)):
                    self.milvus.rest(name)
        if segments:
            self._dims[segments_name(model)] = self.milvus.ensure(segments_name(model), dim, pk_length=80, track_field=True, derived=True)
        if self.is_lite:  # opening collections read their Parquet files through Arrow's pool
            release_arrow()

    def _collections_of(self, model: str, dim: int) -> tuple[str, str]:
        """(the collection `dim`-d vectors go to, the one reads come from): an earlier dimension's with the most
        tracks while it has tracks; any other earlier one is dropped."""
        base = collection_name(model)
        mine = [n for n in self.milvus.names() if n == base or re.fullmatch(re.escape(base) + r"_D\d+", n)]
        # Lite's collections stay unloaded under a mirror: loaded, Lite builds a second, normalised copy of every
        # vector to search (0.4 GB at 100k x 1,012-d); the mirror answers every read, is read from Lite without it,
        # and Lite takes writes on an unloaded collection.
        load = not (self.mirror and self.is_lite)
        self._dims.update({n: self.milvus.ensure(n, None, load=load) for n in mine})
        write = next((n for n in mine if self._dims[n] == dim), base if not mine else f"{base}_D{dim}")
        self._dims[write] = self.milvus.ensure(write, dim, load=load)
        counts = {n: self.milvus.count(n) for n in mine if n != write}
        read = max(counts, key=counts.get) if counts and max(counts.values()) else write
        for name in counts:
            if name != read:
                log.warning("%s: dropping the collection %s (%d-d vectors of an earlier version)", model, name, self._dims[name])
                self._drop(name)
        return write, read

    def _switch(self, model: str, c: _Collections) -> None:
        """Every track of the previous collection has its new vector: read the new one, drop the previous."""
        previous = c.read
        with self._lock:
            if c.filling is not None:
                self.mirrors[model] = c.filling
            c.read, c.filling, c.pending = c.write, None, set()
        self._drop(previous)
        log.warning("%s: every track has its %d-d vector; searches use them now, and %s is dropped",
                    model, self._dims[c.write], previous)

    def _drop(self, name: str) -> None:  # a raw collection, and its space index's
        for n in (name, *index_names(name)):
            self.milvus.drop(n)

    def _refresh(self, c: _Collections, *, force: bool = False) -> SpaceIndex | None:
        """The model's space index, its statistics checked (SpaceIndex.refresh) when REFIT_CHECK_S have passed or
        this store's writes may have made them due; None without a space, while upgrading, or on Lite with a mirror."""
        if c.space is None or c.upgrading or (self.mirror and self.is_lite):
            return None
        if c.index is None:
            c.index, force = SpaceIndex(self.milvus, c.read, c.space), True
        if force or time.monotonic() - c.checked > REFIT_CHECK_S or c.index.space.due(c.counted):
            c.counted, c.checked = self.milvus.count(c.read), time.monotonic()
            c.index.refresh(c.counted, lambda: self._sample(c.read, c.counted))
        return c.index

    def _done(self, c: _Collections, track_ids) -> bool:
        """These tracks need nothing more from the previous collection; True when that was the last of them.
        The caller holds _lock."""
        if not c.upgrading:
            return False
        c.pending.difference_update(track_ids)
        return not c.pending

    def _c(self, model: str) -> _Collections:
        if model not in self._models:  # a store that only counts or lists (no ensure_collection)
            return _Collections(collection_name(model), collection_name(model))
        return self._models[model]

    def _sample(self, name: str, n: int) -> np.ndarray:
        """About SAMPLE random raw vectors of the collection (of n)."""
        return np.concatenate([*self.milvus.sample(name, n, SAMPLE), np.zeros((0, self._dims[name]), np.float32)])

    def _load_mirror(self, name: str, space: Space | None, shared: SpaceIndex | None = None) -> Mirror:
        """The mirror of a collection, in `space` (None: raw), or read from `shared` (frozen statistics)."""
        dim, n = self._dims[name], self.milvus.count(name)
        if shared is not None:
            space = shared.space
        elif space is not None and n >= FREEZE:  # from a sample, frozen: the mirror keeps no raw copy
            space = space.fitted(self._sample(name, n), n)
        mirror = Mirror(dim, space, capacity=n)  # no copy growing
        if shared is not None:
            shared.fill(mirror)
        else:  # pymilvus decodes a batch into Python floats (32 bytes each): about 2M of them at a time (65 MB)
            for ids, vectors in self.milvus.batches(name, batch_size=min(8192, max(512, 2**21 // dim))):
                mirror.put(ids, vectors, settle=False)
        mirror.settle()  # the space's statistics over the whole library
        mirror.compact()
        return mirror

    # ---- writes
    def follow(self, model: str, upserted: list[str], deleted: list[str]) -> None:
        """Bring the mirror up to date with writes another process made (from the catalog's vector log)."""
        c = self._models.get(model)
        if c is None or (model not in self.mirrors and not c.upgrading):
            return
        fresh = self.milvus.fetch(c.write, upserted, strong=True) if upserted and model in self.mirrors else {}
        gone = [t for t in deleted if t not in fresh] + [t for t in upserted if t not in fresh]  # deleted since
        with self._lock:
            if model in self.mirrors:
                target = self.mirrors[model] if c.filling is None else c.filling  # (a Mirror is falsy when empty)
                if fresh:
                    target.put(list(fresh), np.stack(list(fresh.values())))
                for m in dict.fromkeys((target, self.mirrors[model])):
                    m.remove(gone)
            done = self._done(c, list(fresh) + gone)
        if done:
            self._switch(model, c)

    def upsert(self, model: str, rows: list[tuple[str, np.ndarray, str]]) -> None:
        c = self._c(model)
        data = [{ID_FIELD: tid, VECTOR_FIELD: np.asarray(v, dtype=np.float32).tolist(), HASH_FIELD: h} for tid, v, h in rows]
        with self.milvus.lock:
            self.client.upsert(c.write, data)
            self.milvus.touched(c.write)
            with self._lock:
                target = self.mirrors.get(model) if c.filling is None else c.filling
                if target is not None:
                    target.put([r[0] for r in rows], np.array([r[1] for r in rows], np.float32))
                done = self._done(c, [r[0] for r in rows])
            if done:
                self._switch(model, c)
        c.counted += len(rows)
        if (index := self._refresh(c)) is not None:
            index.write([r[0] for r in rows], np.array([r[1] for r in rows], np.float32))

    def replace_segments(self, model: str, track_id: str, vectors: np.ndarray, content_hash: str) -> None:
        """The track's segment vectors, replacing any it had (a re-embed may make fewer segments)."""
        name = segments_name(model)
        data = [
            {"id": f"{track_id}:{i}", ID_FIELD: track_id, VECTOR_FIELD: np.asarray(v, np.float32).tolist(), HASH_FIELD: content_hash}
            for i, v in enumerate(vectors)
        ]
        with self.milvus.lock:
            self.client.delete(name, filter=f"{ID_FIELD} == {quoted([track_id])} and id not in [{quoted(d['id'] for d in data)}]")
            if data:
                self.client.upsert(name, data)

    def segment_ids(self, model: str, track_id: str) -> list[str]:
        with self.milvus.lock:
            rows = self.client.query(segments_name(model), filter=f"{ID_FIELD} == {quoted([track_id])}", output_fields=["id"])
        return sorted(r["id"] for r in rows)

    def delete(self, model: str, track_ids: list[str]) -> None:
        """The tracks' vectors (in the previous collection too, during an upgrade), and their segments."""
        if not track_ids:
            return
        c = self._c(model)
        with self.milvus.lock:
            for name in dict.fromkeys([c.write, c.read]):
                self.client.delete(name, ids=list(track_ids))
                self.milvus.touched(name)
            with self._lock:
                for m in (self.mirrors.get(model), c.filling):
                    if m is not None:
                        m.remove(list(track_ids))
                done = self._done(c, track_ids)
            if segments_name(model) in self._dims:
                self.client.delete(segments_name(model), filter=f"{ID_FIELD} in [{quoted(track_ids)}]")
            if done:
                self._switch(model, c)
        if c.index is not None and not c.upgrading:
            c.index.delete(list(track_ids))

    # ---- reads: from the mirror where there is one, else from Milvus
    def dim(self, model: str) -> int:
        """The dimension of the vectors reads give (the previous one's during an upgrade)."""
        return self._dims[self._c(model).read]

    def _check_query(self, model: str, queries: np.ndarray) -> None:
        dim = self.mirrors[model].dim if model in self.mirrors else self.dim(model)
        if queries.shape[-1] != dim:
            raise Conflict(f"a {model} query has {queries.shape[-1]} numbers but the {model} vectors have {dim} "
                           "(made for another version of the model?)")

    def _reader(self, model: str) -> tuple[str, SpaceIndex | None]:
        """Without a mirror: the collection reads come from, and its space index (None: compared raw)."""
        c = self._c(model)
        if c.upgrading and not self.milvus.exists(c.read):  # another process finished the upgrade
            self._switch(model, c)
        return c.read, self._refresh(c)

    def _fetch_read(self, model: str, track_ids: list[str]) -> tuple[list[str], np.ndarray]:
        """Without a mirror: those of the tracks the model has, in order, and their vectors in its space."""
        name, index = self._reader(model)
        found = self.milvus.fetch(name, list(dict.fromkeys(track_ids)))
        have = [t for t in track_ids if t in found]
        raw = np.array([found[t] for t in have], np.float32).reshape(len(have), self._dims[name])
        return have, (index.space.transform(raw) if index is not None else raw)

    def get_vectors(self, model: str, track_ids: list[str]) -> dict[str, np.ndarray]:
        if model not in self.mirrors:
            have, vectors = self._fetch_read(model, track_ids)
            return dict(zip(have, vectors))
        with self._lock:
            return self.mirrors[model].get(list(track_ids))

    def stacked(self, model: str, track_ids: list[str], *, held: bool = False) -> tuple[list[str], np.ndarray]:
        """Those of `track_ids` the model has, in order, and their vectors as one (n, dim) array (a copy). `held`: as
        the mirror holds them (fewer dimensions, the same cosines), for work that compares them with each other."""
        if model not in self.mirrors:
            _, index = self._reader(model)
            return index.held(track_ids) if held and index is not None else self._fetch_read(model, track_ids)
        with self._lock:
            m = self.mirrors[model]
            have = [t for t in track_ids if t in m.pos]
            rows = [m.pos[t] for t in have]
            return have, (m.held(rows) if held else m.vectors(rows))

    def search(self, model: str, vector: np.ndarray, limit: int, exclude=()) -> list[tuple[str, float]]:
        """(track_id, cosine similarity), best first; exact from the mirror, approximate (HNSW) from a server."""
        vector = np.asarray(vector, np.float32)
        self._check_query(model, vector)
        if model in self.mirrors:
            with self._lock:
                return self.mirrors[model].search(vector, limit, exclude)
        exclude = set(exclude)
        name, index = self._reader(model)
        hits = (index.search(vector, limit + len(exclude)) if index is not None else self.milvus.search(name, vector, limit + len(exclude)))[0]
        return [(t, s) for t, s in hits if t not in exclude][:limit]

    def similarities(self, model: str, queries: np.ndarray) -> tuple[Rows, np.ndarray]:
        """Cosine similarity of the tracks to each query: (track ids by row, (tracks, queries)). With the mirror,
        every track, exactly; without, the union of each query's nearest POOL tracks (scored as held)."""
        queries = np.asarray(queries, np.float32).reshape(len(queries), -1)
        self._check_query(model, queries)
        if model not in self.mirrors:
            name, index = self._reader(model)
            near = index.search(queries, POOL) if index is not None else self.milvus.search(name, queries, POOL)
            ids, vectors = self.stacked(model, list(dict.fromkeys(t for hits in near for t, _ in hits)), held=True)
            return Rows(ids, {t: i for i, t in enumerate(ids)}), _cosines(vectors, queries if index is None else index.space.project(queries))
        with self._lock:
            mirror = self.mirrors[model]
            return Rows(mirror.ids, mirror.pos), mirror.similarities(queries)

    def size(self, model: str) -> int:
        """How many tracks have a vector of this model (that reads see)."""
        if model not in self.mirrors:
            return self.milvus.count(self._c(model).read)
        with self._lock:
            return len(self.mirrors[model])

    def track_ids(self, model: str) -> tuple[str, ...]:
        """Every track id the model has, in the order snapshot gives them, without copying the vectors: what tells
        whether the library changed since a result computed over all of it."""
        if model not in self.mirrors:
            return tuple(dict.fromkeys(self.milvus.ids(self._c(model).read)))
        with self._lock:
            return tuple(self.mirrors[model].ids)

    def snapshot(self, model: str, *, held: bool = False) -> tuple[tuple[str, ...], np.ndarray]:
        """Every track id and its vector (in the model's space; `held`: as stacked's), in one consistent copy: for
        work over the whole library."""
        if model not in self.mirrors:
            name, index = self._reader(model)
            parts = list(self.milvus.batches(name))
            ids = tuple(t for batch, _ in parts for t in batch)
            raw = np.concatenate([v for _, v in parts]) if parts else np.zeros((0, self._dims[name]), np.float32)
            if index is None:
                return ids, raw
            return ids, (index.space.held(raw) if held else index.space.transform(raw))
        with self._lock:
            m = self.mirrors[model]
            return tuple(m.ids), (m.held(slice(0, len(m))) if held else m.vectors())

    def held_stamp(self, model: str) -> object:
        """What changes when the vectors `held` reads give move to other axes (the model's space refitted): work
        that keeps held vectors compares only those of one stamp."""
        if model not in self.mirrors:
            index = self._reader(model)[1]
            return index.key if index is not None else None
        with self._lock:
            space = self.mirrors[model].space
            return None if space is None else (space.fitted_on, space.held_dim)

    def count(self, model: str) -> int:
        """How many vectors the model's current version has stored."""
        return self.milvus.count(self._c(model).write)

    def all_ids(self, model: str) -> list[str]:
        """Every track id the model's current version has stored, duplicates included (to check idempotency)."""
        return self.milvus.ids(self._c(model).write)


def _cosines(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(n, k) cosine similarities of n vectors to k queries."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    return unit @ (queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)).T

"""Vectors in Milvus: one collection per embedder, primary key = track id, cosine metric.

Writes are upserts keyed by track id, so replaying an event leaves one row per (track, model). A Milvus Lite
file is the embedded default; a server URI is used as it is. All calls are blocking: callers run them in a
worker thread (asyncio.to_thread), never on the event loop.

Milvus is the store of record. Reads of track vectors (search, get) are served from an exact in-memory
mirror of each collection, loaded at start and kept in step by every write: an exact search over 100k
200-d vectors is a few milliseconds of numpy, where Milvus Lite takes 50-100 ms (see FACTS.md).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from sidecar.data.lite import LiteServer

log = logging.getLogger(__name__)

ID_FIELD, VECTOR_FIELD, HASH_FIELD = "track_id", "vector", "content_hash"


class StoreError(RuntimeError):
    pass


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


def collection_name(model: str) -> str:
    return f"emb_{model}"


def segments_name(model: str) -> str:
    return f"seg_{model}"


def _quoted(ids) -> str:
    return ", ".join('"' + str(i).replace('"', "") + '"' for i in ids)


class VectorStore:
    def __init__(self, uri: str, token: str = ""):
        self.uri = uri
        self.is_lite = not uri.startswith(("http://", "https://", "tcp://", "unix:"))
        self._milvus_lock = threading.Lock()  # Milvus Lite gains nothing from concurrent calls; keep them simple
        # The mirrors' lock, held only for numpy work, never across a Milvus call, so that searches do not wait
        # for a write to Milvus (a re-embed writes all the time). Writers take it inside _milvus_lock.
        self._lock = threading.Lock()
        self._dims: dict[str, int] = {}
        self.mirrors: dict[str, Mirror] = {}  # model -> exact copy of its track vectors
        self.lite: LiteServer | None = None
        from pymilvus import MilvusClient  # slow import: keep it off module import

        try:
            if self.is_lite:
                self.lite = LiteServer(Path(uri))
            self.client = MilvusClient(uri=self.lite.uri if self.lite else uri, token=token)
        except Exception as e:
            if self.lite is not None:
                self.lite.close()
            if "DataDirLocked" in type(e).__name__ or "lock" in str(e).lower():
                raise StoreError(
                    f"the vector store {uri} is open in another process (a running `sidecar serve`?). "
                    "Stop it first, or ask the running sidecar over HTTP."
                ) from None
            raise StoreError(f"cannot open the vector store at {uri}: {e}") from None

    def close(self) -> None:
        with self._milvus_lock:
            self.client.close()
            if self.lite is not None:
                self.lite.close()

    def ensure_collection(self, model: str, dim: int, *, segments: bool = False) -> None:
        """Create the model's collection if missing, load it, and check its dimension. With `segments`, also
        the collection of its per-segment vectors (primary key "<track id>:<n>")."""
        self._ensure(collection_name(model), model, dim, pk_length=64)
        if model not in self.mirrors:
            self.mirrors[model] = self._load_mirror(model, dim)
            if self.is_lite:
                # Loaded, Lite keeps a second, normalised copy of every vector to search (80 MB at 100k x 200-d);
                # the mirror answers every read, and writes work on a released collection.
                with self._milvus_lock:
                    self.client.release_collection(collection_name(model))
        if segments:
            self._ensure(segments_name(model), model, dim, pk_length=80, track_field=True)
        if self.is_lite:  # Lite reads its Parquet files through Arrow, whose pool keeps the freed pages (0.35 GB at 100k)
            import pyarrow

            pyarrow.default_memory_pool().release_unused()

    def _ensure(self, name: str, model: str, dim: int, *, pk_length: int, track_field: bool = False) -> None:
        from pymilvus import DataType

        with self._milvus_lock:
            if not self.client.has_collection(name):
                schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field("id" if track_field else ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=pk_length)
                if track_field:
                    schema.add_field(ID_FIELD, DataType.VARCHAR, max_length=64)
                schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
                schema.add_field(HASH_FIELD, DataType.VARCHAR, max_length=64)
                index = self.client.prepare_index_params()
                # FLAT: exact, and nothing to build in the background (see FACTS.md on Lite's HNSW files)
                index.add_index(field_name=VECTOR_FIELD, index_type="FLAT", metric_type="COSINE")
                self.client.create_collection(name, schema=schema, index_params=index)
                if track_field:
                    scalar = self.client.prepare_index_params()
                    scalar.add_index(field_name=ID_FIELD, index_type="INVERTED")
                    self.client.create_index(name, scalar)
            else:
                fields = self.client.describe_collection(name)["fields"]
                have = next(int(f["params"]["dim"]) for f in fields if f["name"] == VECTOR_FIELD)
                if have != dim:
                    raise StoreError(
                        f"collection {name} holds {have}-d vectors but the {model} embedder makes {dim}-d ones; "
                        "re-embed into a new collection (sidecar replay) or drop the old one"
                    )
            self.client.load_collection(name)  # reopened collections are not loaded
        self._dims[name] = dim

    def _load_mirror(self, model: str, dim: int) -> Mirror:
        mirror = Mirror(dim)
        with self._milvus_lock:
            it = self.client.query_iterator(
                collection_name(model), batch_size=8192, filter="", output_fields=[ID_FIELD, VECTOR_FIELD]
            )
            while batch := it.next():
                mirror.put([r[ID_FIELD] for r in batch], np.array([r[VECTOR_FIELD] for r in batch], np.float32))
            it.close()
        mirror.compact()
        return mirror

    def upsert(self, model: str, rows: list[tuple[str, np.ndarray, str]]) -> None:
        data = [{ID_FIELD: tid, VECTOR_FIELD: np.asarray(v, dtype=np.float32).tolist(), HASH_FIELD: h} for tid, v, h in rows]
        with self._milvus_lock:
            self.client.upsert(collection_name(model), data)
            with self._lock:
                self.mirrors[model].put([r[0] for r in rows], np.array([r[1] for r in rows], np.float32))

    def replace_segments(self, model: str, track_id: str, vectors: np.ndarray, content_hash: str) -> None:
        """The track's segment vectors, replacing any it had (a re-embed may make fewer segments)."""
        name = segments_name(model)
        data = [
            {"id": f"{track_id}:{i}", ID_FIELD: track_id, VECTOR_FIELD: np.asarray(v, np.float32).tolist(), HASH_FIELD: content_hash}
            for i, v in enumerate(vectors)
        ]
        with self._milvus_lock:
            self.client.delete(name, filter=f"{ID_FIELD} == {_quoted([track_id])} and id not in [{_quoted(d['id'] for d in data)}]")
            if data:
                self.client.upsert(name, data)

    def segment_ids(self, model: str, track_id: str) -> list[str]:
        with self._milvus_lock:
            rows = self.client.query(segments_name(model), filter=f"{ID_FIELD} == {_quoted([track_id])}", output_fields=["id"])
        return sorted(r["id"] for r in rows)

    def delete(self, model: str, track_ids: list[str]) -> None:
        """The tracks' vectors, and their segments where the model keeps them."""
        if track_ids:
            with self._milvus_lock:
                self.client.delete(collection_name(model), ids=list(track_ids))
                with self._lock:
                    self.mirrors[model].remove(list(track_ids))
                if segments_name(model) in self._dims:
                    self.client.delete(segments_name(model), filter=f"{ID_FIELD} in [{_quoted(track_ids)}]")

    def get_vectors(self, model: str, track_ids: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            return self.mirrors[model].get(list(track_ids))

    def stacked(self, model: str, track_ids: list[str]) -> tuple[list[str], np.ndarray]:
        """Those of `track_ids` the model has, in their order, and their vectors as one (n, dim) array (a copy):
        for many tracks at once, where get_vectors would make an array each."""
        with self._lock:
            m = self.mirrors[model]
            have = [t for t in track_ids if t in m.pos]
            return have, m.matrix[[m.pos[t] for t in have]]

    def search(self, model: str, vector: np.ndarray, limit: int, exclude=()) -> list[tuple[str, float]]:
        """(track_id, cosine similarity), best first; exact."""
        with self._lock:
            return self.mirrors[model].search(vector, limit, exclude)

    def similarities(self, model: str, queries: np.ndarray) -> tuple[Rows, np.ndarray]:
        """Cosine similarity of every track to each query: (track ids by row, (tracks, queries)); exact, in memory."""
        with self._lock:
            mirror = self.mirrors[model]
            return Rows(mirror.ids, mirror.pos), mirror.similarities(np.asarray(queries, np.float32).reshape(len(queries), -1))

    def size(self, model: str) -> int:
        """How many tracks have a vector of this model."""
        with self._lock:
            return len(self.mirrors[model])

    def snapshot(self, model: str) -> tuple[tuple[str, ...], np.ndarray]:
        """Every track id and its vector (raw, as stored), in one consistent copy: for work over the whole library."""
        with self._lock:
            m = self.mirrors[model]
            return tuple(m.ids), m.matrix.copy()

    def count(self, model: str) -> int:
        with self._milvus_lock:
            self.client.load_collection(collection_name(model))  # a no-op when loaded; reopened ones are not
            res = self.client.query(collection_name(model), filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def all_ids(self, model: str) -> list[str]:
        """Every stored track id, duplicates included (used to check idempotency)."""
        out: list[str] = []
        with self._milvus_lock:
            self.client.load_collection(collection_name(model))
            it = self.client.query_iterator(collection_name(model), batch_size=1000, filter="", output_fields=[ID_FIELD])
            while batch := it.next():
                out += [r[ID_FIELD] for r in batch]
            it.close()
        return out

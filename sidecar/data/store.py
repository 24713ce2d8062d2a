"""Vectors in Milvus: one collection per embedder, primary key = track id, cosine metric.

Writes are upserts keyed by track id, so replaying an event leaves one row per (track, model). A Milvus Lite
file is the embedded default; a server URI is used as it is. All calls are blocking: callers run them in a
worker thread (asyncio.to_thread), never on the event loop.

Milvus is the store of record. Reads of track vectors (search, get) are served from an exact in-memory
mirror of each collection, loaded at start and kept in step by every write: an exact search over 100k
200-d vectors is a few milliseconds of numpy, where Milvus Lite takes 50-100 ms (see FACTS.md).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import numpy as np

from sidecar.data.lite import LiteServer
from sidecar.data.mirror import Mirror, Rows

log = logging.getLogger(__name__)

ID_FIELD, VECTOR_FIELD, HASH_FIELD = "track_id", "vector", "content_hash"


class StoreError(RuntimeError):
    pass


def collection_name(model: str) -> str:
    return f"emb_{model}"


def segments_name(model: str) -> str:
    return f"seg_{model}"


def _quoted(ids) -> str:
    return ", ".join('"' + str(i).replace('"', "") + '"' for i in ids)


POOL = 2000  # without a mirror, whole-library similarities are taken over each query's nearest POOL tracks
HNSW = {"M": 16, "efConstruction": 200}  # a Milvus server's index (Lite keeps FLAT: see FACTS.md)


class VectorStore:
    """Milvus (Lite or a server) as the store of record. With `mirror` (the default) every read is answered
    from an exact in-memory copy; without, from Milvus itself: its HNSW index on a server, for libraries whose
    vectors do not fit in memory, and for ingest workers, which only write."""

    def __init__(self, uri: str, token: str = "", *, mirror: bool = True):
        self.uri = uri
        self.is_lite = not uri.startswith(("http://", "https://", "tcp://", "unix:"))
        self.mirror = mirror
        # Milvus Lite gains nothing from concurrent calls; a server does, and its client is thread-safe
        self._milvus_lock = threading.Lock() if self.is_lite else contextlib.nullcontext()
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
        if self.mirror and model not in self.mirrors:
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
                if self.is_lite:  # exact, and nothing to build in the background (see FACTS.md on Lite's HNSW files)
                    index.add_index(field_name=VECTOR_FIELD, index_type="FLAT", metric_type="COSINE")
                else:
                    index.add_index(field_name=VECTOR_FIELD, index_type="HNSW", metric_type="COSINE", params=HNSW)
                self.client.create_collection(name, schema=schema, index_params=index)
                if track_field:
                    scalar = self.client.prepare_index_params()
                    # Lite builds only INVERTED scalar indexes; a 2.3 server refuses it for strings and wants Trie
                    scalar.add_index(field_name=ID_FIELD, index_type="INVERTED" if self.is_lite else "Trie")
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
        for ids, vectors in self._all_vectors(model):
            mirror.put(ids, vectors)
        mirror.compact()
        return mirror

    def _all_vectors(self, model: str, batch_size: int = 8192):
        """Every stored (ids, vectors), a batch at a time, as written so far (strong consistency on a server)."""
        with self._milvus_lock:
            if not self.is_lite:
                # pymilvus's iterator cannot ask a 2.3 server for strong consistency (it falls back to a client-side
                # timestamp and may see nothing yet); a strong query first makes the server catch up with every write
                self.client.query(collection_name(model), filter="", output_fields=["count(*)"], **self._strong)
            it = self.client.query_iterator(
                collection_name(model), batch_size=batch_size, filter="", output_fields=[ID_FIELD, VECTOR_FIELD]
            )
            while batch := it.next():
                yield [r[ID_FIELD] for r in batch], np.array([r[VECTOR_FIELD] for r in batch], np.float32)
            it.close()

    @property
    def _strong(self) -> dict:
        """Reads that must see every write so far: a server's collections default to bounded staleness."""
        return {} if self.is_lite else {"consistency_level": "Strong"}

    def follow(self, model: str, upserted: list[str], deleted: list[str]) -> None:
        """Bring the mirror up to date with writes another process made (from the catalog's vector log)."""
        if model not in self.mirrors:
            return
        fresh = self._fetch(model, upserted, strong=True) if upserted else {}
        with self._lock:
            mirror = self.mirrors[model]
            if fresh:
                mirror.put(list(fresh), np.stack(list(fresh.values())))
            gone = [t for t in deleted if t not in fresh] + [t for t in upserted if t not in fresh]  # deleted since
            mirror.remove(gone)

    def _fetch(self, model: str, track_ids: list[str], *, strong: bool = False) -> dict[str, np.ndarray]:
        """The tracks' vectors from Milvus itself. `strong` waits until every write so far is visible (tenths of a
        second on a server); a query does not need it (a vector a few seconds new may be missed)."""
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(track_ids), 1000):
            with self._milvus_lock:
                rows = self.client.get(
                    collection_name(model), ids=list(track_ids[i : i + 1000]), output_fields=[ID_FIELD, VECTOR_FIELD],
                    **(self._strong if strong else {}),
                )
            out.update({r[ID_FIELD]: np.asarray(r[VECTOR_FIELD], np.float32) for r in rows})
        return out

    def upsert(self, model: str, rows: list[tuple[str, np.ndarray, str]]) -> None:
        data = [{ID_FIELD: tid, VECTOR_FIELD: np.asarray(v, dtype=np.float32).tolist(), HASH_FIELD: h} for tid, v, h in rows]
        with self._milvus_lock:
            self.client.upsert(collection_name(model), data)
            if model in self.mirrors:
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
                if model in self.mirrors:
                    with self._lock:
                        self.mirrors[model].remove(list(track_ids))
                if segments_name(model) in self._dims:
                    self.client.delete(segments_name(model), filter=f"{ID_FIELD} in [{_quoted(track_ids)}]")

    # ---- reads: from the mirror where there is one, else from Milvus
    def get_vectors(self, model: str, track_ids: list[str]) -> dict[str, np.ndarray]:
        if model not in self.mirrors:
            return self._fetch(model, list(track_ids))
        with self._lock:
            return self.mirrors[model].get(list(track_ids))

    def stacked(self, model: str, track_ids: list[str]) -> tuple[list[str], np.ndarray]:
        """Those of `track_ids` the model has, in their order, and their vectors as one (n, dim) array (a copy):
        for many tracks at once, where get_vectors would make an array each."""
        if model not in self.mirrors:
            found = self._fetch(model, list(track_ids))
            have = [t for t in track_ids if t in found]
            return have, np.array([found[t] for t in have], np.float32).reshape(len(have), -1)
        with self._lock:
            m = self.mirrors[model]
            have = [t for t in track_ids if t in m.pos]
            return have, m.matrix[[m.pos[t] for t in have]]

    def search(self, model: str, vector: np.ndarray, limit: int, exclude=()) -> list[tuple[str, float]]:
        """(track_id, cosine similarity), best first; exact from the mirror, approximate (HNSW) from a server."""
        if model not in self.mirrors:
            exclude = set(exclude)
            hits = self._milvus_search(model, np.asarray(vector, np.float32)[None], limit + len(exclude))[0]
            return [(t, s) for t, s in hits if t not in exclude][:limit]
        with self._lock:
            return self.mirrors[model].search(vector, limit, exclude)

    def _milvus_search(self, model: str, queries: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        limit = max(1, min(limit, 16384))  # Milvus's top-k limit
        params = {"metric_type": "COSINE", "params": {"ef": max(64, limit)}}
        with self._milvus_lock:
            res = self.client.search(collection_name(model), queries.tolist(), limit=limit, search_params=params, output_fields=[])
        return [[(h["id"], float(h["distance"])) for h in hits] for hits in res]

    def similarities(self, model: str, queries: np.ndarray) -> tuple[Rows, np.ndarray]:
        """Cosine similarity of the tracks to each query: (track ids by row, (tracks, queries)). With the mirror,
        every track, exactly; without, the union of each query's nearest POOL tracks (scored exactly)."""
        queries = np.asarray(queries, np.float32).reshape(len(queries), -1)
        if model not in self.mirrors:
            pool = list(dict.fromkeys(t for hits in self._milvus_search(model, queries, POOL) for t, _ in hits))
            ids, vectors = self.stacked(model, pool)
            unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
            q = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
            return Rows(ids, {t: i for i, t in enumerate(ids)}), unit @ q.T
        with self._lock:
            mirror = self.mirrors[model]
            return Rows(mirror.ids, mirror.pos), mirror.similarities(queries)

    def size(self, model: str) -> int:
        """How many tracks have a vector of this model."""
        if model not in self.mirrors:
            return self.count(model)
        with self._lock:
            return len(self.mirrors[model])

    def track_ids(self, model: str) -> tuple[str, ...]:
        """Every track id the model has, in the order snapshot gives them, without copying the vectors: what tells
        whether the library changed since a result computed over all of it."""
        if model not in self.mirrors:
            return tuple(dict.fromkeys(self.all_ids(model)))
        with self._lock:
            return tuple(self.mirrors[model].ids)

    def snapshot(self, model: str) -> tuple[tuple[str, ...], np.ndarray]:
        """Every track id and its vector (raw, as stored), in one consistent copy: for work over the whole library."""
        if model not in self.mirrors:
            parts = list(self._all_vectors(model))
            ids = tuple(t for batch, _ in parts for t in batch)
            return ids, np.concatenate([v for _, v in parts]) if parts else np.zeros((0, self._dims[collection_name(model)]), np.float32)
        with self._lock:
            m = self.mirrors[model]
            return tuple(m.ids), m.matrix.copy()

    def count(self, model: str) -> int:
        with self._milvus_lock:
            self.client.load_collection(collection_name(model))  # a no-op when loaded; reopened ones are not
            res = self.client.query(collection_name(model), filter="", output_fields=["count(*)"], **self._strong)
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

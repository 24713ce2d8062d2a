"""Vectors in Milvus: one collection per embedder, primary key = track id, cosine metric.

Writes are upserts keyed by track id, so replaying an event leaves one row per (track, model). A Milvus Lite
file is the embedded default; a server URI is used as it is. All calls are blocking: callers run them in a
worker thread (asyncio.to_thread), never on the event loop.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

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


class VectorStore:
    def __init__(self, uri: str, token: str = ""):
        self.uri = uri
        self.is_lite = not uri.startswith(("http://", "https://", "tcp://", "unix:"))
        self._lock = threading.Lock()  # Milvus Lite gains nothing from concurrent calls; keep them simple
        self._dims: dict[str, int] = {}
        from pymilvus import MilvusClient  # slow import: keep it off module import

        if self.is_lite:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            # Lite's in-process gRPC server logs an error for AllocTimestamp, which pymilvus 3 calls and Lite
            # does not implement; the client falls back by itself, so the traceback is noise.
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
            logging.getLogger("faiss.loader").setLevel(logging.WARNING)
        try:
            self.client = MilvusClient(uri=uri, token=token)
        except Exception as e:
            if "DataDirLocked" in type(e).__name__ or "lock" in str(e).lower():
                raise StoreError(
                    f"the vector store {uri} is open in another process (a running `sidecar serve`?). "
                    "Stop it first, or ask the running sidecar over HTTP."
                ) from None
            raise StoreError(f"cannot open the vector store at {uri}: {e}") from None

    def close(self) -> None:
        with self._lock:
            self.client.close()
            if self.is_lite:  # close() keeps the data-dir lock; release it so the file can be reopened
                try:
                    from milvus_lite.server_manager import server_manager_instance

                    server_manager_instance.release_server(self.uri)
                except Exception:  # best effort: process exit releases it too
                    log.debug("could not release the Milvus Lite lock", exc_info=True)

    def ensure_collection(self, model: str, dim: int, *, segments: bool = False) -> None:
        """Create the model's collection if missing, load it, and check its dimension. With `segments`, also
        the collection of its per-segment vectors (primary key "<track id>:<n>")."""
        self._ensure(collection_name(model), model, dim, pk_length=64)
        if segments:
            self._ensure(segments_name(model), model, dim, pk_length=80, track_field=True)

    def _ensure(self, name: str, model: str, dim: int, *, pk_length: int, track_field: bool = False) -> None:
        from pymilvus import DataType

        with self._lock:
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

    def upsert(self, model: str, rows: list[tuple[str, np.ndarray, str]]) -> None:
        data = [{ID_FIELD: tid, VECTOR_FIELD: np.asarray(v, dtype=np.float32).tolist(), HASH_FIELD: h} for tid, v, h in rows]
        with self._lock:
            self.client.upsert(collection_name(model), data)

    def replace_segments(self, model: str, track_id: str, vectors: np.ndarray, content_hash: str) -> None:
        """The track's segment vectors, replacing any it had (a re-embed may make fewer segments)."""
        name = segments_name(model)
        data = [
            {"id": f"{track_id}:{i}", ID_FIELD: track_id, VECTOR_FIELD: np.asarray(v, np.float32).tolist(), HASH_FIELD: content_hash}
            for i, v in enumerate(vectors)
        ]
        with self._lock:
            self.client.delete(name, filter=f"{ID_FIELD} == {_quoted([track_id])} and id not in [{_quoted(d['id'] for d in data)}]")
            if data:
                self.client.upsert(name, data)

    def segment_ids(self, model: str, track_id: str) -> list[str]:
        with self._lock:
            rows = self.client.query(segments_name(model), filter=f"{ID_FIELD} == {_quoted([track_id])}", output_fields=["id"])
        return sorted(r["id"] for r in rows)

    def delete(self, model: str, track_ids: list[str]) -> None:
        """The tracks' vectors, and their segments where the model keeps them."""
        if track_ids:
            with self._lock:
                self.client.delete(collection_name(model), ids=list(track_ids))
                if segments_name(model) in self._dims:
                    self.client.delete(segments_name(model), filter=f"{ID_FIELD} in [{_quoted(track_ids)}]")

    def get_vectors(self, model: str, track_ids: list[str]) -> dict[str, np.ndarray]:
        if not track_ids:
            return {}
        with self._lock:
            rows = self.client.get(collection_name(model), ids=list(track_ids), output_fields=[VECTOR_FIELD])
        return {r[ID_FIELD]: np.asarray(r[VECTOR_FIELD], dtype=np.float32) for r in rows}

    def search(self, model: str, vector: np.ndarray, limit: int, exclude: list[str] = ()) -> list[tuple[str, float]]:
        """(track_id, cosine similarity), best first."""
        expr = f"{ID_FIELD} not in [{_quoted(exclude)}]" if exclude else ""
        with self._lock:
            hits = self.client.search(
                collection_name(model), data=[np.asarray(vector, dtype=np.float32).tolist()], limit=limit,
                filter=expr, output_fields=[ID_FIELD],
            )[0]
        return [(h[ID_FIELD] if ID_FIELD in h else h["id"], float(h["distance"])) for h in hits]

    def count(self, model: str) -> int:
        with self._lock:
            self.client.load_collection(collection_name(model))  # a no-op when loaded; reopened ones are not
            res = self.client.query(collection_name(model), filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def all_ids(self, model: str) -> list[str]:
        """Every stored track id, duplicates included (used to check idempotency)."""
        out: list[str] = []
        with self._lock:
            self.client.load_collection(collection_name(model))
            it = self.client.query_iterator(collection_name(model), batch_size=1000, filter="", output_fields=[ID_FIELD])
            while batch := it.next():
                out += [r[ID_FIELD] for r in batch]
            it.close()
        return out

"""The Milvus calls of the vector store, in one place: the client (Milvus Lite, embedded, or a server), the
lock Lite needs, the collections' schema and index, and reads that must see every write so far (a server's
collections default to bounded staleness). Raw vectors in, raw vectors out: VectorStore (store.py) decides
what they mean."""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sidecar.data.lite import LiteServer

log = logging.getLogger(__name__)

ID_FIELD, VECTOR_FIELD, HASH_FIELD = "track_id", "vector", "content_hash"
HNSW = {"M": 16, "efConstruction": 200}  # a Milvus server's index (Lite keeps FLAT: see FACTS.md)


class StoreError(RuntimeError):
    pass


def quoted(ids) -> str:
    return ", ".join('"' + str(i).replace('"', "") + '"' for i in ids)


class Milvus:
    def __init__(self, uri: str, token: str = ""):
        self.is_lite = not uri.startswith(("http://", "https://", "tcp://", "unix:"))
        # Milvus Lite gains nothing from concurrent calls; a server does, and its client is thread-safe. Reentrant:
        # a write that completes an upgrade drops the previous collection while holding it.
        self.lock = threading.RLock() if self.is_lite else contextlib.nullcontext()
        self.lite: LiteServer | None = None
        from pymilvus import MilvusClient  # slow import: keep it off module import

        try:
            if self.is_lite:
                self.lite = LiteServer(Path(uri), self.lock)
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
        with self.lock:
            self.client.close()
            if self.lite is not None:
                self.lite.close()

    @property
    def strong(self) -> dict:
        """Reads that must see every write so far: a server's collections default to bounded staleness."""
        return {} if self.is_lite else {"consistency_level": "Strong"}

    # ---- collections
    def ensure(self, name: str, dim: int | None, *, pk_length: int = 64, track_field: bool = False, derived: bool = False,
               load: bool = True) -> int:
        """Create (with `dim`) if missing, and load (unless not `load`); the dimension it holds. A collection
        `derived` from others (segments, a space's vectors) of another dimension is dropped and made again."""
        from pymilvus import DataType

        with self.lock:
            if self.client.has_collection(name):
                fields = self.client.describe_collection(name)["fields"]
                have = next(int(f["params"]["dim"]) for f in fields if f["name"] == VECTOR_FIELD)
                if derived and have != dim:
                    log.warning("dropping the collection %s: %d-d vectors, now %d-d", name, have, dim)
                    self.client.drop_collection(name)
                dim = have if dim is None else dim
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
            if load:
                self.client.load_collection(name)  # reopened collections are not loaded
            else:  # pymilvus loads a collection it creates with an index
                self.client.release_collection(name)
        return dim

    def drop(self, name: str) -> None:
        with self.lock:
            if self.client.has_collection(name):  # another process may have dropped it first
                self.client.drop_collection(name)
            if self.lite is not None:
                self.lite.forget(name)

    def rest(self, name: str) -> None:
        """Lite: the collection is read from elsewhere (a mirror) and only written here: Lite need not hold it in
        memory (LiteServer.rest). A no-op on a server."""
        if self.lite is not None:
            self.lite.rest(name)

    def touched(self, name: str) -> None:
        """After a call on the collection, under the lock: a resting one that it opened closes again when idle."""
        if self.lite is not None:
            self.lite.touched(name)

    def names(self) -> list[str]:
        """Every collection's name. Lite's from its folder: through gRPC, listing opens every collection to tell
        whether it is loaded, which reads all their vectors into memory."""
        with self.lock:
            return self.lite.db.list_collections() if self.lite is not None else self.client.list_collections()

    def exists(self, name: str) -> bool:
        with self.lock:
            return self.client.has_collection(name)

    # ---- reads
    def count(self, name: str) -> int:
        with self.lock:
            if not self.is_lite:  # Lite counts a collection it has not loaded (loading builds its search index)
                self.client.load_collection(name)  # a no-op when loaded; reopened ones are not
            res = self.client.query(name, filter="", output_fields=["count(*)"], **self.strong)
            self.touched(name)
        return int(res[0]["count(*)"])

    def _catch_up(self, name: str) -> None:
        """pymilvus's iterator cannot ask a 2.3 server for strong consistency (it falls back to a client-side
        timestamp and may miss the latest writes); a strong query first makes the server catch up with every one."""
        if not self.is_lite:
            self.client.query(name, filter="", output_fields=["count(*)"], **self.strong)

    def _query_all(self, name: str, fields: list[str], where: str = "", batch_size: int = 8192) -> Iterator[list[dict]]:
        """Every row that matches `where`, as written so far, a batch of dicts at a time (the caller holds the lock)."""
        self._catch_up(name)
        it = self.client.query_iterator(name, batch_size=batch_size, filter=where, output_fields=fields)
        while batch := it.next():
            yield batch
        it.close()

    def ids(self, name: str) -> list[str]:
        """Every stored track id, duplicates included."""
        out: list[str] = []
        with self.lock:
            if self.lite is not None and (rows := self.lite.rows(name, None, 8192)) is not None:
                self.touched(name)
                return [t for ids, _ in rows for t in ids]  # without loading it (Lite holds no duplicates)
            self.client.load_collection(name)
            for batch in self._query_all(name, [ID_FIELD], batch_size=1000):
                out += [r[ID_FIELD] for r in batch]
        return out

    def batches(self, name: str, batch_size: int = 8192, below: str | None = None, where: str = "") -> Iterator[tuple[list[str], np.ndarray]]:
        """Every stored (ids, vectors) (with `below`: those of the ids that sort before it; with `where`: those
        that match this Milvus filter), a batch at a time in id order, as written so far (strong consistency on
        a server). Lite's are read in this process, without loading the collection (LiteServer.rows)."""
        with self.lock:
            if not where and self.lite is not None and (rows := self.lite.rows(name, VECTOR_FIELD, batch_size, below)) is not None:
                self.touched(name)
                yield from rows
                return
            where = " and ".join(w for w in (f'{ID_FIELD} < "{below}"' if below else "", where) if w)
            for batch in self._query_all(name, [ID_FIELD, VECTOR_FIELD], where, batch_size):
                yield [r[ID_FIELD] for r in batch], np.array([r[VECTOR_FIELD] for r in batch], np.float32)

    def keys(self, name: str) -> dict[str, str]:
        """Every stored track id and its HASH_FIELD."""
        with self.lock:
            return {r[ID_FIELD]: r[HASH_FIELD] for batch in self._query_all(name, [ID_FIELD, HASH_FIELD]) for r in batch}

    def fetch(self, name: str, track_ids: list[str], *, strong: bool = False) -> dict[str, np.ndarray]:
        """The tracks' vectors. `strong` waits until every write so far is visible (tenths of a second on a
        server); a query does not need it (a vector a few seconds new may be missed)."""
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(track_ids), 1000):
            with self.lock:
                rows = self.client.get(
                    name, ids=list(track_ids[i : i + 1000]), output_fields=[ID_FIELD, VECTOR_FIELD],
                    **(self.strong if strong else {}),
                )
            out.update({r[ID_FIELD]: np.asarray(r[VECTOR_FIELD], np.float32) for r in rows})
        return out

    def search(self, name: str, queries: np.ndarray, limit: int, *, where: str = "") -> list[list[tuple[str, float]]]:
        """Per query, (track id, cosine) best first, among the rows that match `where` (a Milvus filter)."""
        limit = max(1, min(limit, 16384))  # Milvus's top-k limit
        params = {"metric_type": "COSINE", "params": {"ef": max(64, limit)}}
        with self.lock:
            res = self.client.search(name, np.asarray(queries, np.float32).reshape(-1, np.shape(queries)[-1]).tolist(),
                                     limit=limit, search_params=params, filter=where)
        return [[(h.id, float(h["distance"])) for h in hits] for hits in res]

    def sample(self, name: str, library_size: int, size: int) -> Iterator[np.ndarray]:
        """About `size` of the stored vectors, at random: track ids are random hex (uuid4), so those below a bound
        are a random subset; every vector of a library under twice `size`."""
        bound = None if library_size <= 2 * size else f"{int(16**4 * size / library_size):04x}"
        got = 0
        for _, vectors in self.batches(name, 4096, bound):
            yield vectors
            got += len(vectors)
            if got >= 2 * size:  # ids that are not random (a synthetic library): enough anyway
                break

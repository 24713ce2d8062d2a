"""The store on Milvus Lite, as the mirror uses it. Reading a collection in this process (LiteServer.rows, what
loads the mirror) gives what pymilvus's query iterator gives through gRPC: the same rows in the same order, with
flushed and unflushed rows, upserts and deletes, and without loading the collection. A collection the mirror
answers for rests: Lite holds nothing of it until a write opens it again, and closes it again when idle."""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from sidecar.data import lite as lite_module
from sidecar.data.milvus import HASH_FIELD, ID_FIELD, VECTOR_FIELD, Milvus
from sidecar.data.store import VectorStore, collection_name

DIM = 8


def rows(ids, vectors) -> list[dict]:
    return [{ID_FIELD: t, VECTOR_FIELD: v.tolist(), HASH_FIELD: "h"} for t, v in zip(ids, vectors)]


def read(m: Milvus, name: str, below: str | None = None) -> tuple[list[str], np.ndarray]:
    parts = list(m.batches(name, 64, below))
    return [t for ids, _ in parts for t in ids], np.concatenate([v for _, v in parts] or [np.zeros((0, DIM), np.float32)])


@pytest.fixture
def lite(tmp_path):
    m = Milvus(str(tmp_path / "v.db"))
    yield m
    m.close()


def fill(m: Milvus, name: str) -> dict[str, np.ndarray]:
    """Rows in flushed segments, rows only in the write-ahead log and MemTable, upserts of flushed rows, and deletes
    both flushed and not: the live rows, by id."""
    rng = np.random.default_rng(3)
    m.ensure(name, DIM, load=False)
    ids = [uuid.uuid4().hex for _ in range(400)]
    vectors = rng.standard_normal((400, DIM)).astype(np.float32)
    m.client.upsert(name, rows(ids[:200], vectors[:200]))
    m.client.flush(name)
    m.client.upsert(name, rows(ids[200:300], vectors[200:300]))
    m.client.delete(name, ids=ids[:20])  # flushed with the next rows
    m.client.flush(name)
    m.client.upsert(name, rows(ids[300:], vectors[300:]))
    vectors[20:60] += 1  # new versions of flushed rows, in the MemTable
    m.client.upsert(name, rows(ids[20:60], vectors[20:60]))
    m.client.delete(name, ids=ids[60:70] + ids[390:])  # unflushed tombstones, of flushed and unflushed rows
    return {t: v for t, v in zip(ids, vectors) if t not in set(ids[:20] + ids[60:70] + ids[390:])}


def test_rows_read_in_process_are_the_query_iterators(lite, monkeypatch):
    live = fill(lite, "c")
    assert lite.lite.rows("c", VECTOR_FIELD, 64) is not None  # this Lite has the read path: no fallback
    got_ids, got = read(lite, "c")
    assert got_ids == sorted(live) and np.array_equal(got, np.stack([live[t] for t in got_ids]))
    assert lite.client.get_load_state("c")["state"].name == "NotLoad"  # read without building Lite's index
    assert lite.count("c") == len(live) and lite.ids("c") == got_ids
    below_ids, below = read(lite, "c", below="8")
    assert below_ids == [t for t in got_ids if t < "8"] and np.array_equal(below, got[: len(below_ids)])

    monkeypatch.setattr(lite.lite, "rows", lambda *a, **k: None)  # the same through gRPC
    lite.client.load_collection("c")
    ref_ids, ref = read(lite, "c")
    assert ref_ids == got_ids and np.array_equal(ref, got)
    assert read(lite, "c", below="8")[0] == below_ids and lite.ids("c") == got_ids


def test_rows_after_reopening(tmp_path):
    m = Milvus(str(tmp_path / "v.db"))
    try:
        live = fill(m, "c")
    finally:
        m.close()
    again = Milvus(str(tmp_path / "v.db"))
    try:
        ids, vectors = read(again, "c")
        assert ids == sorted(live) and np.array_equal(vectors, np.stack([live[t] for t in ids]))
        again.ensure("empty", DIM, load=False)
        assert read(again, "empty")[0] == [] and again.ids("empty") == []
    finally:
        again.close()


def is_open(store: VectorStore, name: str) -> bool:
    return ("default", name) in store.milvus.lite.db._collections


def test_a_mirrored_collection_rests_between_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(lite_module, "REST_AFTER_S", 0.3)
    rng = np.random.default_rng(5)
    ids = [uuid.uuid4().hex for _ in range(300)]
    vectors = rng.standard_normal((300, DIM)).astype(np.float32)
    store = VectorStore(str(tmp_path / "v.db"))
    try:
        store.ensure_collection("m", DIM)
        name = collection_name("m")
        assert not is_open(store, name)  # resting from the start
        store.upsert("m", [(t, v, "h") for t, v in zip(ids[:200], vectors[:200])])
        assert is_open(store, name)  # the write opened it
        store.delete("m", ids[:10])
        deadline = time.monotonic() + 10
        while is_open(store, name):  # closed again once idle
            assert time.monotonic() < deadline, "the idle collection was never closed"
            time.sleep(0.05)
        store.upsert("m", [(t, v, "h") for t, v in zip(ids[200:], vectors[200:])])  # opens it again
        assert store.search("m", vectors[250], 1)[0][0] == ids[250]
    finally:
        store.close()
    again = VectorStore(str(tmp_path / "v.db"))  # every write reached Lite, the store of record
    try:
        again.ensure_collection("m", DIM)
        mirror = again.mirrors["m"]
        assert sorted(mirror.ids) == sorted(ids[10:])
        assert np.array_equal(np.stack(list(mirror.get(ids[10:]).values())), vectors[10:])
    finally:
        again.close()

"""Smoke tests of the real-server fixtures: PostgreSQL (tests/postgres_server.py) and Milvus standalone
(tests/milvus_server.py), used for real through psycopg 3 and pymilvus' MilvusClient."""
from __future__ import annotations

import numpy as np
import pytest

# fixtures: tests/postgres_server.py and tests/milvus_server.py, listed in conftest.py's pytest_plugins


def test_postgres_round_trip(postgres_url, postgres_db):
    import psycopg

    with psycopg.connect(postgres_db) as conn:
        conn.execute("CREATE TABLE tracks (id text PRIMARY KEY, title text NOT NULL, plays int DEFAULT 0)")
        conn.cursor().executemany("INSERT INTO tracks (id, title) VALUES (%s, %s)", [("a", "Alpha"), ("b", "Beta")])
        conn.execute("UPDATE tracks SET plays = plays + 1 WHERE id = %s", ("b",))
        conn.commit()
        assert conn.execute("SELECT id, title, plays FROM tracks ORDER BY id").fetchall() == [
            ("a", "Alpha", 0), ("b", "Beta", 1)]
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO tracks (id, title) VALUES ('a', 'again')")
    # the per-test database is fresh: the session database has no such table
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('tracks')").fetchone() == (None,)


def test_postgres_databases_are_separate(postgres_db):
    import psycopg

    with psycopg.connect(postgres_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def _clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Seeded vectors around a few centres (random vectors make every HNSW look bad), L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_milvus_hnsw_round_trip(milvus_uri, unique_collection):
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri=milvus_uri)
    name = unique_collection("smoke")
    try:
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=200)
        schema.add_field("genre", DataType.VARCHAR, max_length=32)
        index = client.prepare_index_params()
        index.add_index(field_name="vec", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 100})
        # Strong: the server's default (Bounded) may answer a read from before the write just made
        client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")

        x = _clustered(1000, 200, clusters=20, seed=7)
        rows = [{"id": f"t{i}", "vec": v.tolist(), "genre": ("rock", "jazz")[i % 2]} for i, v in enumerate(x)]
        assert client.upsert(name, rows)["upsert_count"] == 1000
        client.flush(name)  # seal the segment, so the search goes through the HNSW index
        client.load_collection(name)
        assert client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"] == 1000

        hits = client.search(name, [x[42].tolist()], limit=5, search_params={"metric_type": "COSINE", "params": {"ef": 64}},
                             output_fields=["genre"])[0]
        assert hits[0]["id"] == "t42" and hits[0]["distance"] == pytest.approx(1.0, abs=1e-4)
        assert hits[0]["entity"]["genre"] == "rock"

        client.delete(name, ids=["t42"])
        assert client.get(name, ids=["t42"]) == []
        hits = client.search(name, [x[42].tolist()], limit=5, search_params={"metric_type": "COSINE", "params": {"ef": 64}})[0]
        assert "t42" not in [h["id"] for h in hits]
        assert client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"] == 999
    finally:
        client.drop_collection(name)
        client.close()

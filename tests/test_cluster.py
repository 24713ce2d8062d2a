"""Beyond one machine, for real: two `sidecar worker` processes and one `sidecar api` share a Kafka-protocol
broker (Tansu), a PostgreSQL catalog and a Milvus standalone server, and ingest a real library.

What it shows: each worker analyses part of the library; one worker is killed (SIGKILL) mid-analysis and the
other takes over its partitions and finishes; every track ends with exactly one vector per model, and no result
was stored twice (the catalog's vector log has one entry per track and model); the API process, which analyses
nothing, answers similar tracks for tracks analysed by either worker.
"""
from __future__ import annotations

import shutil
import time
from collections import Counter

import pytest

from sidecar.data.catalog import Catalog
from sidecar.data.store import VectorStore
from tests.kafka_broker import unique_name
from tests.sidecar_process import SidecarProcess

MODELS = ("musicnn", "dsp")


def wait_for(what: str, check, timeout: float, *procs: SidecarProcess):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.proc.poll() is None, f"{p.command[0]} exited:\n{p.log()}"
        if value := check():
            return value
        time.sleep(0.3)
    raise TimeoutError(f"{what} not within {timeout} s:\n" + "\n---\n".join(p.log() for p in procs))


@pytest.mark.slow
def test_two_workers_and_an_api_share_kafka_postgres_and_milvus(
    tmp_path, models_dir, excerpts, genre_excerpts, kafka_bootstrap, postgres_db, milvus_uri
):
    music = tmp_path / "music"
    music.mkdir()
    tracks = sorted(set(excerpts + genre_excerpts["orchestral"] + genre_excerpts["electronic"]))
    for t in tracks:
        shutil.copy(t, music / t.name)
    N_TRACKS = len(tracks)  # about 60 real 30-second excerpts: long enough to kill a worker half way
    env = dict(
        SIDECAR_BUS="kafka", SIDECAR_KAFKA_BOOTSTRAP=kafka_bootstrap, SIDECAR_KAFKA_TOPIC=unique_name("library"),
        SIDECAR_KAFKA_DEAD_LETTER_TOPIC=unique_name("dead"), SIDECAR_KAFKA_GROUP=unique_name("workers"),
        SIDECAR_KAFKA_SESSION_TIMEOUT_MS="2000", SIDECAR_KAFKA_HEARTBEAT_INTERVAL_MS="500",
        SIDECAR_CATALOG_URL=postgres_db, SIDECAR_MILVUS_URI=milvus_uri, SIDECAR_INGEST_WORKERS="1",
        SIDECAR_RECONCILE_INTERVAL_S="0",
    )

    def process(name: str, command) -> SidecarProcess:
        return SidecarProcess(music, tmp_path / name, models_dir, tmp_path / f"{name}.log", command=command, **env)

    api = process("api", "api").start()
    workers = {"a": process("worker-a", ["worker", "--watch"]), "b": process("worker-b", "worker")}
    try:
        for w in workers.values():
            w.start()
        catalog = Catalog(postgres_db)

        def done_by() -> Counter:
            rows = catalog.db.query("SELECT analysed_by FROM embeddings WHERE model = 'musicnn' AND status = 'done'")
            return Counter(r["analysed_by"].split(":")[1] for r in rows)  # by pid

        pids = {name: str(w.proc.pid) for name, w in workers.items()}
        # worker a walks the folder and publishes one event per file, keyed by path over the topic's partitions;
        # the group shares them: wait until both have analysed something, then kill b in the middle of its share
        wait_for("both workers analysing", lambda: all(done_by()[p] >= 4 for p in pids.values()), 300, *workers.values())
        killed_after = done_by()[pids["b"]]
        assert sum(done_by().values()) < N_TRACKS, "the library was done before b could be killed: make it longer"
        workers["b"].kill()

        wait_for("every track analysed", lambda: sum(done_by().values()) == N_TRACKS, 600, workers["a"], api)
        by = done_by()
        print(f"analysed by worker a: {by[pids['a']]}, by b before it was killed: {killed_after} of {N_TRACKS}")
        assert by[pids["a"]] > 0 and by[pids["b"]] == killed_after > 0, by

        # exactly one vector per track and model in Milvus, and none stored twice (one vector log entry each)
        store = VectorStore(milvus_uri, mirror=False)
        try:
            track_ids = {r["track_id"] for r in catalog.db.query("SELECT track_id FROM tracks")}
            assert len(track_ids) == N_TRACKS
            for model in MODELS:
                ids = store.all_ids(model)
                assert len(ids) == len(set(ids)) == N_TRACKS and set(ids) == track_ids, model
        finally:
            store.close()
        logged = Counter((r["track_id"], r["model"]) for r in catalog.db.query("SELECT track_id, model FROM vector_log WHERE op = 'upsert'"))
        assert set(logged.values()) == {1} and len(logged) == N_TRACKS * len(MODELS), logged.most_common(3)

        # the API process follows what the workers wrote: similar tracks for a track of each worker
        for pid in pids.values():
            tid = catalog.db.query(
                "SELECT track_id FROM embeddings WHERE model = 'musicnn' AND analysed_by LIKE ? LIMIT 1", (f"%:{pid}",)
            )[0]["track_id"]
            hits = wait_for("the api's answer", lambda: api.get("/api/similar_tracks", item_id=tid, n=5) or None, 30, api)
            assert len(hits) == 5 and tid not in {h["item_id"] for h in hits}
        assert api.get("/api/status")["tracks"] == N_TRACKS
        catalog.close()
    finally:
        for w in workers.values():
            w.kill()
        api.kill()

"""Beyond one machine: ingest throughput with 1 and 2 `sidecar worker` processes, and query latency from a
`sidecar api` process against its in-memory mirror and against the Milvus server's own HNSW index.

Everything real and local: a Kafka-protocol broker (Tansu), PostgreSQL (Debian's package) and a Milvus
standalone server (the PyPI `milvus` package), started and stopped here as the tests start them.

1. Ingest: the same real full-length tracks (the demo library and two Debian soundtracks, fetched once into
   .cache/music) analysed by one worker, then by two in one consumer group, each on a fresh topic, catalog and
   collections; each worker with SIDECAR_INGEST_WORKERS=1 (one analysis thread), so the ratio is the scale-out
   of processes. Tracks/hour counts from the first event published to the last result in the catalog.
2. Queries: a synthetic library of N clustered vectors (1,012-d musicnn, 52-d dsp) written straight into the
   Milvus server and the catalog; `sidecar api` started once with the mirror (default) and once with
   SIDECAR_VECTOR_MIRROR=false; GET /api/similar_tracks p50/p99 over HTTP, recall@25 against exact brute force
   (in the full similarity space and in the space as held, projected),
   resident memory.

    .venv/bin/python scripts/bench_scale.py                      # 40 tracks, 100k vectors
    .venv/bin/python scripts/bench_scale.py --tracks 20 --vectors 20000 --requests 100
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.kafka_broker import _stop as stop_tansu  # noqa: E402
from tests.kafka_broker import start_tansu, unique_name  # noqa: E402
from tests.milvus_server import MilvusStandalone  # noqa: E402
from tests.postgres_server import PostgresServer  # noqa: E402
from tests.sidecar_process import SidecarProcess  # noqa: E402
from scripts.bench_queries import clustered_vectors  # noqa: E402


def real_tracks(n: int) -> list[Path]:
    from sidecar.demo import DEMO_PACKAGES, ELECTRONIC_PACKAGE, ORCHESTRAL_PACKAGE, fetch_demo_library

    tracks = fetch_demo_library(REPO / ".cache" / "music", (*DEMO_PACKAGES, ORCHESTRAL_PACKAGE, ELECTRONIC_PACKAGE))
    return sorted(tracks, key=lambda p: (p.parent.name, p.name))[:n]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest(workers: int, tracks: list[Path], work: Path, bootstrap: str, pg: PostgresServer, milvus: MilvusStandalone,
           milvus_uri: str, models: Path) -> dict:
    """Tracks/hour with `workers` worker processes on a fresh topic, catalog and Milvus collections."""
    from pymilvus import MilvusClient

    from sidecar.data.catalog import Catalog

    client = MilvusClient(uri=milvus_uri)
    for name in client.list_collections():  # the previous run's vectors
        client.drop_collection(name)
    client.close()
    music = work / f"music-{workers}"
    music.mkdir()
    for t in tracks:
        shutil.copy(t, music / t.name)
    _, catalog_url = pg.new_database()
    env = dict(
        SIDECAR_BUS="kafka", SIDECAR_KAFKA_BOOTSTRAP=bootstrap, SIDECAR_KAFKA_TOPIC=unique_name("library"),
        SIDECAR_KAFKA_DEAD_LETTER_TOPIC=unique_name("dead"), SIDECAR_KAFKA_GROUP=unique_name("workers"),
        SIDECAR_KAFKA_SESSION_TIMEOUT_MS="3000", SIDECAR_KAFKA_HEARTBEAT_INTERVAL_MS="1000",
        SIDECAR_CATALOG_URL=catalog_url, SIDECAR_MILVUS_URI=milvus_uri, SIDECAR_INGEST_WORKERS="1", SIDECAR_RECONCILE_INTERVAL_S="0",
    )
    procs = [
        SidecarProcess(music, work / f"w{workers}-{i}", models, work / f"w{workers}-{i}.log", command="worker", **env).start()
        for i in range(workers)
    ]
    catalog = Catalog(catalog_url)
    try:
        time.sleep(8)  # let every worker join the group before there is work: a rebalance mid-run would cost the run
        t0, server0 = time.perf_counter(), cpu_s(milvus.proc.pid)
        subprocess.run([sys.executable, "-m", "sidecar.cli", "rescan"], env=dict(os.environ, **env), check=True, capture_output=True)
        done = 0
        while done < len(tracks):
            for p in procs:
                if p.proc.poll() is not None:
                    raise SystemExit(f"a worker exited:\n{p.log()}")
            time.sleep(0.5)
            done = catalog.db.query(
                "SELECT COUNT(DISTINCT track_id) AS n FROM embeddings WHERE status = 'done' AND model = 'dsp'"
            )[0]["n"]
        wall, server = time.perf_counter() - t0, cpu_s(milvus.proc.pid) - server0
        shares = [r["n"] for r in catalog.db.query("SELECT COUNT(*) AS n FROM embeddings WHERE model = 'dsp' GROUP BY analysed_by")]
    finally:
        catalog.close()
        for p in procs:
            p.kill()
    return {"workers": workers, "tracks": len(tracks), "wall_s": wall, "tracks_per_hour": len(tracks) / wall * 3600,
            "shares": sorted(shares), "milvus_cpu_s": server}


def build_vectors(n: int, catalog_url: str, milvus_uri: str, seed: int = 0) -> None:
    """n clustered musicnn vectors (1,012-d) and 52-d dsp ones in Milvus and their tracks in the catalog."""
    from sidecar.data.catalog import Catalog
    from sidecar.data.space_index import index_names
    from sidecar.data.store import VectorStore

    from pymilvus import MilvusClient

    # written as a worker writes them: raw, and in the space's own collection (SpaceIndex), for reads without a mirror
    _, ids, which, _ = clustered_vectors(VectorStore(milvus_uri, mirror=False), n, seed)
    client = MilvusClient(uri=milvus_uri)
    for name in ("emb_musicnn", *index_names("emb_musicnn")):
        client.flush(name)  # sealed segments: searched through the HNSW index
    client.close()
    catalog = Catalog(catalog_url)
    now = time.time()
    with catalog.db.transaction() as tx:
        tx.executemany(
            "INSERT INTO tracks (track_id, content_hash, duration_s, title, artist, album, created_at, updated_at) VALUES (?, 'h', 200, ?, ?, ?, ?, ?)",
            [(t, f"Track {i}", f"Artist {which[i] % 400}", f"Album {which[i]}", now, now) for i, t in enumerate(ids)],
        )
        tx.executemany("INSERT INTO files (path, track_id, size, mtime_ns) VALUES (?, ?, 1, 1)", [(f"/music/{t}.ogg", t) for t in ids])
        tx.executemany(
            "INSERT INTO embeddings (track_id, model, model_version, content_hash, status, updated_at) VALUES (?, ?, '1', 'h', 'done', ?)",
            [(t, m, now) for t in ids for m in ("musicnn", "dsp")],
        )
    catalog.db.query("ANALYZE")  # the planner's statistics, as autovacuum would gather them after a bulk load
    catalog.close()


def queries(mirror: bool, n: int, requests: int, work: Path, catalog_url: str, milvus_uri: str, models: Path) -> dict:
    env = dict(SIDECAR_CATALOG_URL=catalog_url, SIDECAR_MILVUS_URI=milvus_uri, SIDECAR_VECTOR_MIRROR=str(mirror).lower(),
               SIDECAR_EMBEDDERS="musicnn,dsp")
    name = "mirror" if mirror else "milvus"
    (work / "music").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    api = SidecarProcess(work / "music", work / f"api-{name}", models, work / f"api-{name}.log", command="api", **env).start(timeout=600)
    startup = time.perf_counter() - t0
    try:
        rng = np.random.default_rng(1)
        ids = [f"{i:032x}" for i in rng.choice(n, requests + 5, replace=False)]
        times, answers = [], {}
        for i, tid in enumerate(ids):
            t = time.perf_counter()
            hits = api.get("/api/similar_tracks", item_id=tid, n=25)
            if i >= 5:
                times.append(time.perf_counter() - t)
            answers[tid] = [h["item_id"] for h in hits]
        rss = _rss_mb(api.proc.pid)
    finally:
        api.kill()
    return {"mode": name, "p50_ms": 1000 * float(np.percentile(times, 50)), "p99_ms": 1000 * float(np.percentile(times, 99)),
            "startup_s": startup, "rss_mb": rss, "answers": answers}


def recall(answers: dict[str, list[str]], milvus_uri: str) -> tuple[float, float]:
    """Mean overlap of the served top 25 with the exact top 25 (float64 brute force over every stored vector),
    in the full similarity space (what holding it projected loses counts against it) and in the space as held
    (projected on the statistics' principal directions, which the mirror and Milvus's space collection share)."""
    from sidecar.data.store import VectorStore

    from plugins.embedders.musicnn.recipe import space

    store = VectorStore(milvus_uri, mirror=False)
    blocks = space(vgg=True)
    store.ensure_collection("musicnn", sum(b.size for b in blocks), space=blocks)  # exact: in the full space
    ids, mat = store.snapshot("musicnn")
    space = store._models["musicnn"].index.space
    store.close()
    pos = {t: i for i, t in enumerate(ids)}
    out = []
    for vectors in (mat, space.project(mat)):
        unit = vectors.astype(np.float64) / np.linalg.norm(vectors, axis=1, keepdims=True)
        found = []
        for seed, got in answers.items():
            sims = unit @ unit[pos[seed]]
            sims[pos[seed]] = -np.inf
            exact = {ids[i] for i in np.argsort(-sims)[:25]}
            found.append(len(exact & set(got)) / 25)
        out.append(float(np.mean(found)))
    return out[0], out[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=40, help="real full-length tracks to ingest (default 40)")
    ap.add_argument("--vectors", type=int, default=100_000, help="synthetic library size for the query part (default 100k)")
    ap.add_argument("--requests", type=int, default=200, help="similar_tracks requests per mode (default 200)")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-queries", action="store_true")
    args = ap.parse_args()
    models = REPO / ".cache" / "models"
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    tansu, bootstrap, _ = start_tansu(work)
    pg, milvus = PostgresServer(), MilvusStandalone(work / "milvus")
    pg.start()
    milvus_uri = milvus.start()
    load0 = os.getloadavg()[0]
    try:
        runs = []
        if not args.skip_ingest:
            tracks = real_tracks(args.tracks)
            for workers in (1, 2):
                runs.append(ingest(workers, tracks, work, bootstrap, pg, milvus, milvus_uri, models))
                print(json.dumps(runs[-1]), flush=True)
        modes = []
        if not args.skip_queries:
            client_drop(milvus_uri)
            _, catalog_url = pg.new_database()
            t = time.perf_counter()
            build_vectors(args.vectors, catalog_url, milvus_uri)
            print(f"built {args.vectors} vectors in {time.perf_counter() - t:.0f} s", flush=True)
            for mirror in (True, False):
                modes.append(queries(mirror, args.vectors, args.requests, work, catalog_url, milvus_uri, models))
                modes[-1]["recall"], modes[-1]["recall_held"] = recall(modes[-1].pop("answers"), milvus_uri)
                print(json.dumps(modes[-1]), flush=True)
    finally:
        milvus.kill()
        pg.cleanup()
        stop_tansu(tansu)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n### Scale, {date.today()}, {platform.machine()} with {os.cpu_count()} cores; load average before {load0:.2f}, "
          f"after {os.getloadavg()[0]:.2f}\n")
    if runs:
        print("| ingest workers (1 analysis thread each) | tracks | wall (s) | tracks/hour | tracks per worker | Milvus server CPU (s) |\n"
              "|---|---:|---:|---:|---|---:|")
        for r in runs:
            print(f"| {r['workers']} | {r['tracks']} | {r['wall_s']:.1f} | {r['tracks_per_hour']:,.0f} | {', '.join(map(str, r['shares']))} | {r['milvus_cpu_s']:.1f} |")
        print(f"\nratio 2 workers / 1 worker: {runs[1]['tracks_per_hour'] / runs[0]['tracks_per_hour']:.2f}\n")
    if modes:
        print(f"| similar_tracks from `sidecar api`, {args.vectors:,} vectors | p50 (ms) | p99 (ms) | recall@25 vs exact "
              "(full space) | recall@25 vs exact (held space) | start-up (s) | resident memory (MB) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for m in modes:
            what = "in-memory mirror (default)" if m["mode"] == "mirror" else "Milvus server HNSW (SIDECAR_VECTOR_MIRROR=false)"
            print(f"| {what} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['recall']:.3f} | {m['recall_held']:.3f} | {m['startup_s']:.1f} | {m['rss_mb']:.0f} |")


def client_drop(milvus_uri: str) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_uri)
    for name in client.list_collections():
        client.drop_collection(name)
    client.close()


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()

"""Query latency over HTTP at library scale: p50/p99 per endpoint, at 10k and 100k tracks.

The library is synthetic (clustered vectors for musicnn (200-d) and dsp (52-d), tags and features drawn per
cluster, artists per cluster) and written straight into the catalog and a Milvus Lite file; the sidecar
then serves it as it would a real one (the real HTTP app, engine, mirrors and text search).

    .venv/bin/python scripts/bench_queries.py                 # 10k and 100k, 200 requests per endpoint
    .venv/bin/python scripts/bench_queries.py --sizes 10000 --requests 100
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def build_library(data: Path, n: int, seed: int = 0) -> None:
    from sidecar.catalog import Catalog
    from sidecar.store import VectorStore
    from sidecar.textsearch import MSD_TAGS

    rng = np.random.default_rng(seed)
    clusters = max(8, n // 500)
    which = rng.integers(0, clusters, n)
    ids = [f"{i:032x}" for i in range(n)]
    store = VectorStore(str(data / "milvus.db"))
    for model, dim in (("musicnn", 200), ("dsp", 52)):
        centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 2
        vecs = centres[which] + rng.standard_normal((n, dim)).astype(np.float32)
        store.ensure_collection(model, dim)
        for i in range(0, n, 5000):
            store.upsert(model, [(ids[j], vecs[j], "h") for j in range(i, min(n, i + 5000))])
    store.close()

    Catalog(data / "catalog.sqlite3").close()  # schema
    tag_centres = rng.dirichlet(np.full(len(MSD_TAGS), 0.3), clusters)
    db = sqlite3.connect(data / "catalog.sqlite3")
    now = time.time()
    with db:
        db.executemany(
            "INSERT INTO tracks (track_id, content_hash, duration_s, title, artist, album, created_at, updated_at)"
            " VALUES (?, 'h', 200, ?, ?, ?, ?, ?)",
            [(t, f"Track {i}", f"Artist {which[i] % 400}", f"Album {which[i]}", now, now) for i, t in enumerate(ids)],
        )
        db.executemany("INSERT INTO files (path, track_id, size, mtime_ns) VALUES (?, ?, 1, 1)", [(f"/music/{t}.ogg", t) for t in ids])
        rows = []
        for i, t in enumerate(ids):
            tags = dict(zip(MSD_TAGS, np.clip(tag_centres[which[i]] + rng.normal(0, 0.02, len(MSD_TAGS)), 0, 1).round(3).tolist()))
            feats = {"tempo_bpm": float(rng.normal(80 + 10 * (which[i] % 8), 5)), "loudness_db": float(rng.normal(-15, 3)),
                     "onset_rate": float(rng.gamma(4, 1)), "pulse_clarity": float(rng.random()), "percussiveness": float(rng.random() * 0.5),
                     "brightness": float(rng.normal(2000, 400)), "dynamics_db": float(rng.gamma(3, 2)), "key_strength": float(rng.random()),
                     "scale": "minor" if rng.random() < 0.5 else "major", "key": "C"}
            rows.append((t, "musicnn", "msd-musicnn-1", "h", "done", json.dumps(tags), None, now))
            rows.append((t, "dsp", "1", "h", "done", None, json.dumps(feats), now))
        db.executemany(
            "INSERT INTO embeddings (track_id, model, model_version, content_hash, status, tags, features, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows,
        )
        db.executemany("INSERT INTO listens (user, track_id, played_at) VALUES ('bench', ?, ?)", [(ids[i], now - i * 600) for i in range(50)])
    db.close()


async def measure(data: Path, models_dir: Path, requests: int) -> tuple[dict[str, tuple[float, float]], float, float]:
    import aiohttp

    from sidecar.config import Settings
    from sidecar.service import Sidecar

    t0 = time.perf_counter()
    sc = Sidecar(Settings(music_dir=[], data_dir=data, port=0, reconcile_interval_s=0))
    sc.settings.port = _free_port()
    await sc.start(http=True, watch=False)
    startup = time.perf_counter() - t0
    ids = sc.store.mirrors["musicnn"].ids
    rng = np.random.default_rng(1)
    base = f"http://127.0.0.1:{sc.settings.port}"
    artists = [r["artist"] for r in sc.catalog._q("SELECT DISTINCT artist FROM tracks LIMIT 50")]
    cases = {
        "similar_tracks": lambda: ("GET", f"/api/similar_tracks?item_id={rng.choice(ids)}&n=25", None),
        "recommendations, 1 model": lambda: ("POST", "/api/recommendations", {"seeds": [{"track_id": str(rng.choice(ids))}], "limit": 25}),
        "recommendations, 2-model union": lambda: ("POST", "/api/recommendations", {"seeds": [{"track_id": str(rng.choice(ids))}], "models": ["musicnn", "dsp"], "limit": 25}),
        "recommendations, diversity 0.3": lambda: ("POST", "/api/recommendations", {"seeds": [{"track_id": str(rng.choice(ids))}], "limit": 25, "diversity": 0.3}),
        "recommendations, mode recent": lambda: ("POST", "/api/recommendations", {"mode": "recent", "user": "bench", "limit": 25}),
        "text playlist (tags path)": lambda: ("POST", "/api/recommendations/text", {"text": str(rng.choice(["calm orchestral", "upbeat electronic dance", "dark ambient, no vocals", "jazz piano"])), "method": "tags"}),
        "find_path": lambda: ("GET", f"/api/find_path?start_song_id={rng.choice(ids)}&end_song_id={rng.choice(ids)}&max_steps=25", None),
        "alchemy": lambda: ("POST", "/api/alchemy", {"add": [str(rng.choice(ids)), str(rng.choice(ids))], "subtract": [str(rng.choice(ids))], "n": 25}),
        "sonic_fingerprint": lambda: ("GET", "/api/sonic_fingerprint?user=bench&n=25", None),
        "similar_artists": lambda: ("GET", f"/api/similar_artists?artist={rng.choice(artists).replace(' ', '%20')}&n=10", None),
    }
    out: dict[str, tuple[float, float]] = {}
    try:
        async with aiohttp.ClientSession(base) as http:
            for name, make in cases.items():
                times = []
                for i in range(requests + 5):
                    method, path, body = make()
                    t = time.perf_counter()
                    async with http.request(method, path, json=body) as r:
                        await r.read()
                        status = r.status
                    if i >= 5:  # warm-up
                        times.append(time.perf_counter() - t)
                if status >= 400:
                    out[name] = (float("nan"), float("nan"))
                    continue
                out[name] = (1000 * float(np.percentile(times, 50)), 1000 * float(np.percentile(times, 99)))
    finally:
        rss_mb = _rss_mb()
        await sc.close()
    return out, startup, rss_mb


def _rss_mb() -> float:
    """Resident memory now (the serving process with the library loaded; the build phase is not counted)."""
    import gc

    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--models-dir", type=Path, default=REPO / ".cache" / "models")
    args = ap.parse_args()
    results = {}
    for n in map(int, args.sizes.split(",")):
        work = Path(tempfile.mkdtemp(prefix=f"bench-q-{n}-"))
        try:
            t = time.perf_counter()
            build_library(work, n)
            (work / "models").symlink_to(args.models_dir)
            print(f"built {n} tracks in {time.perf_counter() - t:.0f} s", flush=True)
            results[n] = asyncio.run(measure(work, args.models_dir, args.requests))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    sizes = list(results)
    print(f"\n### Queries over HTTP, {date.today()}, {platform.machine()} with {os.cpu_count()} cores, "
          f"{args.requests} sequential requests per endpoint after 5 warm-up\n")
    print("| endpoint | " + " | ".join(f"{n:,} tracks p50 / p99 (ms)" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in results[sizes[0]][0]:
        cells = []
        for n in sizes:
            p50, p99 = results[n][0][name]
            cells.append("not served" if np.isnan(p50) else f"{p50:.1f} / {p99:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| start-up (open stores, load mirrors and models) | " + " | ".join(f"{results[n][1]:.1f} s" for n in sizes) + " |")
    print("| resident memory while serving | " + " | ".join(f"{results[n][2]:.0f} MB" for n in sizes) + " |")


if __name__ == "__main__":
    main()

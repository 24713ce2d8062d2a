"""Query latency over HTTP at library scale: p50/p99 per endpoint, at 10k and 100k tracks, beside a reference
measured in the same run (a Milvus Lite search per query on the same vectors), a check that the served
similar tracks are the exact nearest ones, and resident memory with one model and with two.

The library is synthetic (clustered vectors for musicnn and dsp at the plugins' dimensions, with an offset and
spreads that differ per dimension, as real ones have, so that their similarity spaces' standardisation matters;
tags and features drawn per cluster, artists per cluster) and written straight into the catalog and a Milvus
Lite file; the sidecar then serves it as it would a real one (the real HTTP app, engine, mirrors in the
plugins' spaces, and text search). Each measurement
runs in a fresh process, so that its resident memory is the serving process's own.

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
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def models() -> dict[str, tuple[int, str, tuple | None]]:
    """model -> (dimension, version, similarity space), as the plugins declare them."""
    from plugins.embedders.dsp import DspEmbedder
    from plugins.embedders.musicnn import MusicnnEmbedder

    mus = MusicnnEmbedder()
    return {"musicnn": (mus.dim, mus.version, mus.space), "dsp": (DspEmbedder.dim, DspEmbedder.version, DspEmbedder.space)}


def clustered_vectors(store, n: int, seed: int = 0):
    """n tracks in clusters (one per 500 tracks), as musicnn and dsp vectors written to `store`, which is closed
    after: (the random generator, to go on with, track ids, each track's cluster, clusters)."""
    rng = np.random.default_rng(seed)
    clusters = max(8, n // 500)
    which = rng.integers(0, clusters, n)
    ids = [f"{i:032x}" for i in range(n)]
    for model, (dim, _, space) in models().items():
        centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 2
        offset, spread = rng.normal(0, 3, dim).astype(np.float32), rng.uniform(0.2, 2, dim).astype(np.float32)
        store.ensure_collection(model, dim, space=space)
        for i in range(0, n, 5000):
            j = slice(i, min(n, i + 5000))
            vecs = offset + spread * (centres[which[j]] + rng.standard_normal((j.stop - i, dim)).astype(np.float32))
            store.upsert(model, [(t, v, "h") for t, v in zip(ids[j], vecs)])
    store.close()
    return rng, ids, which, clusters


def build_library(data: Path, n: int, seed: int = 0) -> None:
    from sidecar.data.catalog import Catalog
    from sidecar.data.store import VectorStore
    from plugins.embedders.musicnn.recipe import MSD_TAGS, MTT_PREFIX, MTT_TAGS

    rng, ids, which, clusters = clustered_vectors(VectorStore(str(data / "milvus.db"), mirror=False), n, seed)
    version = {m: v for m, (_, v, _) in models().items()}

    Catalog(data / "catalog.sqlite3").close()  # schema
    tag_names = list(MSD_TAGS) + [MTT_PREFIX + t for t in MTT_TAGS]  # as the plugin stores them
    tag_centres = rng.dirichlet(np.full(len(tag_names), 0.3), clusters)
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
            tags = dict(zip(tag_names, np.clip(tag_centres[which[i]] + rng.normal(0, 0.02, len(tag_names)), 0, 1).round(3).tolist()))
            feats = {"tempo_bpm": float(rng.normal(80 + 10 * (which[i] % 8), 5)), "loudness_db": float(rng.normal(-15, 3)),
                     "onset_rate": float(rng.gamma(4, 1)), "pulse_clarity": float(rng.random()), "percussiveness": float(rng.random() * 0.5),
                     "brightness": float(rng.normal(2000, 400)), "dynamics_db": float(rng.gamma(3, 2)), "key_strength": float(rng.random()),
                     "scale": "minor" if rng.random() < 0.5 else "major", "key": "C"}
            rows.append((t, "musicnn", version["musicnn"], "h", "done", json.dumps(tags), None, now))
            rows.append((t, "dsp", version["dsp"], "h", "done", None, json.dumps(feats), now))
        db.executemany(
            "INSERT INTO embeddings (track_id, model, model_version, content_hash, status, tags, features, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows,
        )
        db.executemany("INSERT INTO listens (user, track_id, played_at) VALUES ('bench', ?, ?)", [(ids[i], now - i * 600) for i in range(50)])
    db.close()


# Prompts for the text playlist: a few repeated ones (their clause vectors are cached after the first time),
# and new wordings made from these words, each used once (the sentence encoder runs on every request).
TEXT_PROMPTS = ("calm orchestral", "upbeat electronic dance", "dark ambient, no vocals", "jazz piano")
MOODS = ("calm", "upbeat", "dark", "bright", "melancholic", "driving", "quiet", "aggressive", "dreamy", "epic", "gentle", "frantic")
KINDS = ("orchestral", "techno", "jazz", "folk songs", "piano", "metal", "ambient", "hip hop", "film score", "house", "blues", "rock")
WITHOUT = ("", ", no vocals", " without drums", ", not too loud", " with female vocals", ", no guitar")


def new_wordings(n: int, seed: int = 2) -> list[str]:
    rng = np.random.default_rng(seed)
    every = [f"{m} {k}{w}" for m in MOODS for k in KINDS for w in WITHOUT]
    return [every[i] for i in rng.permutation(len(every))[:n]]


async def measure(data: Path, requests: int, embedders: list[str], reference: bool) -> dict:
    import aiohttp

    from sidecar.config import Settings
    from sidecar.run import start_http
    from sidecar.service import Sidecar
    from sidecar.data.store import collection_name

    t0 = time.perf_counter()
    sc = Sidecar(Settings(music_dir=[], data_dir=data, port=_free_port(), reconcile_interval_s=0, embedders=embedders))
    await sc.start(watch=False)
    runner = await start_http(sc)
    startup = time.perf_counter() - t0
    ids = sc.store.mirrors["musicnn"].ids
    rng = np.random.default_rng(1)
    base = f"http://127.0.0.1:{sc.settings.port}"
    artists = [r["artist"] for r in sc.catalog._q("SELECT DISTINCT artist FROM tracks LIMIT 50")]
    fresh = iter(new_wordings(requests + 5))
    cases = {
        "similar_tracks": lambda: ("GET", f"/api/similar_tracks?item_id={rng.choice(ids)}&n=25", None),
        "recommendations, 1 model": lambda: ("POST", "/api/recommendations", {"seeds": [{"track_id": str(rng.choice(ids))}], "limit": 25}),
        "recommendations, 2-model union": lambda: ("POST", "/api/recommendations", {"seeds": [{"track_id": str(rng.choice(ids))}], "models": ["musicnn", "dsp"], "limit": 25}),
        "recommendations, diversity 0.3": lambda: ("POST", "/api/recommendations", {"seeds": [{"track_id": str(rng.choice(ids))}], "limit": 25, "diversity": 0.3}),
        "recommendations, mode recent": lambda: ("POST", "/api/recommendations", {"mode": "recent", "user": "bench", "limit": 25}),
        "text playlist (tags path), 4 prompts repeated": lambda: ("POST", "/api/recommendations/text", {"text": str(rng.choice(TEXT_PROMPTS)), "method": "tags"}),
        "text playlist (tags path), new wording each time": lambda: ("POST", "/api/recommendations/text", {"text": next(fresh), "method": "tags"}),
        "find_path": lambda: ("GET", f"/api/find_path?start_song_id={rng.choice(ids)}&end_song_id={rng.choice(ids)}&max_steps=25", None),
        "alchemy": lambda: ("POST", "/api/alchemy", {"add": [str(rng.choice(ids)), str(rng.choice(ids))], "subtract": [str(rng.choice(ids))], "n": 25}),
        "sonic_fingerprint": lambda: ("GET", "/api/sonic_fingerprint?user=bench&n=25", None),
        "similar_artists": lambda: ("GET", f"/api/similar_artists?artist={rng.choice(artists).replace(' ', '%20')}&n=10", None),
    }
    if "dsp" not in embedders:
        del cases["recommendations, 2-model union"]
    out: dict = {"startup_s": startup, "latency_ms": {}, "rss_started_mb": _rss_mb()}
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
                out["latency_ms"][name] = (
                    None if status >= 400 else (1000 * float(np.percentile(times, 50)), 1000 * float(np.percentile(times, 99)))
                )
                out.setdefault("rss_after_mb", {})[name] = _rss_mb()  # what each kind of request leaves behind
            out["rss_mb"] = _rss_mb()
            out["peak_rss_mb"] = _rss_mb("VmHWM")  # serving's own: the reference below has Milvus Lite load the collection
            if reference:
                out.update(await check_similar(http, sc, collection_name("musicnn"), rng.choice(ids, 50, replace=False)))
    finally:
        out.setdefault("peak_rss_mb", _rss_mb("VmHWM"))
        out["peak_with_reference_mb"] = _rss_mb("VmHWM")
        await runner.cleanup()
        await sc.close()
    return out


async def check_similar(http, sc, collection: str, seeds) -> dict:
    """For each seed: the served similar tracks against an exact float64 brute force over the mirror's vectors
    (the seeds' checked against Milvus's raw ones in the model's space, as the mirror holds it: projected), and Milvus Lite's own search (timed: the
    reference) on the same raw vectors: by raw cosine, so its top 25 differ where the model has a space."""
    client, mirror = sc.store.client, sc.store.mirrors["musicnn"]
    t = time.perf_counter()
    await asyncio.to_thread(client.load_collection, collection)  # the sidecar released it: the mirror serves reads
    load_s = time.perf_counter() - t
    unit = mirror.vectors().astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    stored = {r["track_id"]: np.array(r["vector"], np.float32) for r in client.get(collection, ids=[str(x) for x in seeds])}
    milvus_ms, recall_exact, recall_milvus, max_gap = [], [], [], 0.0
    for seed in map(str, seeds):
        async with http.get(f"/api/similar_tracks?item_id={seed}&n=25") as r:
            served = await r.json()
        got = [x["item_id"] for x in served]
        sp = mirror.space
        in_space = stored[seed] if sp is None else sp.lift(sp.project(sp.transform(stored[seed])))[0]  # as held
        assert np.allclose(in_space, mirror.get([seed])[seed], atol=1e-5), "the mirror differs from Milvus"
        q = in_space.astype(np.float64) / np.linalg.norm(in_space)
        sims = unit @ q
        sims[mirror.pos[seed]] = -np.inf
        exact = [mirror.ids[i] for i in np.argsort(-sims, kind="stable")[:25]]
        recall_exact.append(len(set(got) & set(exact)) / 25)
        max_gap = max(max_gap, max(abs((1 - x["distance"]) - sims[mirror.pos[x["item_id"]]]) for x in served))
        t = time.perf_counter()
        hits = client.search(collection, data=[stored[seed].tolist()], limit=26, output_fields=[], search_params={"metric_type": "COSINE"})
        milvus_ms.append(1000 * (time.perf_counter() - t))
        theirs = [h.id for h in hits[0] if h.id != seed][:25]
        recall_milvus.append(len(set(got) & set(theirs)) / 25)
    await asyncio.to_thread(client.release_collection, collection)
    return {
        "milvus_load_s": load_s,
        "milvus_search_ms": (float(np.percentile(milvus_ms, 50)), float(np.percentile(milvus_ms, 99))),
        "recall_vs_exact": float(np.mean(recall_exact)), "min_recall_vs_exact": float(np.min(recall_exact)),
        "recall_vs_milvus": float(np.mean(recall_milvus)), "max_similarity_error": max_gap, "checked": len(seeds),
    }


def run_child(data: Path, requests: int, embedders: list[str], reference: bool) -> dict:
    """measure() in a fresh process, so that resident memory counts only what serving this library takes."""
    cmd = [sys.executable, __file__, "--child", str(data), "--requests", str(requests), "--embedders", ",".join(embedders)]
    done = subprocess.run(cmd + (["--reference"] if reference else []), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rss_mb(field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or at its highest (VmHWM), of this serving process."""
    import gc

    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
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
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # measure a built library in this process
    ap.add_argument("--embedders", default="musicnn,dsp", help=argparse.SUPPRESS)
    ap.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(REPO))
        print(json.dumps(asyncio.run(measure(args.child, args.requests, args.embedders.split(","), args.reference))))
        return
    results, one_model = {}, {}
    for n in map(int, args.sizes.split(",")):
        work = Path(tempfile.mkdtemp(prefix=f"bench-q-{n}-"))
        try:
            t = time.perf_counter()
            build_library(work, n)
            (work / "models").symlink_to(args.models_dir)
            print(f"built {n} tracks in {time.perf_counter() - t:.0f} s", flush=True)
            results[n] = run_child(work, args.requests, ["musicnn", "dsp"], reference=True)
            one_model[n] = run_child(work, max(20, args.requests // 4), ["musicnn"], reference=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    sizes = list(results)
    print(f"\n### Queries over HTTP, {date.today()}, {platform.machine()} with {os.cpu_count()} cores, "
          f"{args.requests} sequential requests per endpoint after 5 warm-up\n")
    print("| endpoint | " + " | ".join(f"{n:,} tracks p50 / p99 (ms)" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in results[sizes[0]]["latency_ms"]:
        cells = [(lambda v: "not served" if v is None else f"{v[0]:.1f} / {v[1]:.1f}")(results[n]["latency_ms"][name]) for n in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")

    def row(label: str, cell) -> None:
        print(f"| {label} | " + " | ".join(cell(n) for n in sizes) + " |")

    row("reference: Milvus Lite search, top 25, same vectors (in process, no HTTP)",
        lambda n: "{:.1f} / {:.1f}".format(*results[n]["milvus_search_ms"]))
    row("similar tracks: recall@25 against exact float64 brute force (mean, worst)",
        lambda n: f"{results[n]['recall_vs_exact']:.3f}, {results[n]['min_recall_vs_exact']:.3f} ({results[n]['checked']} seeds)")
    row("similar tracks: overlap with Milvus Lite's own top 25 (raw cosine, not the space)", lambda n: f"{results[n]['recall_vs_milvus']:.3f}")
    row("similar tracks: largest similarity error against float64", lambda n: f"{results[n]['max_similarity_error']:.1e}")
    row("start-up (open stores, load mirrors and models)", lambda n: f"{results[n]['startup_s']:.1f} s")
    row("resident memory while serving, musicnn + dsp (peak)", lambda n: f"{results[n]['rss_mb']:.0f} MB ({results[n]['peak_rss_mb']:.0f})")
    row("resident memory while serving, musicnn only (peak)", lambda n: f"{one_model[n]['rss_mb']:.0f} MB ({one_model[n]['peak_rss_mb']:.0f})")
    row("peak resident memory once the reference has had Milvus Lite load the collection", lambda n: f"{results[n]['peak_with_reference_mb']:.0f} MB")


if __name__ == "__main__":
    main()

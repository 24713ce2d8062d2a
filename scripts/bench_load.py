"""Load: similar-track latency over loopback, with and without a re-embed running.

The real `sidecar serve` runs as a subprocess on real music (the test suite's 30-second excerpts of the demo,
Wesnoth and Nexuiz tracks, analysed by `sidecar scan`), optionally with synthetic tracks added straight into
its catalog and Milvus file so that each search covers a library of realistic size (they have no audio, so
the re-embed does not touch them). A load generator (aiohttp, 1 then 4 clients in a closed loop)
asks GET /api/similar_tracks?n=25 for random tracks: first with nothing else running, then while
POST /api/batch/start re-embeds every real track with the real models (MusiCNN and the DSP analysis), which
keeps both cores busy.

    .venv/bin/python scripts/bench_load.py                         # 100,000 tracks, 1 then 4 clients, 20 s each
    .venv/bin/python scripts/bench_load.py --extra 0 --concurrency 8
    .venv/bin/python scripts/bench_load.py --env SIDECAR_INGEST_NICE=0   # compare a setting of the server
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import CACHE  # noqa: E402
from tests.sidecar_process import SidecarProcess  # noqa: E402


def analyse(music: Path, data: Path, models_dir: Path) -> None:
    """`sidecar scan`, as a user would run it, then a check that every file was analysed."""
    import subprocess

    data.mkdir(parents=True, exist_ok=True)
    (data / "models").symlink_to(models_dir)
    done = subprocess.run([sys.executable, "-m", "sidecar.cli", "scan", str(music), "--data-dir", str(data)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sidecar scan failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def add_synthetic(data: Path, n: int, seed: int = 0) -> None:
    """n tracks with clustered vectors around the real ones, written into the catalog and Milvus directly."""
    from sidecar.data.store import VectorStore

    rng = np.random.default_rng(seed)
    ids = [f"{i:032x}" for i in range(n)]
    now = time.time()
    store = VectorStore(str(data / "milvus.db"))
    try:
        for model, dim in (("musicnn", 200), ("dsp", 52)):
            store.ensure_collection(model, dim)
            real = store.mirrors[model].matrix
            centres = real[rng.integers(0, len(real), n)]
            vecs = centres + rng.standard_normal((n, dim)).astype(np.float32) * real.std(axis=0) * 0.5
            for i in range(0, n, 5000):
                store.upsert(model, [(ids[j], vecs[j], "synthetic") for j in range(i, min(n, i + 5000))])
    finally:
        store.close()
    db = sqlite3.connect(data / "catalog.sqlite3")
    with db:
        db.executemany(
            "INSERT INTO tracks (track_id, content_hash, duration_s, title, artist, album, created_at, updated_at)"
            " VALUES (?, 'synthetic', 200, ?, ?, ?, ?, ?)",
            [(t, f"Synthetic {i}", f"Artist {i % 997}", f"Album {i % 4999}", now, now) for i, t in enumerate(ids)],
        )
        db.executemany("INSERT INTO files (path, track_id, size, mtime_ns) VALUES (?, ?, 1, 1)",
                       [(f"/synthetic/{t}.ogg", t) for t in ids])
        db.executemany(
            "INSERT INTO embeddings (track_id, model, model_version, content_hash, status, updated_at)"
            " VALUES (?, ?, 'synthetic', 'synthetic', 'done', ?)", [(t, m, now) for t in ids for m in ("musicnn", "dsp")],
        )
    db.close()


async def load(base: str, ids: list[str], concurrency: int, seconds: float, keep_going=None) -> dict:
    """`concurrency` clients asking for similar tracks back to back for `seconds` (or until keep_going() is
    false); latency per request, from sending to the last byte."""
    import aiohttp

    rng = np.random.default_rng(3)
    times: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline and (keep_going is None or keep_going()):
            t = time.perf_counter()
            async with http.get(f"/api/similar_tracks?item_id={ids[rng.integers(len(ids))]}&n=25") as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            times.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    ms = 1000 * np.array(times)
    return {"requests": len(times), "per_s": len(times) / wall, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max()), "errors": errors, "wall_s": wall}


async def with_replay(sc: SidecarProcess, ids: list[str], concurrency: list[int], seconds: float) -> tuple[dict, dict, dict]:
    import aiohttp

    base = f"http://127.0.0.1:{sc.port}"
    state = {"status": "running"}
    async with aiohttp.ClientSession(base) as http:
        async with http.post("/api/batch/start", json={"models": ["musicnn", "dsp"]}) as r:
            started = await r.json()
            assert r.status == 202, started

        async def watch() -> None:
            while state["status"] == "running":
                await asyncio.sleep(0.5)
                async with http.get("/api/batch/progress") as r:
                    state.update(await r.json())

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(1.0)  # let the replay's consumer join and the models start
        before = dict(state)
        result = {c: await load(base, ids, c, seconds, keep_going=lambda: state["status"] == "running") for c in concurrency}
        after = dict(state)
        if state["status"] == "running":
            async with http.post("/api/batch/cancel") as r:
                await r.read()
        watcher.cancel()
    return result, before, after


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--music", type=Path, default=CACHE / "excerpts", help="folder of real tracks to analyse and re-embed")
    ap.add_argument("--extra", type=int, default=100_000, help="synthetic tracks added for scale")
    ap.add_argument("--concurrency", default="1,4", help="clients at once, one phase each (comma-separated)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--models-dir", type=Path, default=CACHE / "models")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server, e.g. SIDECAR_INGEST_WORKERS=1")
    ap.add_argument("--keep", type=Path, help="build the library here once and reuse it on later runs")
    args = ap.parse_args()
    clients = [int(c) for c in args.concurrency.split(",")]
    tracks = sorted(p for p in args.music.glob("*") if p.suffix in (".ogg", ".mp3", ".opus", ".flac"))
    if not tracks:
        raise SystemExit(f"no music in {args.music}: run the test suite once (it makes the excerpts) or pass --music")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-load-"))
    music, data = work / "music", work / "data"
    try:
        if not (data / "catalog.sqlite3").exists():
            music.mkdir(parents=True, exist_ok=True)
            for t in tracks:
                shutil.copy2(t, music / t.name)
            t0 = time.perf_counter()
            analyse(music, data, args.models_dir)
            print(f"analysed {len(tracks)} real tracks in {time.perf_counter() - t0:.0f} s", flush=True)
            if args.extra:
                add_synthetic(data, args.extra)
        db = sqlite3.connect(data / "catalog.sqlite3")
        ids = [r[0] for r in db.execute("SELECT track_id FROM embeddings WHERE model = 'musicnn' AND status = 'done'")]
        real = db.execute("SELECT COUNT(*) FROM tracks WHERE content_hash != 'synthetic'").fetchone()[0]
        db.close()
        env = dict(e.split("=", 1) for e in args.env)
        sc = SidecarProcess(music, data, args.models_dir, work / "serve.log", SIDECAR_RECONCILE_INTERVAL_S="0", **env)
        t0 = time.perf_counter()
        sc.start(timeout=300)
        sc.wait_idle(timeout=300)
        print(f"serving {len(ids):,} tracks ({real} real) after {time.perf_counter() - t0:.0f} s", flush=True)
        try:
            base = f"http://127.0.0.1:{sc.port}"
            asyncio.run(load(base, ids, max(clients), 3.0))  # warm-up
            idle = {c: asyncio.run(load(base, ids, c, args.seconds)) for c in clients}
            busy, before, after = asyncio.run(with_replay(sc, ids, clients, args.seconds))
        finally:
            sc.stop()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    embedded = (after.get("embedded") or 0) - (before.get("embedded") or 0)
    busy_s = sum(r["wall_s"] for r in busy.values())
    print(f"\n### Load on loopback, {date.today()}, {platform.machine()} with {os.cpu_count()} cores: {len(ids):,} tracks"
          f" ({real} real), GET /api/similar_tracks?n=25 from clients in a closed loop, {args.seconds:.0f} s a phase"
          + (f", server settings {' '.join(args.env)}" if args.env else "") + "\n")
    print("| phase | clients | requests | requests/s | p50 (ms) | p99 (ms) | max (ms) | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in (("nothing else running", idle), ("re-embed running (musicnn + dsp)", busy)):
        for c, r in runs.items():
            print(f"| {name} | {c} | {r['requests']:,} | {r['per_s']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} | {r['errors']} |")
    print(f"\nThe re-embed analysed {embedded} tracks during the {busy_s:.0f} s of the second phase "
          f"({after.get('processed')}/{after.get('total')} events when it ended, status {after.get('status')}).")


if __name__ == "__main__":
    main()

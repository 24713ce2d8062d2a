"""Ingest benchmark on real tracks: per-stage time (decode, resample, mel, model, DSP, store) and tracks/hour,
both stage by stage on one thread and through the real service pipeline (`sidecar scan` in-process).

    .venv/bin/python scripts/bench_ingest.py                 # the demo library (fetched if needed)
    .venv/bin/python scripts/bench_ingest.py ~/Music/some-album --limit 20

Prints a Markdown table for docs/PERFORMANCE.md.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def stage_timings(tracks: list[Path], models_dir: Path, db: Path) -> tuple[dict[str, list[float]], float]:
    import torch

    from plugins.embedders.dsp import DspEmbedder
    from plugins.embedders.musicnn import MusicnnEmbedder
    from plugins.embedders.musicnn.preprocess import audio_to_patches
    from sidecar.audio import decode
    from sidecar.store import VectorStore

    torch.set_num_threads(1)
    musicnn, dsp = MusicnnEmbedder(), DspEmbedder()
    musicnn.prepare(models_dir)
    musicnn.load(models_dir)
    store = VectorStore(str(db))
    store.ensure_collection("musicnn", musicnn.dim)
    store.ensure_collection("dsp", dsp.dim)
    t: dict[str, list[float]] = {k: [] for k in ("decode", "resample", "mel", "musicnn model", "dsp", "store")}
    audio_s = 0.0
    for i, path in enumerate(tracks):
        t0 = time.perf_counter()
        audio = decode(path)
        t1 = time.perf_counter()
        a16, a22 = audio.at(16000), audio.at(22050)
        t2 = time.perf_counter()
        patches = audio_to_patches(a16)
        t3 = time.perf_counter()
        out = musicnn.infer(patches)
        t4 = time.perf_counter()
        d = dsp.embed(a22)
        t5 = time.perf_counter()
        store.upsert("musicnn", [(f"t{i}", out["dense_preact"].mean(axis=0), audio.content_hash)])
        store.upsert("dsp", [(f"t{i}", d.vector, audio.content_hash)])
        t6 = time.perf_counter()
        for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            t[k].append(v)
        audio_s += audio.duration_s
    store.close()
    return t, audio_s


async def pipeline_wall(tracks: list[Path], models_dir: Path, work: Path, workers: int, threads: int) -> float:
    from sidecar.config import Settings
    from sidecar.service import Sidecar

    music = work / f"music-{workers}-{threads}"
    music.mkdir()
    for p in tracks:
        os.symlink(p, music / p.name)
    data = work / f"data-{workers}-{threads}"
    data.mkdir()
    (data / "models").symlink_to(models_dir)
    sc = Sidecar(Settings(music_dir=[music], data_dir=data, ingest_workers=workers, torch_threads=threads, reconcile_interval_s=0))
    await sc.open()
    try:
        await sc.reconciler.run([music])
        t0 = time.perf_counter()
        async with sc.bus.consumer(sc.settings.kafka_group) as consumer:
            await sc.worker.consume(consumer, asyncio.Event(), until_caught_up=True)
        wall = time.perf_counter() - t0
        assert sc.worker.stats.embedded == len(tracks), sc.worker.stats
        return wall
    finally:
        await sc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path, help="folder of tracks (default: the demo library)")
    ap.add_argument("--limit", type=int, default=0, help="at most this many tracks")
    ap.add_argument("--models-dir", type=Path, default=REPO / ".cache" / "models")
    args = ap.parse_args()

    if args.folder is None:
        from sidecar.demo import fetch_demo_library

        tracks = fetch_demo_library(REPO / ".cache" / "music")
    else:
        tracks = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in {".ogg", ".mp3", ".flac", ".opus", ".wav"})
    if args.limit:
        tracks = tracks[: args.limit]
    if not tracks:
        raise SystemExit("no tracks found")
    args.models_dir.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        stages, audio_s = stage_timings(tracks, args.models_dir, work / "stages.db")
        walls = {(w, th): asyncio.run(pipeline_wall(tracks, args.models_dir, work, w, th)) for w, th in ((1, 1), (2, 1), (1, 2))}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = len(tracks)
    print(f"## Ingest, {date.today()}, {platform.machine()} with {os.cpu_count()} cores, "
          f"{n} real tracks, {audio_s / 60:.1f} min of audio (mean {audio_s / n:.0f} s)\n")
    print("| stage (one thread) | median per track (s) | total (s) | share |")
    print("|---|---|---|---|")
    total = sum(sum(v) for v in stages.values())
    for k, v in stages.items():
        print(f"| {k} | {statistics.median(v):.3f} | {sum(v):.2f} | {100 * sum(v) / total:.0f}% |")
    print(f"| **all stages** | | {total:.2f} | 100% |\n")
    print(f"Stage sum, sequential: **{3600 * n / total:,.0f} tracks/hour**\n")
    print("| service pipeline (`sidecar scan` path) | wall (s) | tracks/hour |")
    print("|---|---|---|")
    for (w, th), wall in walls.items():
        print(f"| ingest_workers={w}, torch_threads={th} | {wall:.2f} | {3600 * n / wall:,.0f} |")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

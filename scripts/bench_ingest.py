"""Ingest benchmark on real full-length tracks (issue 8: ingest speed, parity, freshness). One command prints:

1. the reference: a straightforward sequential pipeline (librosa.load at 16 kHz, mel, every patch one at a
   time through the float32 PyTorch model, librosa.load at 22.05 kHz for the DSP analysis, store), with its
   per-stage medians and tracks/hour; its mean patch vector is the full-track float32 analysis;
2. the service pipeline as `sidecar scan` runs it (reconcile walk -> embedded event log -> ingest workers ->
   Milvus Lite + catalog) with the default settings, on the same files: wall time, tracks/hour, and the
   process's CPU seconds per track;
3. the per-stage medians of the service's own code path, track by track on one thread;
4. parity of the service's analysis (the patch budgets) with the whole-track float32 one (MSD_musicnn and
   MTT_vgg on every patch, outside the reference's timings): cosine of each MusiCNN vector to the whole-track
   vector in the store's similarity space (statistics of these tracks), min / median over the set, the same
   for the MSD patch mean alone (today's figure), the agreement of the 10 nearest neighbours, and the largest
   change of a tag probability or a DSP feature;
5. freshness: a running sidecar (watcher, HTTP API) gets files copied into its music folder one at a time;
   the time until `GET /api/similar_tracks` answers for the new track, and that time minus the track's own
   decode and analysis time.

    .venv/bin/python scripts/bench_ingest.py                   # 59 full-length tracks from Debian packages
    .venv/bin/python scripts/bench_ingest.py ~/Music/album --limit 20
    .venv/bin/python scripts/bench_ingest.py --limit 8 --skip-reference   # quick look (no parity figures)

The machine should be otherwise idle (check `uptime`): the wall-clock figures assume both cores are ours.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SUFFIXES = {".ogg", ".mp3", ".flac", ".opus", ".wav"}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class BusyThreads:
    """Samples how many of this process's threads are running or runnable (Linux /proc), every 50 ms: about
    2 means the pipeline keeps both cores busy, whatever share of them other work on the machine leaves it."""

    def __init__(self) -> None:
        import threading

        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tasks = Path(f"/proc/{os.getpid()}/task")
        while not self._stop.wait(0.05):
            n = 0
            for t in tasks.iterdir():
                try:
                    n += (t / "stat").read_text().rsplit(")", 1)[1].split()[0] == "R"
                except (OSError, IndexError):
                    pass
            self.samples.append(n - 1)  # not counting this sampler

    def __enter__(self) -> "BusyThreads":
        if Path("/proc/self/task").is_dir():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------ 1. reference
def reference(tracks: list[Path], models_dir: Path, db: Path) -> dict:
    """The straightforward pipeline. Returns per-stage times, wall, full-track vectors, tags and DSP features."""
    import librosa
    import torch

    from plugins.embedders.dsp import DspEmbedder
    from plugins.embedders.musicnn import weights_path
    from plugins.embedders.musicnn.networks import load_weights, network_outputs
    from plugins.embedders.musicnn.preprocess import SAMPLE_RATE, log_mel, to_patches
    from plugins.embedders.musicnn.recipe import MSD, VGG
    from sidecar.data.store import VectorStore

    torch.set_num_threads(os.cpu_count() or 1)
    model, vgg = (load_weights(weights_path(models_dir, net), net) for net in (MSD, VGG))
    untimed = 0.0
    dsp = DspEmbedder()
    store = VectorStore(str(db))
    store.ensure_collection("musicnn", 200)
    store.ensure_collection("dsp", dsp.dim)
    stages = {k: [] for k in ("load 16 kHz", "mel", "musicnn, one patch at a time", "load 22.05 kHz", "dsp", "store")}
    out = {"msd": [], "vgg": [], "features": []}  # per track: MSD_musicnn's and MTT_vgg's outputs on every patch
    t_start = time.perf_counter()
    for i, path in enumerate(tracks):
        t = [time.perf_counter()]
        y16, _ = librosa.load(path, sr=SAMPLE_RATE)
        t.append(time.perf_counter())
        patches = to_patches(log_mel(y16))
        t.append(time.perf_counter())
        with torch.inference_mode():
            outs = [model(torch.from_numpy(p[None])) for p in patches]
        dense = torch.cat([o.dense_preact for o in outs]).numpy()
        taggram = torch.cat([o.taggram for o in outs]).numpy()
        t.append(time.perf_counter())
        y22, _ = librosa.load(path, sr=dsp.sample_rate)
        t.append(time.perf_counter())
        d = dsp.embed(y22)
        t.append(time.perf_counter())
        store.upsert("musicnn", [(f"t{i}", dense.mean(axis=0), "")])
        store.upsert("dsp", [(f"t{i}", d.vector, "")])
        t.append(time.perf_counter())
        for k, a, b in zip(stages, t, t[1:]):
            stages[k].append(b - a)
        # not timed (the reference stays the yardstick it was): MTT_vgg on every patch, for the whole-track vector
        t0 = time.perf_counter()
        out["vgg"].append(network_outputs(vgg, patches, batch=16))
        untimed += time.perf_counter() - t0
        out["msd"].append({"dense_preact": dense, "taggram": taggram})
        out["features"].append(d.features)
        print(f"  reference {i + 1}/{len(tracks)} {path.name}", file=sys.stderr, flush=True)
    out["wall"] = time.perf_counter() - t_start - untimed
    out["stages"] = stages
    store.close()
    return out


# ------------------------------------------------------------------------------------------ 2. service pipeline
def make_library(tracks: list[Path], folder: Path) -> None:
    """Hard links (or copies) in a folder of their own: symbolic links out of the music folder are refused."""
    folder.mkdir(parents=True)
    for p in tracks:
        try:
            os.link(p, folder / p.name)
        except OSError:
            shutil.copy2(p, folder / p.name)


async def service_pipeline(tracks: list[Path], models_dir: Path, work: Path, **settings) -> dict:
    from sidecar.config import Settings
    from sidecar.service import Sidecar

    tag = "-".join(f"{k}{v}" for k, v in settings.items()) or "defaults"
    music, data = work / f"music-{tag}", work / f"data-{tag}"
    make_library(tracks, music)
    data.mkdir()
    (data / "models").symlink_to(models_dir)
    sc = Sidecar(Settings(music_dir=[music], data_dir=data, reconcile_interval_s=0, **settings))
    await sc.open()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # the peak resident memory from here on (Linux)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        with BusyThreads() as busy:
            await sc.reconciler.run([music])
            async with sc.bus.consumer(sc.settings.kafka_group) as consumer:
                await sc.worker.consume(consumer, asyncio.Event(), until_caught_up=True)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        assert sc.worker.stats.embedded == len(tracks), sc.worker.stats
        ids = [sc.catalog.file(str(music / p.name)).track_id for p in tracks]
        models = [sc.catalog.track(i)["models"] for i in ids]
        peak = next(int(x.split()[1]) / 1024 for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return {
            "wall": wall, "cpu": cpu, "busy": busy.mean, "peak_mb": peak, "settings": sc.settings, "musicnn": sc.embedders.ready["musicnn"],
            "tags": [np.array(list(m["musicnn"]["tags"].values())) for m in models],
            "features": [m["dsp"]["features"] for m in models],
        }
    finally:
        await sc.close()


# ------------------------------------------------------------------------------------------ 3. service stages
def service_stages(tracks: list[Path], models_dir: Path, db: Path, musicnn_options: dict) -> tuple[dict[str, list[float]], list]:
    """The service's own functions, track by track on one thread (the ingest worker runs two of these), and the
    MusiCNN vectors they make (`MusicnnEmbedder.embed` in steps: the service's vectors)."""
    from plugins.embedders.dsp import DspEmbedder
    from plugins.embedders.musicnn import MusicnnEmbedder
    from plugins.embedders.musicnn.preprocess import audio_to_patches
    from plugins.embedders.musicnn.recipe import VGG, track_vector, vgg_patches
    from sidecar.pipeline.audio import decode
    from sidecar.data.store import VectorStore

    musicnn, dsp = MusicnnEmbedder(), DspEmbedder()
    musicnn.configure(musicnn_options)
    musicnn.load(models_dir)
    store = VectorStore(str(db))
    store.ensure_collection("musicnn", musicnn.dim)
    store.ensure_collection("dsp", dsp.dim)
    names = ("decode (+ hash, tags)", "resample to 16 kHz", "mel (chosen patches)", "MSD_musicnn model", "MTT_vgg model",
             "resample to 22.05 kHz", "dsp", "store")  # fmt: skip
    stages: dict[str, list[float]] = {k: [] for k in names}
    vectors = []
    for i, path in enumerate(tracks):
        t = [time.perf_counter()]
        audio = decode(path)
        t.append(time.perf_counter())
        a16 = audio.at(16000)
        t.append(time.perf_counter())
        patches = audio_to_patches(a16, musicnn.options.patches)
        t.append(time.perf_counter())
        msd = musicnn.infer(patches)
        t.append(time.perf_counter())
        vgg = musicnn.infer(patches[vgg_patches(len(patches), musicnn.options.vgg_patches)], VGG) if VGG in musicnn.networks else None
        t.append(time.perf_counter())
        a22 = audio.at(dsp.sample_rate)
        t.append(time.perf_counter())
        d = dsp.embed(a22)
        t.append(time.perf_counter())
        vectors.append(track_vector(msd, vgg))
        store.upsert("musicnn", [(f"t{i}", vectors[-1], audio.content_hash)])
        store.upsert("dsp", [(f"t{i}", d.vector, audio.content_hash)])
        t.append(time.perf_counter())
        for k, a, b in zip(stages, t, t[1:]):
            stages[k].append(b - a)
    store.close()
    return stages, vectors


# ------------------------------------------------------------------------------------------ 5. freshness
async def freshness(tracks: list[Path], models_dir: Path, work: Path, n: int) -> list[dict]:
    import aiohttp

    from sidecar import metrics
    from sidecar.config import Settings
    from sidecar.run import start_http
    from sidecar.service import Sidecar

    def stage_sum(label: str) -> float:
        return metrics.STAGE_SECONDS.labels(label)._sum.get()

    music, data = work / "fresh-music", work / "fresh-data"
    music.mkdir()
    data.mkdir()
    (data / "models").symlink_to(models_dir)
    sc = Sidecar(Settings(music_dir=[music], data_dir=data, port=0, reconcile_interval_s=0))
    await sc.start()
    runner = await start_http(sc)
    out = []
    try:
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as http:
            while not await sc.is_idle():
                await asyncio.sleep(0.05)
            for path in tracks[:n]:
                labels = ("decode", *sc.embedders.ready)
                before = {k: stage_sum(k) for k in labels}
                t0 = time.perf_counter()
                shutil.copyfile(path, music / path.name)  # written into the watched folder now
                track_id = None
                while True:
                    await asyncio.sleep(0.02)
                    if track_id is None:
                        async with http.get(f"{base}/api/tracks", params={"query": path.stem}) as r:
                            found = (await r.json())["tracks"]
                        track_id = found[0]["track_id"] if found else None
                        if track_id is None:
                            continue
                    ok = True
                    for model in sc.embedders.ready:
                        async with http.get(f"{base}/api/similar_tracks", params={"item_id": track_id, "model": model}) as r:
                            ok = ok and r.status == 200
                    if ok:
                        break
                    if time.perf_counter() - t0 > 120:
                        raise RuntimeError(f"{path.name} was not searchable after 120 s")
                latency = time.perf_counter() - t0
                analysis = sum(stage_sum(k) - before[k] for k in labels)
                out.append({"track": path.name, "latency": latency, "analysis": analysis})
                while not await sc.is_idle():
                    await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
        await sc.close()
    return out


# ------------------------------------------------------------------------------------------ report
def table(stages: dict[str, list[float]]) -> float:
    total = sum(sum(v) for v in stages.values())
    print("| stage | median per track (s) | total (s) | share |")
    print("|---|---:|---:|---:|")
    for k, v in stages.items():
        print(f"| {k} | {statistics.median(v):.3f} | {sum(v):.2f} | {100 * sum(v) / total:.0f}% |")
    print(f"| **all stages** | | {total:.2f} | 100% |\n")
    return total


def neighbour_agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    k = min(k, len(a) - 1)
    """Mean share of each track's k nearest neighbours (cosine) under `a` that are also its k nearest under `b`."""
    def knn(m: np.ndarray) -> np.ndarray:
        s = unit(m) @ unit(m).T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1)[:, :k]

    na, nb = knn(a), knn(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def default_tracks() -> list[Path]:
    from sidecar.demo import DEMO_PACKAGES, ELECTRONIC_PACKAGE, ORCHESTRAL_PACKAGE, fetch_demo_library

    return fetch_demo_library(REPO / ".cache" / "music", (*DEMO_PACKAGES, ORCHESTRAL_PACKAGE, ELECTRONIC_PACKAGE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path, help="folder of tracks (default: 59 tracks of Debian game music)")
    ap.add_argument("--limit", type=int, default=0, help="at most this many tracks")
    ap.add_argument("--models-dir", type=Path, default=REPO / ".cache" / "models")
    ap.add_argument("--skip-reference", action="store_true", help="no reference run (and so no parity figures)")
    ap.add_argument("--fresh", type=int, default=5, help="files copied one at a time for the freshness figure (0: none)")
    ap.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                    help="a service setting for the pipeline run, e.g. ingest_workers=1 (repeatable)")
    args = ap.parse_args()

    if args.folder is None:
        tracks = default_tracks()
    else:
        tracks = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    tracks = [p.resolve() for p in tracks[: args.limit or None]]
    if not tracks:
        raise SystemExit("no tracks found")
    models_dir = args.models_dir.resolve()
    settings = dict(s.split("=", 1) for s in args.set)
    import soundfile as sf

    durations = [sf.info(p).duration for p in tracks]
    n = len(tracks)

    # the weights and the ONNX file, prepared as `sidecar setup` does (not timed)
    from sidecar.plugins import load_embedders

    load_embedders(["musicnn"], models_dir)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix=".bench-ingest-", dir=REPO / ".cache"))
    try:
        ref = None if args.skip_reference else reference(tracks, models_dir, work / "reference.db")
        print("  service pipeline...", file=sys.stderr, flush=True)
        svc = asyncio.run(service_pipeline(tracks, models_dir, work, **settings))
        opts = svc["settings"].plugins.get("musicnn", {})
        print("  service stages...", file=sys.stderr, flush=True)
        stages, svc["vectors"] = service_stages(tracks, models_dir, work / "stages.db", opts)
        print("  freshness...", file=sys.stderr, flush=True)
        fresh = asyncio.run(freshness(sorted(tracks, key=lambda p: sf.info(p).duration)[n // 3:], models_dir, work, args.fresh)) if args.fresh else []
    finally:
        shutil.rmtree(work, ignore_errors=True)

    s, mus = svc["settings"], svc["musicnn"]
    print(f"## Ingest, {date.today()}, {platform.machine()} with {os.cpu_count()} cores "
          f"({platform.processor() or platform.platform()}); load average before "
          f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (0 on a quiet machine)\n")
    print(f"{n} real tracks, {sum(durations) / 3600:.2f} h of audio: median {statistics.median(durations):.0f} s, "
          f"{min(durations):.0f} to {max(durations):.0f} s. Service settings: ingest_workers={s.ingest_workers}, "
          f"musicnn backend={mus.options.backend}, threads={mus.options.threads}, patches={mus.options.patches or 'all'}, "
          f"vgg_patches={mus.options.vgg_patches or 'off'} ({mus.version}).\n")
    if ref:
        print("### Reference: straightforward sequential pipeline (torch float32, one patch at a time)\n")
        table(ref["stages"])
        print(f"Reference: {ref['wall']:.1f} s wall, **{3600 * n / ref['wall']:,.0f} tracks/hour**\n")
    print("### Service pipeline (`sidecar scan` path, the settings above)\n")
    print(f"Wall {svc['wall']:.1f} s: **{3600 * n / svc['wall']:,.0f} tracks/hour**; "
          f"CPU {svc['cpu'] / n:.2f} s per track (both cores fully ours: at most "
          f"{3600 * n * (os.cpu_count() or 1) / svc['cpu']:,.0f} tracks/hour); threads wanting a core: "
          f"{svc['busy'] or 0:.2f} on average; peak resident memory {svc['peak_mb']:,.0f} MB"
          + (f"; {ref['wall'] / svc['wall']:.1f}x the reference" if ref else "") + "\n")
    print("Its stages, track by track on one thread:\n")
    total = table(stages)
    print(f"Stage sum {total / n:.2f} s per track: {3600 * n / total:,.0f} tracks/hour on one core\n")
    if ref:
        from plugins.embedders.musicnn.recipe import VGG, track_tags, track_vector
        from sidecar.data.space import Space

        # the whole-track analysis: the service's recipe over every patch of both networks
        whole_out = [(m, v if VGG in mus.networks else None) for m, v in zip(ref["msd"], ref["vgg"])]
        raw_whole, raw_ours = np.array([track_vector(*o) for o in whole_out], np.float64), np.array(svc["vectors"], np.float64)
        # the store's space with the whole-track vectors' statistics: what similar_tracks compares
        space = Space.of(mus.space, mus.dim).fitted(raw_whole, n)
        whole, ours = space.transform(raw_whole), space.transform(raw_ours)
        cos = np.sum(unit(ours) * unit(whole), axis=1)
        mean = np.sum(unit(raw_ours[:, :200]) * unit(raw_whole[:, :200]), axis=1)
        worst = tracks[int(np.argmin(cos))].name
        ref_tags = [np.array(list(track_tags(*o).values())) for o in whole_out]
        tag_err = max(float(np.abs(a - b).max()) for a, b in zip(svc["tags"], ref_tags))
        print("### Parity with the full-track float32 analysis\n")
        print(f"MusiCNN vector cosine in the store's space (statistics of these {n} tracks' whole-track vectors): "
              f"min {cos.min():.4f} ({worst}), median {np.median(cos):.4f}, {int(np.sum(cos < 0.99))} of {n} under 0.99; "
              f"10-nearest-neighbour agreement {neighbour_agreement(ours, whole):.2f}. MSD patch mean alone (raw cosine): "
              f"min {mean.min():.4f}, median {np.median(mean):.4f}. Largest tag probability change {tag_err:.3f}\n")
        from plugins.embedders.musicnn.preprocess import spread

        print("Patch budget (mean of that many spread patches against every patch, same reference vectors):\n")
        print("| patches per track | min cosine | median cosine | tracks under 0.99 |")
        print("|---:|---:|---:|---:|")
        for budget in (8, 12, 16, 24, 32, 48):
            dense = [m["dense_preact"] for m in ref["msd"]]
            c = np.array([float(unit(d[spread(len(d), budget)].mean(axis=0)) @ unit(d.mean(axis=0))) for d in dense])
            print(f"| {budget} | {c.min():.4f} | {np.median(c):.4f} | {int(np.sum(c < 0.99))} |")
        print()
        print("| DSP feature | largest difference | median difference |")
        print("|---|---:|---:|")
        for k, v in ref["features"][0].items():
            if k not in svc["features"][0]:  # the loudness contour: the catalog keeps it apart (recordings.py)
                continue
            if isinstance(v, str):
                same = sum(a[k] == b[k] for a, b in zip(svc["features"], ref["features"]))
                print(f"| {k} | {n - same} of {n} differ | |")
            else:
                d = [abs(float(a[k]) - float(b[k])) for a, b in zip(svc["features"], ref["features"])]
                print(f"| {k} | {max(d):.4g} | {statistics.median(d):.4g} |")
        print()
    if fresh:
        print("### Freshness (file copied into the watched folder -> `GET /api/similar_tracks` answers)\n")
        print("| track | seconds to searchable | its decode + analysis (s) | the rest (s) |")
        print("|---|---:|---:|---:|")
        for f in fresh:
            print(f"| {f['track']} | {f['latency']:.2f} | {f['analysis']:.2f} | {f['latency'] - f['analysis']:.2f} |")
        rest = [f["latency"] - f["analysis"] for f in fresh]
        print(f"\nBeyond its own analysis: median {statistics.median(rest):.2f} s, max {max(rest):.2f} s "
              f"(target 2 s; the watcher's debounce is {s.debounce_s:g} s of it)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

"""The labelled corpus of scripts/bench_quality.py: real, freely licensed music from 17 Debian packages (24
albums, 301 full-length tracks, 19 hours).

Each album is a package, or a part of one that is clearly a separate album or soundtrack (a folder, an ALBUM
tag, a composer's files). Each labelled album has a style, set by hand from the package's description, its
own tags (GENRE) or its titles, as the comment beside it says; albums with `style=None` are unlabelled
distractors: they count for the album metrics and stand in every candidate list, but no style query is
asked of them. `split` puts every album in `dev` (where settings are chosen) or `test` (where they are
reported); each style has albums on both sides.

Fetching: `apt-get download` + `dpkg-deb -x` (the packages already used by the tests come through
`sidecar.demo.fetch_demo_library`), then tracker modules (MOD/IT/S3M) are rendered with `openmpt123`
(`apt-get install openmpt123`) and Frets-on-Fire songs (a backing track plus a guitar track) are mixed, both
to FLAC. Everything lands under `.cache/quality/corpus/<album>/` with a `manifest.json`. Idempotent.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CACHE = REPO / ".cache" / "quality"
CORPUS = CACHE / "corpus"
PACKAGES = CACHE / "packages"
MANIFEST = CORPUS / "manifest.json"
MIN_SECONDS = 45.0  # full-length tracks only: jingles, stingers and loops shorter than this are left out
AUDIO = (".ogg", ".opus", ".mp3", ".flac", ".wav")
MODULES = (".mod", ".it", ".s3m", ".xm")


@dataclass(frozen=True)
class Album:
    id: str
    package: str
    pattern: str  # glob under the unpacked package; "pk3:ARCHIVE::GLOB" inside a zip; "demo": sidecar.demo's fetch
    style: str | None
    split: str  # "dev" or "test"
    kind: str = "audio"  # "audio", "module" (render) or "fof" (mix song + guitar + rhythm)
    album_tag: str | None = None  # keep only files whose ALBUM tag is this
    note: str = ""


ALBUMS: tuple[Album, ...] = (
    # ---- orchestral
    Album("wesnoth", "wesnoth-1.16-music", "demo", "orchestral", "dev",
          note="Battle for Wesnoth's score: orchestral fantasy (the project's tests already use it as 'orchestral')"),
    Album("flare", "flare-game", "usr/share/games/flare/mods/fantasycore/music/*_theme.ogg", "orchestral", "test",
          note="FLARE fantasy action-RPG themes (town, battle, dungeon, boss...): orchestral fantasy score"),
    # ---- electronic
    Album("nexuiz", "nexuiz-music", "demo", "electronic", "dev",
          note="Nexuiz arena-shooter soundtrack: electronic/techno (the tests' 'electronic')"),
    Album("wz2100-legacy", "warzone2100-music", "usr/share/games/warzone2100/music/albums/legacy_soundtrack/*.opus",
          "electronic", "dev", note="package: 'abstract, atmospheric and post-apocalyptic beats'"),
    Album("wz2100-aftermath", "warzone2100-music", "usr/share/games/warzone2100/music/albums/aftermath_soundtrack/*.opus",
          "electronic", "test", note="as above, the newer 'aftermath' soundtrack"),
    # ---- ambient
    Album("singularity-ost", "singularity-music", "usr/share/games/singularity/music/*.ogg", "ambient", "dev",
          album_tag="Endgame: Singularity Original Soundtrack",
          note="Maxstack, Endgame: Singularity OST: slow ambient electronica"),
    Album("singularity-ar", "singularity-music", "usr/share/games/singularity/music/*.ogg", "ambient", "test",
          album_tag="Endgame: Singularity (Advanced Research)", note="Maxstack, the second album (ALBUM tag)"),
    # ---- metal
    Album("obsidian-elysia", "marsshooter-data", "usr/share/games/marsshooter/audio/**/*.ogg", "metal", "dev",
          album_tag="Elysia", note="Obsidian Shell, 'Elysia' (GENRE tag: Female Fronted Metal), M.A.R.S. music"),
    Album("obsidian-angelic", "marsshooter-data", "usr/share/games/marsshooter/audio/**/*.ogg", "metal", "test",
          album_tag="Angelic Asylum", note="Obsidian Shell, 'Angelic Asylum' (same band, other album)"),
    Album("fof-muldjord", "fretsonfire-songs-muldjord", "usr/share/games/fretsonfire/data/songs/muldjord/*/song.ogg",
          "metal", "dev", kind="fof", note="Muldjord's Frets on Fire songs (GENRE tag: Death Metal)"),
    Album("fof-sectoid", "fretsonfire-songs-sectoid", "usr/share/games/fretsonfire/data/songs/sectoid/*/song.ogg",
          "metal", "test", kind="fof", note="Sectoid's Frets on Fire songs ('Metal madness', 'War of freedom'...): guitar metal"),
    # ---- tracker (MOD/IT music rendered from the module files)
    Album("tecnoballz", "tecnoballz-data", "usr/share/games/tecnoballz/musics/*.mod", "tracker", "dev", kind="module",
          note="TecnoballZ (an Amiga Arkanoid clone): ProTracker MOD chiptunes"),
    Album("pingus", "pingus-data", "usr/share/games/pingus/data/music/*", "tracker", "test", kind="module",
          note="Pingus: Impulse/Scream Tracker modules (IT/S3M)"),
    # ---- unlabelled distractors (varied or unknown style): album metrics only
    Album("supertux-forest", "supertux-data", "usr/share/games/supertux2/music/forest/*.ogg", None, "dev"),
    Album("supertux-antarctic", "supertux-data", "usr/share/games/supertux2/music/antarctic/*.ogg", None, "test"),
    Album("hedgewars", "hedgewars-data", "usr/share/games/hedgewars/Data/Music/*.ogg", None, "dev"),
    Album("freedroidrpg", "freedroidrpg-data", "usr/share/freedroidrpg/data/sound/music/*.ogg", None, "test"),
    Album("hyperrogue", "hyperrogue-music", "usr/share/hyperrogue/music/*.ogg", None, "dev"),
    Album("openclonk", "openclonk-data", "usr/share/games/openclonk/Music.ocg/*.ogg", None, "test"),
    Album("pushover", "pushover-data", "usr/share/pushover/themes/*.ogg", None, "dev"),
    Album("ufoai-crystan", "ufoai-music", "pk3:usr/share/games/ufoai/base/0music.pk3::music/Crystan-*.ogg", None, "test"),
    Album("ufoai-psymong", "ufoai-music", "pk3:usr/share/games/ufoai/base/0music.pk3::music/Psymong*.ogg", None, "dev"),
    Album("ufoai-marine", "ufoai-music", "pk3:usr/share/games/ufoai/base/0music.pk3::music/Marine*.ogg", None, "test"),
    Album("ufoai-van", "ufoai-music", "pk3:usr/share/games/ufoai/base/0music.pk3::music/van_*.ogg", None, "dev"),
)  # fmt: skip
STYLES = tuple(dict.fromkeys(a.style for a in ALBUMS if a.style))


@dataclass
class Track:
    id: str  # "<album>/<file stem>"
    path: str  # relative to CORPUS
    album: str
    package: str
    style: str | None
    split: str
    seconds: float


def unpack(package: str) -> Path:
    """apt-get download + dpkg-deb -x into PACKAGES/<package>/ (once)."""
    from sidecar.demo import _apt_download

    root = PACKAGES / package
    if (root / ".complete").exists():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        deb = next(iter(sorted((CACHE / "debs").glob(f"{package}_*.deb"))), None)  # kept from an earlier fetch
        if deb is None:
            deb = _apt_download(package, Path(tmp))
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    (root / ".complete").touch()
    return root


def _album_tag(path: Path) -> str | None:
    from sidecar.pipeline.audio import read_tags

    return read_tags(path).get("album")


def _sources(album: Album) -> list[Path]:
    if album.pattern == "demo":  # the packages the tests use, fetched (once) into .cache/music by sidecar.demo
        from sidecar.demo import fetch_demo_library

        return fetch_demo_library(REPO / ".cache" / "music", (album.package,))
    root = unpack(album.package)
    if album.pattern.startswith("pk3:"):
        archive, inner = album.pattern[4:].split("::")
        out_dir = PACKAGES / f"{album.package}.pk3"
        with zipfile.ZipFile(root / archive) as z:
            for name in z.namelist():
                if fnmatch.fnmatch(name, inner) and not (out_dir / name).exists():
                    (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
                    (out_dir / name).write_bytes(z.read(name))
        return sorted(p for p in out_dir.glob(inner))
    files = sorted(p for p in root.glob(album.pattern) if p.is_file())
    if album.album_tag is not None:
        files = [p for p in files if _album_tag(p) == album.album_tag]
    return files


def _render_module(src: Path, dest: Path) -> None:
    """Tracker module -> FLAC 44.1 kHz stereo, played once (no repeat), at most 6 minutes."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(
            ["openmpt123", "--batch", "--quiet", "--samplerate", "44100", "--no-float", "--repeat", "0",
             "--end-time", "360", "--force", "-o", str(wav), str(src)],
            check=True, capture_output=True,
        )  # fmt: skip
        y, sr = sf.read(wav, dtype="float32")
    sf.write(dest, y, sr, format="FLAC", subtype="PCM_16")


def _mix_fof(song: Path, dest: Path) -> None:
    """A Frets on Fire song folder: backing track (song.ogg) + guitar.ogg (+ rhythm.ogg), summed, peak-safe."""
    parts = [song] + [song.with_name(n) for n in ("guitar.ogg", "rhythm.ogg") if song.with_name(n).exists()]
    tracks = [sf.read(p, dtype="float32", always_2d=True) for p in parts]
    sr = tracks[0][1]
    n = max(len(y) for y, _ in tracks)
    mix = np.zeros((n, 2), np.float32)
    for y, r in tracks:
        assert r == sr, (song, r, sr)
        y = np.repeat(y, 2, axis=1) if y.shape[1] == 1 else y[:, :2]
        mix[: len(y)] += y
    peak = float(np.abs(mix).max())
    if peak > 0.99:
        mix *= 0.99 / peak
    sf.write(dest, mix, sr, format="FLAC", subtype="PCM_16")


def _materialise(album: Album, src: Path) -> Path:
    out = CORPUS / album.id
    out.mkdir(parents=True, exist_ok=True)
    stem = src.parent.name if album.kind == "fof" else src.stem
    stem = stem.replace(" ", "_")
    if album.kind == "module":
        dest = out / f"{stem}.flac"
        if not dest.exists():
            _render_module(src, dest)
    elif album.kind == "fof":
        dest = out / f"{stem}.flac"
        if not dest.exists():
            _mix_fof(src, dest)
    else:
        dest = out / f"{stem}{src.suffix.lower()}"
        if not dest.exists():
            shutil.copy2(src, dest)
    return dest


def _seconds(path: Path) -> float:
    try:
        info = sf.info(path)
        return info.frames / info.samplerate
    except Exception:
        from sidecar.pipeline.audio import decode

        return decode(path).duration_s


def build(verbose: bool = True) -> list[Track]:
    """Fetch, render and list the corpus; returns its tracks (and writes MANIFEST). Cached."""
    if MANIFEST.exists() and MANIFEST.stat().st_mtime >= Path(__file__).stat().st_mtime:
        return load()
    tracks: list[Track] = []
    seen: dict[str, str] = {}
    for album in ALBUMS:
        n = 0
        for src in _sources(album):
            if album.kind == "audio" and src.suffix.lower() not in AUDIO:
                continue
            if album.kind == "module" and src.suffix.lower() not in MODULES:
                continue
            dest = _materialise(album, src)
            secs = _seconds(dest)
            if secs < MIN_SECONDS:
                continue
            digest = hashlib.blake2b(dest.read_bytes(), digest_size=16).hexdigest()
            if digest in seen:  # the same file twice (in one package or across two): keep the first
                continue
            tid = f"{album.id}/{dest.stem}"
            seen[digest] = tid
            tracks.append(Track(tid, str(dest.relative_to(CORPUS)), album.id, album.package, album.style, album.split, round(secs, 2)))
            n += 1
        if verbose:
            print(f"{album.id:20s} {album.style or '-':11s} {album.split:4s} {n:3d} tracks", file=sys.stderr)
    MANIFEST.write_text(json.dumps([asdict(t) for t in tracks], indent=1))
    return tracks


def load() -> list[Track]:
    return [Track(**d) for d in json.loads(MANIFEST.read_text())]




# ------------------------------------------------------------------------------------------------ features
FEATURES = CACHE / "features"
ONNX_DIR = CACHE / "onnx"
DUPS = CACHE / "dups"
PATCH_BUDGET = 24  # the product's default (plugins/embedders/musicnn: PATCHES)
KEEP = {"dense_preact", "penultimate", "taggram", "pool5"}  # per-patch outputs kept (logits = taggram's logit)


def wheel_path() -> Path:
    from plugins.embedders.musicnn import download_wheel

    folder = REPO / ".cache" / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    return download_wheel(folder)


class Analyser:
    """The product's analysis path (decode -> 16 kHz -> 24 spread patches -> models; 22.05 kHz -> DSP), with
    all four musicnn networks on ONNX Runtime (one thread each, as the product runs MSD_musicnn)."""

    def __init__(self) -> None:
        from plugins.embedders.dsp import DspEmbedder
        from plugins.embedders.musicnn.networks import NETWORKS, load_network
        from plugins.embedders.musicnn.onnx_backend import export_model, make_session, output_names

        self.sessions = {}
        for net in NETWORKS:
            path = ONNX_DIR / f"{net}.onnx"
            if not path.exists():
                export_model(load_network(wheel_path(), net), net, path)
            self.sessions[net] = (make_session(path, threads=1), output_names(net))
        self.dsp = DspEmbedder()

    def __call__(self, path: Path) -> dict[str, np.ndarray]:
        import time

        from plugins.embedders.musicnn.onnx_backend import INPUT
        from plugins.embedders.musicnn.preprocess import audio_to_patches
        from sidecar.pipeline.audio import decode

        cpu = {}
        t = time.process_time()
        dec = decode(path)
        cpu["decode"] = time.process_time() - t
        t = time.process_time()
        y16 = dec.at(16000)
        patches = audio_to_patches(y16, PATCH_BUDGET)
        cpu["mel"] = time.process_time() - t
        out: dict[str, np.ndarray] = {"seconds": np.float64(dec.duration_s)}
        for net, (session, names) in self.sessions.items():
            t = time.process_time()
            res = []
            for i in range(0, len(patches), 16):  # the product's batch of 16
                res.append(session.run(list(names), {INPUT: patches[i : i + 16]}))
            cpu[net] = time.process_time() - t
            for j, k in enumerate(names):
                if k in KEEP:
                    out[f"{net}.{k}"] = np.concatenate([r[j] for r in res]).astype(np.float32)
        t = time.process_time()
        r = self.dsp.embed(dec.at(22050))
        cpu["dsp"] = time.process_time() - t
        out["dsp.vector"] = np.asarray(r.vector, np.float32)
        f = dict(r.features)
        f["minor"] = 1.0 if f.get("scale") == "minor" else 0.0
        names = sorted(k for k, v in f.items() if isinstance(v, (int, float)))
        out["dsp.feature_names"] = np.array(names)
        out["dsp.features"] = np.array([float(f[k]) for k in names], np.float64)
        out["cpu_names"] = np.array(list(cpu))
        out["cpu_s"] = np.array(list(cpu.values()))
        return out


def feature_path(track_id: str, root: Path = FEATURES) -> Path:
    return root / f"{track_id}.npz"


def compute_features(items: list[tuple[str, Path]], root: Path = FEATURES, workers: int = 2) -> None:
    """Analyse every (id, audio path) not yet cached under root/<id>.npz, in `workers` processes at nice 10."""
    todo = [(tid, p) for tid, p in items if not feature_path(tid, root).exists()]
    if not todo:
        return
    print(f"analysing {len(todo)} tracks in {workers} processes (nice 10)...", file=sys.stderr)
    chunks = [todo[i::workers] for i in range(workers)]
    procs = []
    for i, chunk in enumerate(chunks):
        job = CACHE / f"job-{root.name}-{i}.json"
        job.write_text(json.dumps([(t, str(p)) for t, p in chunk]))
        cmd = ["nice", "-n", "10", sys.executable, __file__, "--analyse", str(job), str(root)]
        procs.append(subprocess.Popen(cmd))
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"feature worker failed: {p.args}")


def _worker(job: Path, root: Path) -> None:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    analyse = Analyser()
    items = json.loads(job.read_text())
    for n, (tid, path) in enumerate(items):
        dest = feature_path(tid, root)
        if dest.exists():
            continue
        try:
            out = analyse(Path(path))
        except Exception as e:  # a track the product could not analyse either: recorded, skipped
            print(f"FAILED {tid}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp.npz")
        np.savez(tmp, **out)
        tmp.replace(dest)
        print(f"[{n + 1}/{len(items)}] {tid} {out['seconds']:.0f}s cpu {out['cpu_s'].sum():.2f}s", file=sys.stderr, flush=True)


def load_features(track_ids: list[str], root: Path = FEATURES) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for tid in track_ids:
        p = feature_path(tid, root)
        if p.exists():
            with np.load(p) as z:
                out[tid] = {k: z[k] for k in z.files}
    return out


# --------------------------------------------------------------------------------------- near-duplicates
DUP_VARIANTS = ("mp3", "opus", "trim", "gain", "mixed")


def _dup_path(t: Track, variant: str) -> Path:
    ext = {"mp3": ".mp3", "opus": ".opus", "mixed": ".mp3"}.get(variant, ".flac")
    return DUPS / f"{t.id.replace('/', '__')}__{variant}{ext}"


def duplicate_originals(tracks: list[Track], n: int = 50, seed: int = 0) -> list[Track]:
    """The `n` tracks (a fixed random choice) whose altered copies are made."""
    rng = np.random.default_rng(seed)
    return [tracks[i] for i in sorted(rng.choice(len(tracks), size=min(n, len(tracks)), replace=False))]


def _variants(t: Track) -> list[tuple[str, str, Path]]:
    import os

    os.nice(10)
    y = sr = None
    out = []
    for v in DUP_VARIANTS:
        dest = _dup_path(t, v)
        ext = dest.suffix
        if not dest.exists():
            if y is None:
                y, sr = sf.read(CORPUS / t.path, dtype="float32", always_2d=True)
            z, rate = y, sr
            if v in ("trim", "mixed"):
                z = z[int((3 if v == "trim" else 4) * sr) : len(z) - (int(2 * sr) if v == "trim" else 0)]
            if v in ("gain", "mixed"):
                z = z * np.float32(10 ** (-6 / 20))
            if v == "opus":  # Opus runs at 48 kHz
                import soxr

                z, rate = soxr.resample(z, sr, 48000, quality="HQ").astype(np.float32), 48000
            fmt = {".mp3": ("MP3", "MPEG_LAYER_III"), ".opus": ("OGG", "OPUS"), ".flac": ("FLAC", "PCM_16")}[ext]
            tmp = dest.with_name(dest.stem + ".tmp" + ext)
            sf.write(tmp, z, rate, format=fmt[0], subtype=fmt[1])
            tmp.replace(dest)
        out.append((f"{t.id}~{v}", t.id, dest))
    return out


def make_duplicates(tracks: list[Track], n: int = 50, seed: int = 0, workers: int = 2) -> list[tuple[str, str, Path]]:
    """Altered copies of `n` tracks: (variant id, original id, path). Variants: mp3 (MPEG layer III,
    libsndfile's default VBR), opus (Ogg Opus), trim (3 s off the start, 2 s off the end, FLAC), gain (-6 dB,
    FLAC), mixed (4 s off the start, -6 dB, then MP3). Made once, in `workers` processes at nice 10."""
    from concurrent.futures import ProcessPoolExecutor

    DUPS.mkdir(parents=True, exist_ok=True)
    chosen = duplicate_originals(tracks, n, seed)
    todo = [t for t in chosen if not all(_dup_path(t, v).exists() for v in DUP_VARIANTS)]
    if todo:
        print(f"making altered copies of {len(todo)} tracks...", file=sys.stderr)
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_variants, todo))
    return [(f"{t.id}~{v}", t.id, _dup_path(t, v)) for t in chosen for v in DUP_VARIANTS]


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--analyse":
    _worker(Path(sys.argv[2]), Path(sys.argv[3]))
    sys.exit(0)

if __name__ == "__main__":  # fetch the corpus, make the duplicates, analyse both (cached)
    ts = build()
    print(f"{len(ts)} tracks, {sum(t.seconds for t in ts) / 3600:.1f} h, {len({t.album for t in ts})} albums")
    compute_features([(t.id, CORPUS / t.path) for t in ts])
    dups = make_duplicates(ts)
    compute_features([(vid, p) for vid, _, p in dups], root=CACHE / "dup_features")

"""What finding the same recording costs at scale (sidecar/data/recordings.py, Catalog._place_recording).

A catalog of --tracks tracks (SQLite, and PostgreSQL where Debian's server is installed), each with the duration and
the DSP descriptors the rule compares, every column drawn from its real distribution in the research corpus
(.cache/quality/features: 301 real tracks; each value jittered by up to twice its tolerance, columns drawn apart, so
that the synthetic tracks are no copies of each other); 2% of them in groups of two. Then --new tracks stored as the
pipeline stores them, timed: the DSP result's record_embedding (with the check) against a MusiCNN result's (without),
and what one list pays to know the groups (Recordings.of). Bulk rows go in with SQL here: a benchmark's set-up.

    .venv/bin/python scripts/bench_duplicates.py [--tracks 100000] [--new 300]
"""
from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from sidecar.data.catalog import Catalog  # noqa: E402
from sidecar.data.recordings import CONTOUR, DESCRIPTORS, TOLERANCES, Recordings, candidate_ranges, descriptors  # noqa: E402

FEATURES = REPO / ".cache" / "quality" / "features"


def corpus() -> tuple[np.ndarray, np.ndarray]:
    """Durations and descriptors of the research corpus's tracks (scripts/quality_corpus.py analysed them)."""
    durations, desc = [], []
    for path in sorted(FEATURES.glob("*/*.npz")):
        f = np.load(path)
        d = descriptors(dict(zip([str(n) for n in f["dsp.feature_names"]], f["dsp.features"].tolist())))
        if d is not None:
            durations.append(float(f["seconds"]))
            desc.append(d)
    if not durations:
        sys.exit(f"no analysed corpus in {FEATURES}: run scripts/quality_corpus.py first")
    return np.array(durations), np.array(desc)


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Durations, descriptors and loudness contours (2 minutes of smoothed noise, as long as real ones) of n tracks."""
    durations, desc = corpus()
    rng = np.random.default_rng(seed)
    dur = rng.choice(durations, n) * rng.uniform(0.9, 1.1, n)
    cols = [rng.choice(desc[:, j], n) + rng.uniform(-2, 2, n) * TOLERANCES[j] for j in range(len(DESCRIPTORS))]
    contours = []
    for _ in range(n):
        levels = 12 * np.convolve(rng.normal(size=970), np.ones(8) / 8, "valid")[:960]
        contours.append(base64.b64encode(np.clip(np.round(levels * 4), -100, 127).astype(np.int8).tobytes()).decode("ascii"))
    return dur, np.stack(cols, axis=1), contours


def build(catalog: Catalog, dur: np.ndarray, desc: np.ndarray, contours: list[str]) -> None:
    ids = [uuid.uuid4().hex for _ in range(len(dur))]
    now = time.time()
    grouped = {ids[i]: ids[i - 1] for i in range(1, len(ids), 100)}  # 2% of the tracks: 1% firsts, 1% copies of them
    with catalog.db.transaction() as tx:
        tx.executemany(
            "INSERT INTO tracks (track_id, content_hash, duration_s, created_at, updated_at, duplicate_of) VALUES (?, ?, ?, ?, ?, ?)",
            [(t, t, float(d), now + i * 1e-3, now, grouped.get(t)) for i, (t, d) in enumerate(zip(ids, dur))],
        )
        tx.executemany(
            f"INSERT INTO duplicate_keys (track_id, duration_s, {', '.join(DESCRIPTORS)}, contour) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(t, float(d), *map(float, x), c) for t, d, x, c in zip(ids, dur, desc, contours)],
        )
    catalog.db.query("ANALYZE")  # the planner's statistics, as after any bulk load


def measure(target, n: int, new: int) -> dict:
    catalog = Catalog(target)
    try:
        dur, desc, contours = synthetic(n + new)
        t = time.perf_counter()
        build(catalog, dur[:n], desc[:n], contours[:n])
        built = time.perf_counter() - t
        with_check, without, candidates, new_ids = [], [], [], []
        for i in range(n, n + new):
            d, x = float(dur[i]), desc[i]
            tid, _ = catalog.resolve_track(f"/music/new-{i}.ogg", f"new-{i}", 1, 1, {"duration_s": d})
            new_ids.append(tid)
            features = {"dynamics_db": x[0], "percussiveness": x[1], "brightness": float(np.exp(x[2])), "key_strength": x[3],
                        CONTOUR: contours[i]}
            t = time.perf_counter()
            catalog.record_embedding(tid, "musicnn", "1", f"new-{i}", tags={"rock": 0.5})
            without.append(time.perf_counter() - t)
            t = time.perf_counter()
            catalog.record_embedding(tid, "dsp", "1", f"new-{i}", features=features)
            with_check.append(time.perf_counter() - t)
            ranges = candidate_ranges(d, descriptors(features))
            inside = (dur[:n] >= ranges[0][0]) & (dur[:n] <= ranges[0][1])
            candidates.append((int(inside.sum()), int((inside & np.all([(desc[:n, j] >= lo) & (desc[:n, j] <= hi)
                                                                       for j, (lo, hi) in enumerate(ranges[1:])], axis=0)).sum())))
        groups = []
        for _ in range(20):
            t = time.perf_counter()
            Recordings.of(catalog)
            groups.append(time.perf_counter() - t)
        ms = lambda xs, q: 1000 * float(np.quantile(xs, q))  # noqa: E731
        return {
            "database": catalog.db.dialect, "tracks": n, "build_s": round(built, 1), "new": new,
            "dsp_record_p50_ms": ms(with_check, 0.5), "dsp_record_p99_ms": ms(with_check, 0.99),
            "other_record_p50_ms": ms(without, 0.5), "check_p50_ms": 1000 * (statistics.median(with_check) - statistics.median(without)),
            "duration_window_rows_median": int(np.median([c[0] for c in candidates])),
            "after_descriptor_ranges_median": int(np.median([c[1] for c in candidates])),
            "after_descriptor_ranges_max": max(c[1] for c in candidates),
            "new_tracks_grouped": sum(1 for t in new_ids if t in catalog.recording_groups()),  # none is a copy
            "recordings_of_p50_ms": ms(groups, 0.5),
        }
    finally:
        catalog.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=100_000)
    ap.add_argument("--new", type=int, default=300, help="tracks stored and timed after the bulk load")
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dup-") as work:
        print(json.dumps(measure(Path(work) / "catalog.sqlite3", args.tracks, args.new)), flush=True)
    if args.no_postgres:
        return
    from tests.postgres_server import PostgresServer, pg_bin_dir

    if pg_bin_dir() is None:
        print("no PostgreSQL server installed: SQLite only")
        return
    pg = PostgresServer()
    pg.start()
    try:
        print(json.dumps(measure(pg.new_database()[1], args.tracks, args.new)), flush=True)
    finally:
        pg.cleanup()


if __name__ == "__main__":
    main()

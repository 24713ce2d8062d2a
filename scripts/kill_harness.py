"""Kill the real sidecar with SIGKILL at random moments, during ingest and during a re-embed, restart it, and
check after every restart that nothing was lost or duplicated.

Each ingest trial adds a new real track to the watched folder and kills the process at a random moment
(start-up, decoding, inference, writing, committing); each replay trial starts a re-embed and kills it
mid-run. After each restart settles: every file has exactly one track, every model exactly one vector per
track (no duplicate primary keys), nothing is left in the bus, no dead letter, and an interrupted re-embed
has finished.

    .venv/bin/python scripts/kill_harness.py --ingest-trials 12 --replay-trials 10
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import CACHE, make_excerpts  # noqa: E402
from tests.sidecar_process import SidecarProcess  # noqa: E402


def post(sc: SidecarProcess, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{sc.port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def check(sc: SidecarProcess, music: Path, data: Path) -> dict:
    """Settle, stop cleanly, then count what is stored."""
    from sidecar.data.catalog import Catalog
    from sidecar.data.store import VectorStore

    status = sc.wait_idle(timeout=300)
    while True:  # a resumed re-embed must finish too
        try:
            p = sc.get("/api/batch/progress")
        except urllib.error.HTTPError:
            break
        if p["status"] not in ("running", "cancelling"):
            break
        time.sleep(0.5)
    dead = status["dead_letters"]
    sc.stop()
    files = sorted(str(p) for p in music.rglob("*.ogg"))
    cat = Catalog(data / "catalog.sqlite3")
    known = {r["path"]: r["track_id"] for r in cat._q("SELECT path, track_id FROM files")}
    tracks = {r["track_id"] for r in cat._q("SELECT track_id FROM tracks")}
    replays = [r["status"] for r in cat.replays()]
    cat.close()
    store = VectorStore(str(data / "milvus.db"))
    try:
        stored = {m: store.all_ids(m) for m in ("musicnn", "dsp")}
    finally:
        store.close()
    return {
        "files": len(files),
        "lost": len([f for f in files if f not in known]),
        "duplicated": sum(len(ids) - len(set(ids)) for ids in stored.values()),
        "vectors_missing": sum(len(tracks - set(ids)) for ids in stored.values()),
        "vectors_orphaned": sum(len(set(ids) - tracks) for ids in stored.values()),
        "dead_letters": dead,
        "replays_unfinished": sum(s == "running" for s in replays),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ingest-trials", type=int, default=12)
    ap.add_argument("--replay-trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    from sidecar.demo import ELECTRONIC_PACKAGE, ORCHESTRAL_PACKAGE, fetch_demo_library

    pool = make_excerpts(fetch_demo_library(CACHE / "music", (ORCHESTRAL_PACKAGE, ELECTRONIC_PACKAGE)), CACHE / "excerpts")
    rng.shuffle(pool)
    work = Path(tempfile.mkdtemp(prefix="kill-harness-"))
    music, data = work / "music", work / "data"
    music.mkdir()
    for f in pool[:8]:
        shutil.copy(f, music / f.name)
    (CACHE / "models").mkdir(parents=True, exist_ok=True)
    sc = SidecarProcess(music, data, CACHE / "models", work / "sidecar.log")
    rows = []
    try:
        for trial in range(args.ingest_trials + args.replay_trials):
            replay = trial >= args.ingest_trials
            sc.start(timeout=120)
            if replay:
                sc.wait_idle(timeout=300)
                post(sc, "/api/batch/start", {"models": ["dsp", "musicnn"]})
                delay = rng.uniform(0.5, 12)
            else:
                new = pool[8 + trial]
                shutil.copy(new, music / new.name)  # arrives while the sidecar runs
                delay = rng.uniform(0.2, 8)
            time.sleep(delay)
            sc.kill(signal.SIGKILL)
            sc.start(timeout=120)
            result = check(sc, music, data)
            result.update(trial=trial + 1, during="replay" if replay else "ingest", killed_after_s=round(delay, 2))
            rows.append(result)
            print(json.dumps(result), flush=True)
    finally:
        sc.kill()
        shutil.rmtree(work, ignore_errors=True)

    bad = [r for r in rows if r["lost"] or r["duplicated"] or r["vectors_missing"] or r["vectors_orphaned"] or r["dead_letters"] or r["replays_unfinished"]]
    print(f"\n### Kill-and-restart, {date.today()}: {len(rows)} trials ({args.ingest_trials} during ingest, "
          f"{args.replay_trials} during a re-embed), SIGKILL at a random moment each\n")
    print("| trial | during | killed after (s) | files | lost | duplicated vectors | missing vectors | orphan vectors | dead letters | unfinished re-embeds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['trial']} | {r['during']} | {r['killed_after_s']} | {r['files']} | {r['lost']} | {r['duplicated']} | "
              f"{r['vectors_missing']} | {r['vectors_orphaned']} | {r['dead_letters']} | {r['replays_unfinished']} |")
    print(f"\n**{len(rows) - len(bad)} of {len(rows)} trials passed.**")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

"""The quality benchmark through the product itself: the corpus analysed by `sidecar scan` into a data folder of
its own, then every endpoint a user calls answered by a running `sidecar serve` over HTTP, and scored with the
same metrics as the offline spaces (scripts/bench_quality.py).

The scan is incremental like any library's: a second run analyses nothing, and a new analysis version (a
plugin's `version`) analyses everything again by itself. Each endpoint's answer for a query track is turned into
a ranking of the library (the tracks it lists, in order, before all it leaves out), so album P@10, album MAP and
cross-album style P@10 mean the same here as offline.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
import quality_corpus as qc  # noqa: E402

SERVICE = qc.CACHE / "service"  # the benchmark's own data folder (catalog, Milvus Lite, event log)
LIMIT = 500  # the API's largest page: the whole corpus, so each answer is a whole ranking


def analyse(verbose: bool = True) -> Path:
    """`sidecar scan` of the corpus folder into SERVICE (only what is new or changed); returns the data dir."""
    data = SERVICE / "data"
    data.mkdir(parents=True, exist_ok=True)
    models = data / "models"
    if not models.exists():
        models.symlink_to(REPO / ".cache" / "models")
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "scan", str(qc.CORPUS), "--data-dir", str(data)],
        capture_output=True, text=True, env=dict(os.environ, SIDECAR_MUSIC_DIR=str(qc.CORPUS)),
    )
    if done.returncode != 0:
        raise SystemExit(f"sidecar scan failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    if verbose:
        print(f"  scan: {done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ''} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
    return data


class Service:
    """A running `sidecar serve` over the analysed corpus, and the corpus ids of its tracks."""

    def __init__(self, data: Path):
        from tests.sidecar_process import SidecarProcess

        self.proc = SidecarProcess(qc.CORPUS, data, REPO / ".cache" / "models", SERVICE / "serve.log",
                                   SIDECAR_RECONCILE_INTERVAL_S="0").start(timeout=600)
        self.proc.wait_idle(timeout=1200)
        tracks = self.proc.get("/api/tracks", limit=LIMIT)["tracks"]
        self.corpus_id = {t["track_id"]: _corpus_id(t["path"]) for t in tracks}
        self.track_id = {c: t for t, c in self.corpus_id.items()}

    def close(self) -> None:
        self.proc.stop()

    def call(self, method: str, path: str, body: dict | None = None, **params) -> tuple[int, object]:
        url = f"http://127.0.0.1:{self.proc.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)


def _corpus_id(path: str) -> str:
    rel = Path(path).relative_to(qc.CORPUS)
    return str(rel.with_suffix(""))


ENDPOINTS = {
    # name -> how to ask for the tracks like one track (the library's default model and merge where none is named)
    "similar_tracks (default model)": lambda tid: ("GET", "/api/similar_tracks", None, {"item_id": tid, "n": LIMIT}),
    "similar_tracks, model dsp": lambda tid: ("GET", "/api/similar_tracks", None, {"item_id": tid, "n": LIMIT, "model": "dsp"}),
    "recommendations (default)": lambda tid: ("POST", "/api/recommendations", {"seeds": [{"track_id": tid}], "limit": LIMIT}, {}),
    "recommendations, musicnn + dsp, union": lambda tid: (
        "POST", "/api/recommendations", {"seeds": [{"track_id": tid}], "limit": LIMIT, "models": ["musicnn", "dsp"], "merge_strategy": "union"}, {}),
    "recommendations, musicnn + dsp, intersection": lambda tid: (
        "POST", "/api/recommendations", {"seeds": [{"track_id": tid}], "limit": LIMIT, "models": ["musicnn", "dsp"], "merge_strategy": "intersection"}, {}),
}


def _listed(answer) -> list[str]:
    items = answer if isinstance(answer, list) else answer.get("tracks", [])
    return [x.get("item_id") or x.get("track_id") for x in items]


def rankings(service: Service, ids: list[str]) -> dict[str, np.ndarray]:
    """Per endpoint, an (n, n) score matrix over the corpus tracks `ids`: minus the rank of each listed track in
    the answer for the query track, -inf for what the answer leaves out and for the query itself."""
    pos = {c: i for i, c in enumerate(ids)}
    out = {}
    for name, ask in ENDPOINTS.items():
        sim = np.full((len(ids), len(ids)), -np.inf)
        for i, cid in enumerate(ids):
            method, path, body, params = ask(service.track_id[cid])
            status, answer = service.call(method, path, body, **params)
            if status != 200:
                raise SystemExit(f"{name} answered {status} for {cid}: {answer}")
            for rank, tid in enumerate(_listed(answer)):
                j = pos.get(service.corpus_id.get(tid, tid))
                if j is not None and j != i:
                    sim[i, j] = -rank
        out[name] = sim
    return out


def text_rankings(service: Service, ids: list[str], prompts: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """Per prompt, the corpus ids the text playlist endpoint lists (tags method: the zero-shot search)."""
    out = {}
    for prompts_of_style in prompts.values():
        for prompt in prompts_of_style:
            status, answer = service.call("POST", "/api/recommendations/text", {"text": prompt, "method": "tags", "limit": LIMIT})
            if status != 200:
                raise SystemExit(f"text {prompt!r} answered {status}: {answer}")
            out[prompt] = [service.corpus_id[t] for t in _listed(answer) if t in service.corpus_id]
    return out


def run_service(lib, out: list[str], prompts: dict[str, tuple[str, ...]]) -> dict:
    """Every endpoint through a running sidecar, beside random and the plain MusiCNN baseline (offline, same
    tracks), on the dev and test albums: Markdown tables appended to `out`; the figures returned."""
    from bench_quality import baseline, evaluate, evaluate_random, fmt_row, similarity, table_header

    data = analyse()
    service = Service(data)
    try:
        known = [i for i in lib.ids if i in service.track_id]
        missing = sorted(set(lib.ids) - set(known))
        if missing:
            out.append(f"\n{len(missing)} corpus tracks are not in the service's library (failed analysis?): {missing[:5]}")
        keep = np.array([lib.ids.index(i) for i in known])
        sub = type(lib)(ids=known, album=lib.album[keep], style=lib.style[keep], split=lib.split[keep],
                        seconds=lib.seconds[keep], feats=[lib.feats[k] for k in keep])
        sims = {"baseline: plain MusiCNN patch mean (offline, same run)": similarity(baseline(sub))}
        t0 = time.perf_counter()
        sims.update(rankings(service, known))
        seconds = time.perf_counter() - t0
        texts = text_rankings(service, known, prompts)
    finally:
        service.close()
    styles = sorted(set(sub.style) - {""})
    res: dict = {"endpoints": {}, "text": {}}
    out.append(f"\n## Through the product: `sidecar serve` on the corpus ({len(known)} tracks), every query over HTTP "
               f"({len(known) * (len(sims) - 1)} requests in {seconds:.0f} s)\n")
    for split in ("dev", "test"):
        out.append(f"\n### {split} albums\n\n" + table_header(styles))
        out.append(fmt_row("random", evaluate_random(sub, split), styles))
        for name, sim in sims.items():
            r = evaluate(sub, sim, split)
            res["endpoints"].setdefault(name, {})[split] = r
            out.append(fmt_row(name, r, styles))
    labelled = {c: s for c, s in zip(sub.ids, sub.style) if s}
    split_of = dict(zip(sub.ids, sub.split))
    out.append("\n### Text playlists (`POST /api/recommendations/text`, zero-shot), P@10 among the labelled tracks\n")
    out.append("| style | prompt | P@10 (all) | P@10 (test albums) |\n|---|---|---:|---:|")
    for style, ps in prompts.items():
        for p in ps:
            listed = [c for c in texts[p] if c in labelled]
            test = [c for c in listed if split_of[c] == "test"]
            p10 = np.mean([labelled[c] == style for c in listed[:10]]) if listed else 0.0
            p10_test = np.mean([labelled[c] == style for c in test[:10]]) if test else 0.0
            res["text"][p] = {"style": style, "p10": float(p10), "p10_test": float(p10_test)}
            out.append(f"| {style} | {p} | {p10:.2f} | {p10_test:.2f} |")
    by_style = {s: np.mean([v["p10"] for v in res["text"].values() if v["style"] == s]) for s in prompts}
    mean = float(np.mean([v["p10"] for v in res["text"].values()]))
    lowest = min(res["text"].items(), key=lambda kv: kv[1]["p10"])
    out.append("\nPer style: " + ", ".join(f"{s} {v:.2f}" for s, v in by_style.items())
               + f"; mean {mean:.2f}; lowest {lowest[1]['p10']:.2f} ({lowest[0]!r})")
    return res

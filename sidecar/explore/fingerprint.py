"""The sonic fingerprint: a user's taste as one vector (the weighted mean of the tracks they played and liked,
recent plays weighing more), and the tracks nearest it. Low-rated tracks are neither seeds nor results."""
from __future__ import annotations

import time
from collections import Counter

import numpy as np

from schemas.explore import FingerprintQuery, FingerprintResponse, SeedTrack, TagScore
from sidecar.data import Catalog, VectorStore
from sidecar.data.ids import shown_id
from sidecar.data.recordings import Recordings
from sidecar.errors import BadInput, Conflict
from sidecar.explore.common import track_item, unit
from sidecar.explore.state import ExploreCaches


def fingerprint_seeds(
    catalog: Catalog, user: str, *, half_life_days: float, max_listens: int, favorite_weight: float, now: float | None = None
) -> dict[str, dict]:
    """Per seed track: its weight (plays decayed by age, favourites boosted), play count and favourite flag."""
    now = time.time() if now is None else now
    decay = lambda at: 0.5 ** (max(0.0, now - at) / 86400.0 / half_life_days)  # noqa: E731
    seeds: dict[str, dict] = {}
    for tid, played_at in catalog.plays(user, max_listens):
        s = seeds.setdefault(tid, {"weight": 0.0, "plays": 0, "favorite": False})
        s["weight"] += decay(played_at)
        s["plays"] += 1
    for tid, at in catalog.favorites(user):
        s = seeds.setdefault(tid, {"weight": 0.0, "plays": 0, "favorite": False})
        s["weight"] = (s["weight"] + decay(at)) * favorite_weight
        s["favorite"] = True
    for tid in catalog.low_rated(user):
        seeds.pop(tid, None)
    return {t: s for t, s in seeds.items() if s["weight"] > 0}


def sonic_fingerprint(catalog: Catalog, store: VectorStore, caches: ExploreCaches, model: str, q: FingerprintQuery) -> FingerprintResponse:
    seeds = fingerprint_seeds(
        catalog, q.user, half_life_days=q.half_life_days, max_listens=q.max_listens, favorite_weight=q.favorite_weight
    )
    if not seeds:
        raise BadInput(f"user {q.user!r} has no listening history yet: no plays, no starred tracks and none rated 4 or 5", "user")
    vecs = store.get_vectors(model, list(seeds))
    seeds = {t: s for t, s in seeds.items() if t in vecs}
    if not seeds:
        raise Conflict(f"none of the tracks user {q.user!r} played or starred has a {model} vector yet", "user")
    total = sum(s["weight"] for s in seeds.values())
    for s in seeds.values():
        s["weight"] /= total
    seed_ids = list(seeds)
    weights = np.array([seeds[t]["weight"] for t in seed_ids], np.float32)
    fp = unit(weights @ unit(np.stack([vecs[t] for t in seed_ids])))
    ids, sims = store.similarities(model, np.stack([fp]))
    sim = sims[:, 0]
    skip = set(catalog.low_rated(q.user)) | (set() if q.include_known else set(seeds))
    for tid in skip:
        if (r := ids.row(tid)) is not None:
            sim[r] = -np.inf
    k = min(q.n, int(np.isfinite(sim).sum()))
    # one file of each recording, none of a skipped track's
    top = Recordings.of(catalog).distinct(np.argsort(-sim, kind="stable"), k, key=ids.__getitem__, taken=skip)

    acc: Counter = Counter()
    tagged = 0.0
    for tid, probs in caches.tag_probs.current(catalog, seed_ids).items():
        if probs is None:
            continue
        w = seeds[tid]["weight"]
        tagged += w
        for tag, p in probs.items():
            acc[tag] += w * p
    top_tags = [TagScore(tag=t, probability=round(p / tagged, 4)) for t, p in acc.most_common(5)] if tagged else []
    ordered = sorted(seeds.items(), key=lambda kv: -kv[1]["weight"])[:100]
    meta = catalog.tracks_brief(dict.fromkeys([ids[i] for i in top] + [t for t, _ in ordered]))
    return FingerprintResponse(
        user=q.user, model=model, half_life_days=q.half_life_days,
        seeds=[
            SeedTrack(
                item_id=shown_id(m) if (m := meta.get(t)) else t, title=(m or {}).get("title"), author=(m or {}).get("artist"),
                weight=round(s["weight"], 6), plays=s["plays"], favorite=s["favorite"],
            )
            for t, s in ordered
        ],
        top_tags=top_tags,
        results=[track_item(ids[i], meta, 1 - float(sim[i])) for i in top],
    )

"""Exploration over the embedding space: song paths, song alchemy, the sonic fingerprint, the music map,
similar artists and track search. AudioMuse-AI compatible where it has the same endpoint (docs/API.md).

Every vector read comes from the store's exact in-memory mirrors, never from Milvus, and the numeric work runs
in worker threads (asyncio.to_thread) so the event loop never waits on it. A mirror's arrays are read under
the store's lock (ingest writes them under it); what is computed from them afterwards works on copies.

Choices that differ from AudioMuse-AI's described algorithms, and why:
- Song path: the ideal points are a spherical interpolation of the two *normalised* vectors, and the tracks are
  assigned to them all at once (a linear assignment maximising total similarity) instead of greedily point by
  point, so an early point cannot take the track a later one needed and the path has exactly max_steps
  distinct tracks whenever the library has that many that are not near-duplicates. Near-duplicates (same
  normalised title and artist, or cosine > 0.995) are excluded against the whole path, not a lookback window.
- Alchemy: a candidate is filtered when it is close to *any* subtracted track, not to the subtract centroid
  (the centroid of two different tracks may lie near neither); sampling is seeded and reproducible.
- Sonic fingerprint: every play counts, decayed by its age (half-life), so recent taste dominates; favourites
  weigh more; low-rated tracks are neither seeds nor results.
- Map: UMAP is not used: on this project's machines it took 110 s for 10k tracks and 158 s for 100k (see
  docs/API.md). PCA, or t-SNE up to 2,000 tracks; computed once, cached, patched in place for small changes.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
from aiohttp import web
from scipy.optimize import linear_sum_assignment

from schemas.explore import (
    AlchemyPoint, AlchemyRequest, AlchemyResponse, AlchemyResult, ComponentMatch, ExploreTrack, FilteredTrack,
    FindPathQuery, FindPathResponse, FingerprintGenerateQuery, FingerprintQuery, FingerprintResponse, MapQuery,
    MapSelection, MapSelectionResponse, SearchTrack, SearchTracksQuery, SeedTrack, SelectedTrack, SimilarArtist,
    MapResponse, SimilarArtistsQuery, SongRef, TagScore,
)
from sidecar.http.common import ApiError, json_response, parse_body, parse_query, sidecar_of
from sidecar.http.openapi import documented

if TYPE_CHECKING:
    from sidecar.data.catalog import Catalog
    from sidecar.service import Sidecar
    from sidecar.data.store import VectorStore

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

DUPLICATE_COSINE = 0.995  # two tracks this similar are the same recording (another file, another edition)
MAP_DRIFT = 0.05  # a cached map is refitted once the library differs from the fitted one by more than this
TSNE_MAX = 2000  # t-SNE above this takes too long for a first call (measured: 2,000 in 4 s, 3,000 in 31 s)
KNN_PLACE = 5  # a track added to a t-SNE map sits among its nearest placed neighbours


# ---------------------------------------------------------------------------------------------- helpers
def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    if v.ndim == 1:
        return v / max(float(np.linalg.norm(v)), 1e-12)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _model(sc: "Sidecar", name: str | None) -> str:
    model = name or sc.default_model
    if model not in sc.embedders.ready or model not in sc.store.mirrors:
        raise ApiError(400, f"unknown or unavailable model {model!r}; available: {', '.join(sc.embedders.ready)}", "model")
    return model


def _resolve(sc: "Sidecar", ids: list[str], field: str) -> list[str]:
    """Our track ids for ids that may be ours or a media server's, in order, without repeats; 404 on unknowns."""
    got = sc.catalog.resolve_ids(ids)
    missing = [i for i in ids if i not in got]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ApiError(404, f"no track with id {missing[0]!r}{more}", field)
    out: list[str] = []
    for i in ids:
        if got[i] not in out:
            out.append(got[i])
    return out


def _vectors(sc: "Sidecar", model: str, ids: list[str], field: str) -> dict[str, np.ndarray]:
    """Unit vectors of known tracks; 409 naming the field for one that has none yet."""
    vecs = sc.store.get_vectors(model, ids)
    for tid in ids:
        if tid not in vecs:
            raise ApiError(409, f"track {tid!r} has no {model} vector yet (not analysed, or analysis failed)", field)
    return {t: _unit(v) for t, v in vecs.items()}


MEDIA_SERVER = "subsonic"  # the catalog's namespace for the media server's song ids (see sidecar/mediaserver.py)


def _server_ids(catalog: "Catalog", ids) -> dict[str, str]:
    """Our track id -> the id to show: the media server's song id where the catalog knows it (AudioMuse-AI's
    item_id is the media server's id, and its Navidrome plugin hands it to Navidrome), else our own."""
    ids = list(dict.fromkeys(ids))
    known = catalog.external_ids(ids, MEDIA_SERVER)
    return {t: known.get(t, t) for t in ids}


def _brief(catalog: "Catalog", ids) -> dict[str, dict]:
    """tracks_brief, plus "out_id": the id to show for the track (see _server_ids)."""
    ids = list(dict.fromkeys(ids))
    meta = catalog.tracks_brief(ids)
    shown = _server_ids(catalog, ids)
    for t, m in meta.items():
        m["out_id"] = shown[t]
    return meta


def _track_item(tid: str, meta: dict[str, dict], distance: float, cls=ExploreTrack, **extra):
    m = meta.get(tid) or {}
    return cls(
        item_id=m.get("out_id", tid), title=m.get("title"), author=m.get("artist"), album=m.get("album"),
        distance=round(float(distance), 6), **extra,
    )


_NON_WORD = re.compile(r"[^\w]+")


def _dup_key(title: str | None, artist: str | None) -> tuple[str, str] | None:
    """Normalised (title, artist); None without an artist (an untagged library's titles are file names)."""
    if not title or not artist:
        return None
    norm = lambda s: _NON_WORD.sub(" ", s.casefold()).strip()  # noqa: E731
    return norm(title), norm(artist)


# ----------------------------------------------------------------------------------- per-sidecar caches
@dataclass
class Projection:
    method: str
    ids: list[str]
    coords: np.ndarray  # (n, 2), centred and scaled into [-1, 1]
    fitted: frozenset  # the ids of the last full fit; drift is measured against it
    transform: Callable[[np.ndarray], np.ndarray] | None  # unit vectors -> coordinates (PCA)
    sig: tuple
    version: int
    computed_at: float
    pos: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.pos = {t: i for i, t in enumerate(self.ids)}


@dataclass
class ArtistIndex:
    stamp: tuple
    names: list[str]  # display names
    by_key: dict[str, int]  # casefolded name -> row
    centroids: np.ndarray  # (artists, dim), unit
    members: list[np.ndarray]  # rows of `unit` per artist
    track_ids: list[str]
    titles: list[str | None]
    unit: np.ndarray  # (tracks with an artist, dim), unit
    writes: tuple = ()  # the catalog's write token (and mirror size) when `stamp` was last checked


@dataclass
class ExploreState:
    maps: dict[tuple[str, str], Projection] = field(default_factory=dict)
    map_locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    map_bodies: dict[tuple, bytes] = field(default_factory=dict)
    tags: dict[str, tuple[float, str | None]] = field(default_factory=dict)  # track -> (updated_at, dominant tag)
    tags_stamp: tuple | None = None
    tag_probs: dict[str, tuple[float, dict]] = field(default_factory=dict)  # track -> (updated_at, tag probabilities), seeds seen
    tags_lock: threading.Lock = field(default_factory=threading.Lock)
    artists: dict[str, ArtistIndex] = field(default_factory=dict)
    artists_lock: threading.Lock = field(default_factory=threading.Lock)
    labels: tuple | None = None  # (stamp, {track id: title, artist, album, genre, tag})
    versions: int = 0


_STATES: "weakref.WeakKeyDictionary[Sidecar, ExploreState]" = weakref.WeakKeyDictionary()


def _state(sc: "Sidecar") -> ExploreState:
    st = _STATES.get(sc)
    if st is None:
        st = _STATES[sc] = ExploreState()
    return st


def _musicnn_tags(catalog: "Catalog", st: ExploreState) -> tuple[tuple, dict[str, tuple[float, str | None]]]:
    """(stamp, per track: (updated_at, dominant MusiCNN tag)); only rows that changed are parsed again."""
    stamp = tuple(catalog._q("SELECT COUNT(*), MAX(updated_at) FROM embeddings WHERE model = 'musicnn' AND status = 'done'")[0])
    with st.tags_lock:
        if st.tags_stamp == stamp:
            return stamp, st.tags
        rows = catalog._q("SELECT track_id, updated_at FROM embeddings WHERE model = 'musicnn' AND status = 'done'")
        have = dict(st.tags)
        stale = [r["track_id"] for r in rows if (h := have.get(r["track_id"])) is None or h[0] != r["updated_at"]]
        current = {r["track_id"] for r in rows}
        for tid in [t for t in have if t not in current]:
            del have[tid]
        for i in range(0, len(stale), 900):
            chunk = stale[i : i + 900]
            marks = ",".join("?" * len(chunk))
            for r in catalog._q(
                f"SELECT track_id, updated_at, tags FROM embeddings WHERE model = 'musicnn' AND track_id IN ({marks})", chunk
            ):
                probs = json.loads(r["tags"]) if r["tags"] else None
                have[r["track_id"]] = (r["updated_at"], max(probs, key=probs.get) if probs else None)
        st.tags, st.tags_stamp = have, stamp
        return stamp, have


# ------------------------------------------------------------------------------------------ song path
def _top_per_step(a, b, s0, s1, reach, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows among `rows` that are in some step's k best (exactly), and each one's best score. Only the
    tracks with the largest `reach` are scored; the set grows until no unscored track could have made it."""
    k = min(k, rows.size)
    take = min(rows.size, max(1024, 8 * k))
    while True:
        if take < rows.size:
            part = np.argpartition(-reach[rows], take - 1)
            pre, rest = rows[part[:take]], rows[part[take:]]
            bound = float(reach[rest].max())
        else:
            pre, bound = rows, -np.inf
        scores = np.outer(a, s0[pre]) + np.outer(b, s1[pre])  # (steps, scored tracks)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < pre.size else np.tile(np.arange(pre.size), (len(a), 1))
        kth = np.take_along_axis(scores, top, axis=1).min()
        if kth >= bound:
            cols = np.unique(top)
            return pre[cols], scores[:, cols].max(axis=0)
        take *= 4


def song_path(
    store: "VectorStore", catalog: "Catalog", model: str, start: str, end: str, steps: int
) -> tuple[list[tuple[str, float]], float]:
    """[(track id, cosine distance to its ideal point)] from start to end, and the summed step distances."""
    ends = store.get_vectors(model, [start, end])
    for tid, fld in ((start, "start_song_id"), (end, "end_song_id")):
        if tid not in ends:  # deleted since the request was checked
            raise ApiError(409, f"track {tid!r} has no {model} vector any more", fld)
    s, e = _unit(ends[start]), _unit(ends[end])
    ids, sims = store.similarities(model, np.stack([s, e]))
    s0, s1 = sims[:, 0], sims[:, 1]
    n, interior = len(ids), steps - 2
    t = np.linspace(0.0, 1.0, steps)[1:-1]
    dot = float(np.clip(s @ e, -1.0, 1.0))
    omega = math.acos(dot)
    if math.sin(omega) > 1e-4:  # slerp: unit points on the great circle from s to e
        a, b = np.sin((1 - t) * omega) / math.sin(omega), np.sin(t * omega) / math.sin(omega)
    else:  # (anti)parallel ends: interpolate linearly and renormalise
        a, b = 1 - t, t
        norms = np.maximum(np.sqrt(a * a + b * b + 2 * a * b * dot), 1e-6)
        a, b = a / norms, b / norms
    a, b = a.astype(np.float32), b.astype(np.float32)

    brief_ends = catalog.tracks_brief([start, end])
    taken_keys = {k for tid in (start, end) if (m := brief_ends.get(tid)) and (k := _dup_key(m["title"], m["artist"]))}
    usable = np.ones(n, bool)
    pos = {tid: i for i, tid in enumerate(ids)}
    for tid in (start, end):
        if tid in pos:
            usable[pos[tid]] = False
    usable &= (s0 <= DUPLICATE_COSINE) & (s1 <= DUPLICATE_COSINE)  # near-duplicates of the ends

    # in-plane length of each track: an upper bound of its similarity to every ideal point, used to score only
    # the tracks that can be among a step's best
    e_perp = (s1 - dot * s0) / max(math.sqrt(max(1.0 - dot * dot, 0.0)), 1e-6)
    reach = np.sqrt(s0 * s0 + e_perp * e_perp) if dot < 1 - 1e-6 else np.abs(s0)

    accepted: list[int] = []  # mirror rows, best candidates first, no two near-duplicates
    acc_unit = np.zeros((max(interior, 1) * 2, s.shape[0]), np.float32)
    seen: set[int] = set()
    per_step = 8
    while interior > 0:
        cand_rows = np.flatnonzero(usable)
        if cand_rows.size == 0:
            break
        pool, best = _top_per_step(a, b, s0, s1, reach, cand_rows, per_step)
        order = [int(r) for r in pool[np.argsort(-best, kind="stable")] if int(r) not in seen]
        seen.update(order)
        pool_ids = [ids[r] for r in order]
        vecs = store.get_vectors(model, pool_ids)
        meta = catalog.tracks_brief(pool_ids)
        for r, tid in zip(order, pool_ids):
            if tid not in vecs:  # deleted since the read
                continue
            u = _unit(vecs[tid])
            key = (m := meta.get(tid)) and _dup_key(m["title"], m["artist"])
            if key and key in taken_keys:
                continue
            if accepted and float((acc_unit[: len(accepted)] @ u).max()) > DUPLICATE_COSINE:
                continue
            if len(accepted) == acc_unit.shape[0]:
                acc_unit = np.concatenate([acc_unit, np.zeros_like(acc_unit)])
            acc_unit[len(accepted)] = u
            accepted.append(r)
            if key:
                taken_keys.add(key)
        if len(accepted) >= interior or per_step >= cand_rows.size:
            break
        per_step *= 4

    chosen: list[tuple[int, int]] = []  # (step, row of accepted)
    if interior > 0 and accepted:
        rows = np.array(accepted)
        cost = -(np.outer(a, s0[rows]) + np.outer(b, s1[rows]))
        step_idx, acc_idx = linear_sum_assignment(cost)
        chosen = sorted(zip(step_idx.tolist(), acc_idx.tolist()))
    path = [(start, 0.0)]
    units = [s]
    for step, j in chosen:
        r = accepted[j]
        path.append((ids[r], 1.0 - float(a[step] * s0[r] + b[step] * s1[r])))
        units.append(acc_unit[j])
    path.append((end, 0.0))
    units.append(e)
    u = np.stack(units)
    total = float(np.sum(1.0 - np.einsum("ij,ij->i", u[:-1], u[1:])))
    return path, total


@routes.get("/api/find_path")
@documented("A path of similar tracks from one track to another", query=FindPathQuery, response=FindPathResponse, errors=(404, 409))
async def find_path(request: web.Request) -> web.Response:
    q = parse_query(request, FindPathQuery)
    sc = sidecar_of(request)
    model = _model(sc, q.model)
    start = _resolve(sc, [q.start_song_id], "start_song_id")[0]
    end = _resolve(sc, [q.end_song_id], "end_song_id")[0]
    if start == end:
        raise ApiError(400, "start and end must be different tracks", "end_song_id")
    await asyncio.to_thread(_vectors, sc, model, [start], "start_song_id")  # the store's lock: never on the loop
    await asyncio.to_thread(_vectors, sc, model, [end], "end_song_id")
    path, total = await asyncio.to_thread(song_path, sc.store, sc.catalog, model, start, end, q.max_steps)
    meta = _brief(sc.catalog, [t for t, _ in path])
    return json_response(
        FindPathResponse(
            path=[_track_item(t, meta, d) for t, d in path], total_distance=round(total, 6), model=model, requested_steps=q.max_steps
        )
    )


# ---------------------------------------------------------------------------------------- song alchemy
def _pca_2d(fit: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A 2-D PCA fitted on `fit` (rows), with deterministic signs; returns the projection function.

    The two leading eigenvectors of the covariance by subspace iteration: LAPACK's SVD (and eigh) of matrices
    this small took 0.1 to 0.6 s when the machine was busy (their threads wait on each other), where a few
    hundred 200 x 2 products take about a millisecond."""
    mean = fit.mean(axis=0)
    if fit.shape[0] < 2:
        return lambda x: np.zeros((len(x), 2), np.float32)
    centred = (fit - mean).astype(np.float64)
    comps = _top2_eigenvectors(centred.T @ centred).T
    comps = comps * np.sign(comps[np.arange(2), np.abs(comps).argmax(axis=1)])[:, None]
    comps = comps.astype(np.float32)
    return lambda x: ((np.asarray(x, np.float32) - mean) @ comps.T).astype(np.float32)


def _top2_eigenvectors(cov: np.ndarray, iterations: int = 40) -> np.ndarray:
    """(dim, 2): the leading two eigenvectors of a symmetric positive semi-definite matrix, orthonormal, by
    block subspace iteration (8 vectors, so it converges at the rate of the 9th eigenvalue) and Rayleigh-Ritz."""
    dim = cov.shape[0]
    k = min(8, dim)
    start = cov[:, np.argsort(-np.diag(cov), kind="stable")[:k]]  # inside the range of the matrix
    start = start + 1e-6 * np.sqrt(np.abs(np.diag(cov)).max() + 1e-300) * np.cos(np.outer(np.arange(dim), np.arange(1, k + 1)))
    v, _ = np.linalg.qr(start)
    for _ in range(iterations):
        v, _ = np.linalg.qr(cov @ v)
    vals, vecs = np.linalg.eigh(v.T @ cov @ v)  # k x k
    out = v @ vecs[:, ::-1][:, :2]
    if out.shape[1] < 2:
        out = np.hstack([out, np.zeros((dim, 1))])
    return out


def _scaler(coords: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Centre and scale uniformly so that the fitted coordinates lie in [-1, 1]."""
    if coords.shape[0] == 0:
        return lambda c: c
    centre = coords.mean(axis=0)
    scale = float(np.abs(coords - centre).max()) or 1.0
    return lambda c: (np.asarray(c, np.float32) - centre) / scale


def alchemy(
    store: "VectorStore", model: str, adds: dict[str, np.ndarray], subs: dict[str, np.ndarray], exclude: set[str],
    req: AlchemyRequest, seed: int | None,
) -> dict:
    add_c = _unit(np.mean(list(adds.values()), axis=0))
    sub_c = _unit(np.mean(list(subs.values()), axis=0)) if subs else None
    target = add_c
    if sub_c is not None and req.subtract_weight > 0:
        moved = add_c - req.subtract_weight * sub_c
        if np.linalg.norm(moved) > 1e-6:
            target = _unit(moved)
    sub_labels = list(subs)
    ids, sims = store.similarities(model, np.stack([target] + [subs[k] for k in sub_labels]))
    sim_t = sims[:, 0]
    usable = np.array([tid not in exclude for tid in ids], bool)
    if sub_labels:
        nearest = sims[:, 1:].argmax(axis=1)
        near_sim = sims[np.arange(len(ids)), 1 + nearest]
        near = near_sim >= 1.0 - req.subtract_radius
    else:
        nearest = near_sim = None
        near = np.zeros(len(ids), bool)
    order = np.argsort(-sim_t, kind="stable")
    order = order[usable[order]]
    kept_all = order[~near[order]]
    pool_size = req.n if req.temperature == 0 else max(3 * req.n, req.n + 20)
    pool = kept_all[:pool_size]
    # filtered: the candidates ranked above the pool's last track (those it would otherwise have held); all of
    # them when the pool took every track that was left
    cutoff = int(np.flatnonzero(order == pool[-1])[0]) + 1 if pool.size == pool_size else len(order)
    filtered = order[:cutoff][near[order[:cutoff]]][: max(100, 2 * pool_size)]

    if req.temperature == 0 or pool.size <= req.n:
        chosen = pool[: req.n]
    else:
        rng = np.random.default_rng(seed)
        # Gumbel top-k: the same as drawing from softmax(similarity / temperature) without replacement
        keys = sim_t[pool].astype(np.float64) / req.temperature + rng.gumbel(size=pool.size)
        chosen = pool[np.argsort(-keys, kind="stable")[: req.n]]
        chosen = chosen[np.argsort(-sim_t[chosen], kind="stable")]

    chosen_ids = [ids[i] for i in chosen]
    filtered_ids = [ids[i] for i in filtered]
    pool_ids = [ids[i] for i in pool]
    vecs = store.get_vectors(model, list(dict.fromkeys(pool_ids + filtered_ids)))
    units = {t: _unit(v) for t, v in vecs.items()}
    units.update(adds)
    units.update(subs)
    labels = list(units)
    mat = np.stack([units[t] for t in labels])
    project = _pca_2d(mat)  # fitted on add + subtract + candidates
    fitted = project(mat)
    scale = _scaler(fitted)
    coords = dict(zip(labels, scale(fitted)))
    centroid = scale(project(add_c[None]))[0]
    sub_centroid = scale(project(sub_c[None]))[0] if sub_c is not None else None
    return {
        "chosen": [(t, float(sim_t[i])) for t, i in zip(chosen_ids, chosen)],
        "filtered": [(ids[i], float(sim_t[i]), sub_labels[int(nearest[i])], float(near_sim[i])) for i in filtered],
        "coords": coords, "centroid": centroid, "sub_centroid": sub_centroid, "projection": "pca",
    }


@routes.post("/api/alchemy")
@documented("Song alchemy: tracks near what is added, away from what is subtracted", body=AlchemyRequest, response=AlchemyResponse, errors=(404, 409))
async def alchemy_route(request: web.Request) -> web.Response:
    req = await parse_body(request, AlchemyRequest)
    sc = sidecar_of(request)
    model = _model(sc, req.model)
    if not req.add and not req.add_artists:
        raise ApiError(400, "give at least one track (or artist) to add", "add")
    add_ids = _resolve(sc, req.add, "add")
    sub_ids = _resolve(sc, req.subtract, "subtract")
    if both := set(add_ids) & set(sub_ids):
        raise ApiError(400, f"track {sorted(both)[0]!r} is both added and subtracted", "subtract")
    adds = await asyncio.to_thread(_vectors, sc, model, add_ids, "add")
    subs = await asyncio.to_thread(_vectors, sc, model, sub_ids, "subtract")
    if req.add_artists or req.subtract_artists:
        index = await asyncio.to_thread(_artist_index, sc, model)
        for names, target, fld in ((req.add_artists, adds, "add_artists"), (req.subtract_artists, subs, "subtract_artists")):
            for name in names:
                row = _find_artist(index, name, fld)
                target[f"artist:{index.names[row]}"] = index.centroids[row]
    seed = None
    if req.temperature > 0:
        seed = req.seed if req.seed is not None else int(np.random.default_rng().integers(0, 2**31))
    out = await asyncio.to_thread(alchemy, sc.store, model, adds, subs, set(add_ids) | set(sub_ids), req, seed)
    coords = out["coords"]
    def xy(label: str) -> dict[str, float]:
        c = coords.get(label, (0.0, 0.0))
        return {"x": round(float(c[0]), 4), "y": round(float(c[1]), 4)}

    wanted = [t for t, _ in out["chosen"]] + [f[0] for f in out["filtered"]] + list(adds) + list(subs)
    meta = _brief(sc.catalog, [t for t in wanted if not t.startswith("artist:")])

    def point(label: str) -> AlchemyPoint:
        if label.startswith("artist:"):
            return AlchemyPoint(item_id=label, title=label[7:], author=label[7:], **xy(label))
        m = meta.get(label) or {}
        return AlchemyPoint(item_id=m.get("out_id", label), title=m.get("title"), author=m.get("artist"), album=m.get("album"), **xy(label))

    sub_c = out["sub_centroid"]
    return json_response(
        AlchemyResponse(
            results=[_track_item(t, meta, 1 - s, AlchemyResult, similarity=round(s, 6), **xy(t)) for t, s in out["chosen"]],
            filtered_out=[
                _track_item(
                    t, meta, 1 - s, FilteredTrack, nearest_subtract=(meta.get(lab) or {}).get("out_id", lab),
                    subtract_distance=round(1 - ns, 6), **xy(t),
                )
                for t, s, lab, ns in out["filtered"]
            ],
            add_points=[point(t) for t in adds],
            sub_points=[point(t) for t in subs],
            centroid_2d=(round(float(out["centroid"][0]), 4), round(float(out["centroid"][1]), 4)),
            subtract_centroid_2d=None if sub_c is None else (round(float(sub_c[0]), 4), round(float(sub_c[1]), 4)),
            projection=out["projection"], model=model, temperature=req.temperature, seed=seed, subtract_radius=req.subtract_radius,
        )
    )


# ----------------------------------------------------------------------------------- sonic fingerprint
def fingerprint_seeds(
    catalog: "Catalog", user: str, *, half_life_days: float, max_listens: int, favorite_weight: float, now: float | None = None
) -> dict[str, dict]:
    """Per seed track: its weight (plays decayed by age, favourites boosted), play count and favourite flag."""
    now = time.time() if now is None else now
    decay = lambda at: 0.5 ** (max(0.0, now - at) / 86400.0 / half_life_days)  # noqa: E731
    seeds: dict[str, dict] = {}
    rows = catalog._q(
        "SELECT track_id, played_at FROM listens WHERE user = ? AND submission = 1 ORDER BY played_at DESC LIMIT ?", (user, max_listens)
    )
    for r in rows:
        s = seeds.setdefault(r["track_id"], {"weight": 0.0, "plays": 0, "favorite": False})
        s["weight"] += decay(r["played_at"])
        s["plays"] += 1
    for tid, at in catalog.favorites(user):
        s = seeds.setdefault(tid, {"weight": 0.0, "plays": 0, "favorite": False})
        s["weight"] = (s["weight"] + decay(at)) * favorite_weight
        s["favorite"] = True
    for tid in catalog.low_rated(user):
        seeds.pop(tid, None)
    return {t: s for t, s in seeds.items() if s["weight"] > 0}


def sonic_fingerprint(sc: "Sidecar", model: str, q: FingerprintQuery) -> FingerprintResponse:
    catalog = sc.catalog
    seeds = fingerprint_seeds(
        catalog, q.user, half_life_days=q.half_life_days, max_listens=q.max_listens, favorite_weight=q.favorite_weight
    )
    if not seeds:
        raise ApiError(
            400, f"user {q.user!r} has no listening history yet: no plays, no starred tracks and none rated 4 or 5", "user"
        )
    vecs = sc.store.get_vectors(model, list(seeds))
    seeds = {t: s for t, s in seeds.items() if t in vecs}
    if not seeds:
        raise ApiError(409, f"none of the tracks user {q.user!r} played or starred has a {model} vector yet", "user")
    total = sum(s["weight"] for s in seeds.values())
    for s in seeds.values():
        s["weight"] /= total
    seed_ids = list(seeds)
    weights = np.array([seeds[t]["weight"] for t in seed_ids], np.float32)
    fp = _unit(weights @ _unit(np.stack([vecs[t] for t in seed_ids])))
    ids, sims = sc.store.similarities(model, np.stack([fp]))
    sim = sims[:, 0]
    skip = set(catalog.low_rated(q.user)) | (set() if q.include_known else set(seeds))
    for i, tid in enumerate(ids):
        if tid in skip:
            sim[i] = -np.inf
    k = min(q.n, int(np.isfinite(sim).sum()))
    top = np.argsort(-sim, kind="stable")[:k]
    acc: Counter = Counter()
    tagged = 0.0
    parsed = _state(sc).tag_probs
    for i in range(0, len(seed_ids), 900):
        chunk = seed_ids[i : i + 900]
        for r in catalog._q(
            f"SELECT track_id, updated_at, tags FROM embeddings WHERE model = 'musicnn' AND status = 'done' AND tags IS NOT NULL"
            f" AND track_id IN ({','.join('?' * len(chunk))})", chunk,
        ):
            hit = parsed.get(r["track_id"])
            if hit is None or hit[0] != r["updated_at"]:
                hit = parsed[r["track_id"]] = (r["updated_at"], json.loads(r["tags"]))
            w = seeds[r["track_id"]]["weight"]
            tagged += w
            for tag, p in hit[1].items():
                acc[tag] += w * p
    top_tags = [TagScore(tag=t, probability=round(p / tagged, 4)) for t, p in acc.most_common(5)] if tagged else []
    ordered = sorted(seeds.items(), key=lambda kv: -kv[1]["weight"])[:100]
    meta = _brief(catalog, [ids[i] for i in top] + [t for t, _ in ordered])
    return FingerprintResponse(
        user=q.user, model=model, half_life_days=q.half_life_days,
        seeds=[
            SeedTrack(
                item_id=(meta.get(t) or {}).get("out_id", t), title=(meta.get(t) or {}).get("title"),
                author=(meta.get(t) or {}).get("artist"), weight=round(s["weight"], 6), plays=s["plays"], favorite=s["favorite"],
            )
            for t, s in ordered
        ],
        top_tags=top_tags,
        results=[_track_item(ids[i], meta, 1 - float(sim[i])) for i in top],
    )


@routes.get("/api/sonic_fingerprint")
@documented("Tracks near a user's listening fingerprint", query=FingerprintQuery, response=FingerprintResponse, errors=(409,))
async def sonic_fingerprint_route(request: web.Request) -> web.Response:
    q = parse_query(request, FingerprintQuery)
    sc = sidecar_of(request)
    model = _model(sc, q.model)
    return json_response(await asyncio.to_thread(sonic_fingerprint, sc, model, q))


async def _fingerprint_generate(request: web.Request, g: FingerprintGenerateQuery) -> web.Response:
    user = g.user or g.navidrome_user or g.jellyfin_user_identifier
    if not user:
        raise ApiError(400, "give the user: navidrome_user (or user)", "navidrome_user")
    sc = sidecar_of(request)
    model = _model(sc, g.model)
    out = await asyncio.to_thread(sonic_fingerprint, sc, model, FingerprintQuery(user=user, n=g.n, model=model))
    return json_response(out.results)


@routes.get("/api/sonic_fingerprint/generate")
@documented("Sonic fingerprint, AudioMuse-AI's form", query=FingerprintGenerateQuery, response=list[ExploreTrack], errors=(409,))
async def fingerprint_generate_get(request: web.Request) -> web.Response:
    """AudioMuse-AI's form: a plain list of tracks."""
    return await _fingerprint_generate(request, parse_query(request, FingerprintGenerateQuery))


@routes.post("/api/sonic_fingerprint/generate")
@documented("Sonic fingerprint, AudioMuse-AI's form, POSTed", body=FingerprintGenerateQuery, response=list[ExploreTrack], errors=(409,))
async def fingerprint_generate_post(request: web.Request) -> web.Response:
    return await _fingerprint_generate(request, await parse_body(request, FingerprintGenerateQuery))


# ------------------------------------------------------------------------------------------ music map
def _mirror_sig(store: "VectorStore", model: str) -> tuple:
    with store._lock:
        ids = tuple(store.mirrors[model].ids)
    return len(ids), hash(ids)


def _fit(unit: np.ndarray, method: str) -> tuple[np.ndarray, Callable | None, str]:
    """2-D coordinates of the rows, and a transform for new rows where the method has one."""
    n = unit.shape[0]
    if method == "auto":
        method = "tsne" if 5 <= n <= TSNE_MAX else "pca"
    if method == "tsne" and n >= 5:
        from sklearn.manifold import TSNE

        raw = TSNE(
            n_components=2, perplexity=min(30.0, (n - 1) / 3.0), init="pca", metric="cosine", random_state=0, n_jobs=1
        ).fit_transform(unit).astype(np.float32)
        scale = _scaler(raw)
        return scale(raw), None, "tsne"
    project = _pca_2d(unit)
    raw = project(unit)
    scale = _scaler(raw)
    return scale(raw), (lambda x: scale(project(x))), "pca"


def refresh_projection(store: "VectorStore", model: str, method: str, old: Projection | None, version: int) -> Projection:
    """The map of the mirror as it is now: `old` patched when the library moved little, else a new fit."""
    with store._lock:
        m = store.mirrors[model]
        ids = list(m.ids)
        sig = (len(ids), hash(tuple(ids)))
        if old is not None and old.sig == sig:
            return old
        if old is not None:
            cur = set(ids)
            drift = len(cur.symmetric_difference(old.fitted)) / max(1, len(old.fitted))
            if drift <= MAP_DRIFT and cur:
                added = [t for t in ids if t not in old.pos]
                new_unit = _unit(m.matrix[[m.pos[t] for t in added]]) if added else None
                placed_unit = None
                if added and old.transform is None:
                    kept = [t for t in ids if t in old.pos]
                    placed_unit = (kept, _unit(m.matrix[[m.pos[t] for t in kept]]))
                old = (old, added, new_unit, placed_unit)
            else:
                old = None
        if old is None:
            unit = _unit(m.matrix.copy()) if ids else np.zeros((0, 1), np.float32)
    now = time.time()
    if old is None:
        coords, transform, used = _fit(unit, method) if ids else (np.zeros((0, 2), np.float32), None, "pca")
        return Projection(used, ids, coords, frozenset(ids), transform, sig, version, now)
    prev, added, new_unit, placed = old
    coords = np.zeros((len(ids), 2), np.float32)
    known = [i for i, t in enumerate(ids) if t in prev.pos]
    coords[known] = prev.coords[[prev.pos[ids[i]] for i in known]]
    if added:
        if prev.transform is not None:
            new_xy = prev.transform(new_unit)
        else:  # no transform (t-SNE): among the nearest placed tracks, weighted by inverse cosine distance
            kept, kept_unit = placed
            k = min(KNN_PLACE, len(kept))
            sims = new_unit @ kept_unit.T
            nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            w = 1.0 / (1.0 - np.take_along_axis(sims, nn, axis=1) + 1e-3)
            kept_xy = np.array([prev.coords[prev.pos[t]] for t in kept])
            new_xy = (kept_xy[nn] * w[..., None]).sum(axis=1) / w.sum(axis=1, keepdims=True)
        pos = {t: i for i, t in enumerate(ids)}
        coords[[pos[t] for t in added]] = new_xy
    return Projection(prev.method, ids, coords, prev.fitted, prev.transform, sig, version, now)


async def _projection(sc: "Sidecar", model: str, method: str) -> Projection:
    st = _state(sc)
    key = (model, method)
    lock = st.map_locks.setdefault(key, asyncio.Lock())
    async with lock:
        old = st.maps.get(key)
        if old is not None and await asyncio.to_thread(_mirror_sig, sc.store, model) == old.sig:
            return old
        st.versions += 1
        proj = await asyncio.to_thread(refresh_projection, sc.store, model, method, old, st.versions)
        st.maps[key] = proj
        return proj


def _map_labels(catalog: "Catalog", st: ExploreState) -> tuple[tuple, dict[str, dict]]:
    """(stamp, {track id: title, artist, album, genre, tag}), read again only when tracks or tags changed."""
    stamp = tuple(catalog._q("SELECT COUNT(*), MAX(updated_at), TOTAL(LENGTH(artist)) FROM tracks")[0])
    tag_stamp, tags = _musicnn_tags(catalog, st)
    if st.labels is not None and st.labels[0] == (stamp, tag_stamp):
        return st.labels
    rows = catalog._q("SELECT track_id, title, artist, album, genre FROM tracks")
    labels = {r["track_id"]: dict(r, tag=(tags.get(r["track_id"]) or (0, None))[1]) for r in rows}
    st.labels = ((stamp, tag_stamp), labels)
    return st.labels


def map_body(sc: "Sidecar", proj: Projection, q: MapQuery, model: str) -> bytes:
    st = _state(sc)
    stamp, labels = _map_labels(sc.catalog, st)
    ext_stamp = tuple(sc.catalog._q("SELECT COUNT(*), MAX(rowid) FROM external_ids")[0])
    key = (model, q.method, proj.version, stamp, ext_stamp, q.colour_by, q.percent)
    if (body := st.map_bodies.get(key)) is not None:
        return body
    n = len(proj.ids)
    idx = np.arange(n)
    if q.percent < 100 and n:
        idx = np.unique(np.linspace(0, n - 1, max(1, n * q.percent // 100)).astype(int))
    field_of = {"tag": "tag", "genre": "genre", "artist": "artist", "album": "album", "none": None}[q.colour_by]
    shown = _server_ids(sc.catalog, [proj.ids[i] for i in idx.tolist()])
    items = []
    for i in idx.tolist():
        tid = proj.ids[i]
        lab = labels.get(tid) or {}
        items.append({
            "item_id": shown[tid], "x": round(float(proj.coords[i, 0]), 4), "y": round(float(proj.coords[i, 1]), 4),
            "title": lab.get("title"), "author": lab.get("artist"), "tag": lab.get("tag"),
            "label": lab.get(field_of) if field_of else None,
        })
    legend = Counter(it["label"] for it in items)
    body = json.dumps({
        "model": model, "projection": proj.method, "colour_by": q.colour_by, "count": len(items), "total": n,
        "computed_at": proj.computed_at, "legend": [{"label": k, "count": v} for k, v in legend.most_common()], "items": items,
    }, separators=(",", ":")).encode()
    st.map_bodies = {k: v for k, v in st.map_bodies.items() if k[:5] == key[:5]}  # drop bodies of older versions
    st.map_bodies[key] = body
    return body


@routes.get("/api/map")
@documented("A 2-D map of the library", query=MapQuery, response=MapResponse)
async def map_route(request: web.Request) -> web.Response:
    q = parse_query(request, MapQuery)
    sc = sidecar_of(request)
    model = _model(sc, q.model)
    if q.method == "umap":
        raise ApiError(400, "UMAP is not available (too slow on a CPU: 110 s for 10k tracks); use pca, tsne or auto", "method")
    if q.method == "tsne" and len(sc.store.mirrors[model]) > TSNE_MAX:
        raise ApiError(400, f"t-SNE is offered up to {TSNE_MAX} tracks; this library has more: use pca or auto", "method")
    proj = await _projection(sc, model, q.method)
    body = await asyncio.to_thread(map_body, sc, proj, q, model)
    return web.Response(body=body, content_type="application/json")


@routes.post("/api/map/selection")
@documented("Details of tracks selected on the map", body=MapSelection, response=MapSelectionResponse, errors=(404,))
async def map_selection(request: web.Request) -> web.Response:
    req = await parse_body(request, MapSelection)
    sc = sidecar_of(request)
    ids = _resolve(sc, req.item_ids, "item_ids")
    meta = _brief(sc.catalog, ids)
    tracks = [
        SelectedTrack(
            item_id=m["out_id"], title=m.get("title"), author=m.get("artist"), album=m.get("album"), duration_s=m.get("duration_s")
        )
        for t in ids if (m := meta.get(t)) is not None
    ]
    return json_response(
        MapSelectionResponse(count=len(tracks), duration_s=round(sum(t.duration_s or 0 for t in tracks), 3), tracks=tracks)
    )


# ------------------------------------------------------------------------------------ similar artists
def _artist_index(sc: "Sidecar", model: str) -> ArtistIndex:
    """Artist vectors (mean of their tracks' unit vectors, renormalised), rebuilt when tracks or vectors change."""
    catalog, st = sc.catalog, _state(sc)
    writes = catalog.writes() + (len(sc.store.mirrors[model]),)
    with st.artists_lock:
        idx = st.artists.get(model)
        if idx is not None and idx.writes == writes:  # nothing written since: skip the stamp's table scans
            return idx
        stamp = (
            tuple(catalog._q("SELECT COUNT(*), MAX(updated_at), TOTAL(LENGTH(artist)) FROM tracks")[0])
            + tuple(catalog._q("SELECT COUNT(*), MAX(updated_at) FROM embeddings WHERE model = ? AND status = 'done'", (model,))[0])
            + (len(sc.store.mirrors[model]),)
        )
        if idx is not None and idx.stamp == stamp:
            idx.writes = writes
            return idx
        rows = catalog._q("SELECT track_id, artist, title FROM tracks WHERE artist IS NOT NULL AND TRIM(artist) != ''")
        have, raw = sc.store.stacked(model, [r["track_id"] for r in rows])
        kept = set(have)
        rows = [r for r in rows if r["track_id"] in kept]
        names: list[str] = []
        by_key: dict[str, int] = {}
        member_lists: list[list[int]] = []
        for i, r in enumerate(rows):
            name = r["artist"].strip()
            k = name.casefold()
            if k not in by_key:
                by_key[k] = len(names)
                names.append(name)
                member_lists.append([])
            member_lists[by_key[k]].append(i)
        dim = sc.embedders.ready[model].dim
        unit = _unit(raw) if rows else np.zeros((0, dim), np.float32)
        members = [np.array(m, int) for m in member_lists]
        centroids = _unit(np.stack([unit[m].mean(axis=0) for m in members])) if members else np.zeros((0, dim), np.float32)
        idx = ArtistIndex(stamp, names, by_key, centroids, members, [r["track_id"] for r in rows], [r["title"] for r in rows], unit, writes)
        st.artists[model] = idx
        return idx


def _find_artist(index: ArtistIndex, name: str, field: str) -> int:
    row = index.by_key.get(name.strip().casefold())
    if row is None:
        raise ApiError(404, f"no artist named {name!r} among the analysed tracks (tracks without an artist tag form none)", field)
    return row


def similar_artists(catalog: "Catalog", index: ArtistIndex, row: int, n: int, with_songs: bool) -> list[SimilarArtist]:
    sims = index.centroids @ index.centroids[row]
    sims[row] = -np.inf
    k = min(n, len(index.names) - 1)
    top = np.argsort(-sims, kind="stable")[:k]

    def best_rows(of: int, towards: int, count: int = 5) -> np.ndarray:
        rows = index.members[of]
        return rows[np.argsort(-(index.unit[rows] @ index.centroids[towards]), kind="stable")[:count]]

    picks = {(a, b): best_rows(a, b) for j in top for a, b in ((row, j), (j, row))} if with_songs else {}
    shown = _server_ids(catalog, [index.track_ids[r] for rows in picks.values() for r in rows])

    def songs(of: int, towards: int) -> list[SongRef]:
        return [SongRef(item_id=shown[index.track_ids[r]], title=index.titles[r]) for r in picks[(of, towards)]]

    return [
        SimilarArtist(
            artist=index.names[j], artist_id=None, divergence=round(1 - float(sims[j]), 6), distance=round(1 - float(sims[j]), 6),
            track_count=len(index.members[j]),
            component_matches=[ComponentMatch(artist1_representative_songs=songs(row, j), artist2_representative_songs=songs(j, row))]
            if with_songs else None,
        )
        for j in top
    ]


@routes.get("/api/similar_artists")
@documented("Artists whose tracks sound alike", query=SimilarArtistsQuery, response=list[SimilarArtist], errors=(404,))
async def similar_artists_route(request: web.Request) -> web.Response:
    q = parse_query(request, SimilarArtistsQuery)
    if not (q.artist or q.artist_id):
        raise ApiError(400, "give artist (a name) or artist_id", "artist")
    sc = sidecar_of(request)
    model = _model(sc, q.model)
    index = await asyncio.to_thread(_artist_index, sc, model)
    row = _find_artist(index, q.artist or q.artist_id, "artist" if q.artist else "artist_id")
    return json_response(await asyncio.to_thread(similar_artists, sc.catalog, index, row, q.n, q.include_component_matches))


# --------------------------------------------------------------------------------------- track search
def search_tracks(catalog: "Catalog", text: str, limit: int, offset: int) -> list[SearchTrack]:
    """Every word must appear in the title, artist or album (case-insensitive)."""
    words = text.split()[:8]
    esc = lambda w: "%" + w.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"  # noqa: E731
    where = " AND ".join("(title LIKE ? ESCAPE '\\' OR artist LIKE ? ESCAPE '\\' OR album LIKE ? ESCAPE '\\')" for _ in words)
    args = [a for w in words for a in (esc(w),) * 3]
    rows = catalog._q(
        f"SELECT track_id, title, artist, album FROM tracks WHERE {where} ORDER BY artist IS NULL, artist, album, title, track_id"
        " LIMIT ? OFFSET ?",
        args + [limit, offset],
    )
    shown = _server_ids(catalog, [r["track_id"] for r in rows])
    return [
        SearchTrack(item_id=shown[r["track_id"]], title=r["title"], author=r["artist"], album=(r["album"] or "").strip() or "unknown")
        for r in rows
    ]


@routes.get("/api/search_tracks")
@documented("Track search, AudioMuse-AI's form", query=SearchTracksQuery, response=list[SearchTrack])
async def search_tracks_route(request: web.Request) -> web.Response:
    q = parse_query(request, SearchTracksQuery)
    text = q.search_query.strip() or f"{q.artist.strip()} {q.title.strip()}".strip()
    if len(text) < 3:  # as AudioMuse-AI: too short to search
        return json_response([])
    if q.end is not None and q.end <= q.start:
        return json_response([])
    limit = min(100, (q.end - q.start) if q.end is not None else 20)
    return json_response(await asyncio.to_thread(search_tracks, sidecar_of(request).catalog, text, limit, q.start))

"""Song alchemy: tracks near what is added (tracks, artists) and away from what is subtracted, with a 2-D plot
of the ingredients and candidates. A candidate close to any subtracted track is filtered out."""
from __future__ import annotations

import numpy as np

from schemas.explore import AlchemyPoint, AlchemyRequest, AlchemyResponse, AlchemyResult, FilteredTrack
from sidecar.data import Catalog, VectorStore
from sidecar.data.ids import shown_id
from sidecar.data.recordings import Recordings
from sidecar.errors import BadInput
from sidecar.explore.artists import artist_index, artist_vector, find_artist
from sidecar.explore.common import resolve, track_item, unit, unit_vectors
from sidecar.explore.plane import pca_2d, scaler
from sidecar.explore.state import ExploreCaches

ARTIST = "artist:"  # the label of an artist's centroid among the ingredients
SUBTRACT_SHARE = 0.1  # by default a subtracted track takes its nearest tenth of the library with it


def song_alchemy(catalog: Catalog, store: VectorStore, caches: ExploreCaches, model: str, req: AlchemyRequest) -> AlchemyResponse:
    if not req.add and not req.add_artists:
        raise BadInput("give at least one track (or artist) to add", "add")
    add_ids = resolve(catalog, req.add, "add")
    sub_ids = resolve(catalog, req.subtract, "subtract")
    if both := set(add_ids) & set(sub_ids):
        raise BadInput(f"track {sorted(both)[0]!r} is both added and subtracted", "subtract")
    adds = unit_vectors(store, model, add_ids, "add")
    subs = unit_vectors(store, model, sub_ids, "subtract")
    if req.add_artists or req.subtract_artists:
        index = artist_index(catalog, store, caches, model)
        for names, target, fld in ((req.add_artists, adds, "add_artists"), (req.subtract_artists, subs, "subtract_artists")):
            for name in names:
                row = find_artist(index, name, fld)
                target[ARTIST + index.names[row]] = artist_vector(store, index, row, model)
    seed = None
    if req.temperature > 0:
        seed = req.seed if req.seed is not None else int(np.random.default_rng().integers(0, 2**31))
    out = alchemy(store, model, adds, subs, set(add_ids) | set(sub_ids), req, seed, Recordings.of(catalog))
    coords = out["coords"]

    def xy(label: str) -> dict[str, float]:
        c = coords.get(label, (0.0, 0.0))
        return {"x": round(float(c[0]), 4), "y": round(float(c[1]), 4)}

    wanted = [t for t, _ in out["chosen"]] + [f[0] for f in out["filtered"]] + list(adds) + list(subs)
    meta = catalog.tracks_brief(dict.fromkeys(t for t in wanted if not t.startswith(ARTIST)))

    def shown(label: str) -> str:
        return shown_id(meta[label]) if label in meta else label

    def point(label: str) -> AlchemyPoint:
        if label.startswith(ARTIST):
            name = label[len(ARTIST):]
            return AlchemyPoint(item_id=label, title=name, author=name, **xy(label))
        m = meta.get(label) or {}
        return AlchemyPoint(item_id=shown(label), title=m.get("title"), author=m.get("artist"), album=m.get("album"), **xy(label))

    def rounded(c) -> tuple[float, float]:
        return round(float(c[0]), 4), round(float(c[1]), 4)

    return AlchemyResponse(
        results=[track_item(t, meta, 1 - s, AlchemyResult, similarity=round(s, 6), **xy(t)) for t, s in out["chosen"]],
        filtered_out=[
            track_item(t, meta, 1 - s, FilteredTrack, nearest_subtract=shown(lab), subtract_distance=round(1 - ns, 6), **xy(t))
            for t, s, lab, ns in out["filtered"]
        ],
        add_points=[point(t) for t in adds],
        sub_points=[point(t) for t in subs],
        centroid_2d=rounded(out["centroid"]),
        subtract_centroid_2d=None if out["sub_centroid"] is None else rounded(out["sub_centroid"]),
        projection=out["projection"], model=model, temperature=req.temperature, seed=seed, subtract_radius=round(out["radius"], 6),
    )


def alchemy(
    store: VectorStore, model: str, adds: dict[str, np.ndarray], subs: dict[str, np.ndarray], exclude: set[str],
    req: AlchemyRequest, seed: int | None, recordings: Recordings,
) -> dict:
    """The chosen tracks [(id, similarity to the target)], the filtered ones [(id, similarity, nearest
    subtracted label, its similarity)], and 2-D coordinates of every label, the add and subtract centroids. The
    candidates hold one file of each recording, none of an ingredient's (`recordings`)."""
    add_c = unit(np.mean(list(adds.values()), axis=0))
    sub_c = unit(np.mean(list(subs.values()), axis=0)) if subs else None
    target = add_c
    if sub_c is not None and req.subtract_weight > 0:
        moved = add_c - req.subtract_weight * sub_c
        if np.linalg.norm(moved) > 1e-6:
            target = unit(moved)
    sub_labels = list(subs)
    ids, sims = store.similarities(model, np.stack([target] + [subs[k] for k in sub_labels]))
    sim_t = sims[:, 0]
    usable = np.array([tid not in exclude for tid in ids], bool)
    radius = req.subtract_radius
    if sub_labels:
        if radius is None:  # each subtracted track's nearest tenth: a cosine scale differs from model to model
            cut = np.quantile(sims[:, 1:], 1 - SUBTRACT_SHARE, axis=0)
            radius = float(1 - cut.min())
        else:
            cut = np.full(len(sub_labels), 1.0 - radius)
        nearest = (sims[:, 1:] - cut).argmax(axis=1)
        near_sim = sims[np.arange(len(ids)), 1 + nearest]
        near = near_sim >= cut[nearest]
    else:
        nearest = near_sim = None
        near = np.zeros(len(ids), bool)
    order = np.argsort(-sim_t, kind="stable")
    order = order[usable[order]]
    kept_all = order[~near[order]]
    pool_size = req.n if req.temperature == 0 else max(3 * req.n, req.n + 20)
    pool = np.array(recordings.distinct(kept_all, pool_size, key=ids.__getitem__, taken=exclude), int)
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
    units = {t: unit(v) for t, v in vecs.items()}
    units.update(adds)
    units.update(subs)
    labels = list(units)
    mat = np.stack([units[t] for t in labels])
    project = pca_2d(mat)  # fitted on add + subtract + candidates
    fitted = project(mat)
    scale = scaler(fitted)
    coords = dict(zip(labels, scale(fitted)))
    centroid = scale(project(add_c[None]))[0]
    sub_centroid = scale(project(sub_c[None]))[0] if sub_c is not None else None
    return {
        "chosen": [(t, float(sim_t[i])) for t, i in zip(chosen_ids, chosen)],
        "filtered": [(ids[i], float(sim_t[i]), sub_labels[int(nearest[i])], float(near_sim[i])) for i in filtered],
        "coords": coords, "centroid": centroid, "sub_centroid": sub_centroid, "projection": "pca",
        "radius": radius if radius is not None else 0.0,
    }

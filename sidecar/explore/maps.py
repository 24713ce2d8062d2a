"""The music map: every track of a model placed in 2-D (PCA, or t-SNE up to TSNE_MAX tracks), coloured by a
label, and the details of tracks selected on it.

A map is computed once per (model, method) and cached in ExploreCaches; when the library changed by at most
MAP_DRIFT of the tracks it was fitted on, it is patched (new tracks placed by the PCA's transform, or among
their nearest placed neighbours for t-SNE, removed ones dropped) instead of refitted. Its JSON answer is cached
too, per colouring and sample, until the map changes or the catalog is written to. A map is fitted on the
vectors as the store holds them (projected: the same cosines, a fifth of the memory), and fitted again, not
patched, when the model's space is refitted (VectorStore.held_stamp), which moves them to other axes."""
from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Callable

import numpy as np

from schemas.explore import MapQuery, MapSelection, MapSelectionResponse, SelectedTrack
from sidecar.data import Catalog, VectorStore
from sidecar.data.ids import shown_id
from sidecar.errors import BadInput
from sidecar.explore.common import resolve, unit
from sidecar.explore.plane import pca_2d, scaler
from sidecar.explore.state import ExploreCaches, Projection

MAP_DRIFT = 0.05  # a cached map is refitted once the library differs from the fitted one by more than this
TSNE_MAX = 2000  # t-SNE above this takes too long for a first call (measured: 2,000 in 4 s, 3,000 in 31 s)
KNN_PLACE = 5  # a track added to a t-SNE map sits among its nearest placed neighbours
LABEL_FIELD = {"tag": "tag", "genre": "genre", "artist": "artist", "album": "album", "none": None}  # colour_by -> label


def signature(ids) -> tuple:
    """What tells one library (its track ids, in the store's order) from another."""
    ids = tuple(ids)
    return len(ids), hash(ids)


async def map_json(catalog: Catalog, store: VectorStore, caches: ExploreCaches, model: str, q: MapQuery) -> bytes:
    """The map's JSON answer (MapResponse). The catalog and store are read in worker threads; one fit of a map
    runs at a time, and requests for it meanwhile wait for that fit."""
    if q.method == "umap":
        raise BadInput("UMAP is not available (too slow on a CPU: 110 s for 10k tracks); use pca, tsne or auto", "method")
    if q.method == "tsne" and await asyncio.to_thread(store.size, model) > TSNE_MAX:
        raise BadInput(f"t-SNE is offered up to {TSNE_MAX} tracks; this library has more: use pca or auto", "method")
    proj = await projection(caches, store, model, q.method)
    return await asyncio.to_thread(map_body, catalog, caches, proj, q, model)


async def projection(caches: ExploreCaches, store: VectorStore, model: str, method: str) -> Projection:
    key = (model, method)
    async with caches.map_locks.setdefault(key, asyncio.Lock()):
        old = caches.maps.get(key)
        proj = await asyncio.to_thread(refresh_projection, store, model, method, old, caches.map_versions + 1)
        if proj is not old:
            caches.map_versions, caches.maps[key] = proj.version, proj
        return proj


def fit(units: np.ndarray, method: str) -> tuple[np.ndarray, Callable | None, str]:
    """2-D coordinates of the rows, a transform for new rows where the method has one, and the method used."""
    n = units.shape[0]
    if method == "auto":
        method = "tsne" if 5 <= n <= TSNE_MAX else "pca"
    if method == "tsne" and n >= 5:
        from sklearn.manifold import TSNE

        raw = TSNE(
            n_components=2, perplexity=min(30.0, (n - 1) / 3.0), init="pca", metric="cosine", random_state=0, n_jobs=1
        ).fit_transform(units).astype(np.float32)
        return scaler(raw)(raw), None, "tsne"
    project = pca_2d(units)
    raw = project(units)
    scale = scaler(raw)
    return scale(raw), (lambda x: scale(project(x))), "pca"


def refresh_projection(store: VectorStore, model: str, method: str, old: Projection | None, version: int) -> Projection:
    """The map of the model's vectors as they are now: `old` itself while its tracks are the same, `old`
    patched when the tracks moved little, else a new fit."""
    stamp = store.held_stamp(model)  # first: a refit after it makes the next call fit again
    ids = list(store.track_ids(model))
    sig = signature(ids) + (stamp,)
    if old is not None and old.sig == sig:
        return old
    if old is not None and ids and old.sig[-1] == stamp:  # held vectors of other axes cannot be patched in
        drift = len(set(ids).symmetric_difference(old.fitted)) / max(1, len(old.fitted))
        if drift <= MAP_DRIFT:
            return _patched(store, model, old, ids, version, stamp)
    # as the mirror holds them: the same cosines, a fifth of the memory at 100k (80 MB, not 0.4 GB)
    ids, matrix = store.snapshot(model, held=True)
    if not ids:
        return Projection("pca", [], np.zeros((0, 2), np.float32), frozenset(), None, signature(ids) + (stamp,), version, time.time())
    coords, transform, used = fit(unit(matrix), method)
    return Projection(used, list(ids), coords, frozenset(ids), transform, signature(ids) + (stamp,), version, time.time())


def _patched(store: VectorStore, model: str, old: Projection, ids: list[str], version: int, stamp: object) -> Projection:
    """`old` with the tracks that left dropped and the new ones placed: by its transform, or (t-SNE) at the
    mean of their nearest placed tracks' points, weighted by inverse cosine distance."""
    added, added_vecs = store.stacked(model, [t for t in ids if t not in old.pos], held=True)
    new = set(added)
    ids = [t for t in ids if t in old.pos or t in new]  # a track deleted between the two reads is left out
    coords = np.zeros((len(ids), 2), np.float32)
    known = [i for i, t in enumerate(ids) if t in old.pos]
    coords[known] = old.coords[[old.pos[ids[i]] for i in known]]
    if added:
        new_unit = unit(added_vecs)
        if old.transform is not None:
            new_xy = old.transform(new_unit)
        else:
            kept, kept_vecs = store.stacked(model, [t for t in ids if t in old.pos], held=True)
            k = min(KNN_PLACE, len(kept))
            sims = new_unit @ unit(kept_vecs).T
            nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            w = 1.0 / (1.0 - np.take_along_axis(sims, nn, axis=1) + 1e-3)
            kept_xy = old.coords[[old.pos[t] for t in kept]]
            new_xy = (kept_xy[nn] * w[..., None]).sum(axis=1) / w.sum(axis=1, keepdims=True)
        pos = {t: i for i, t in enumerate(ids)}
        coords[[pos[t] for t in added]] = new_xy
    return Projection(old.method, ids, coords, old.fitted, old.transform, signature(ids) + (stamp,), version, time.time())


def map_labels(catalog: Catalog, caches: ExploreCaches) -> tuple[tuple, dict[str, dict]]:
    """(stamp, {track id: title, artist, album, genre, tag}), read again only when tracks or tags changed."""
    stamp = (catalog.tracks_stamp(), catalog.model_stamp("musicnn"))
    if caches.labels is not None and caches.labels[0] == stamp:
        return caches.labels
    tags = caches.dominant_tags.current(catalog)
    caches.labels = (stamp, {t: dict(r, tag=tags.get(t)) for t, r in catalog.track_labels().items()})
    return caches.labels


def map_body(catalog: Catalog, caches: ExploreCaches, proj: Projection, q: MapQuery, model: str) -> bytes:
    key = (model, q.method, proj.version, catalog.writes(), q.colour_by, q.percent)  # any write: labels or shown ids may differ
    if (body := caches.map_bodies.get(key)) is not None:
        return body
    _, labels = map_labels(catalog, caches)
    n = len(proj.ids)
    idx = np.arange(n)
    if q.percent < 100 and n:
        idx = np.unique(np.linspace(0, n - 1, max(1, n * q.percent // 100)).astype(int))
    label_field = LABEL_FIELD[q.colour_by]
    shown = catalog.shown_ids(proj.ids[i] for i in idx.tolist())
    items = []
    for i in idx.tolist():
        tid = proj.ids[i]
        lab = labels.get(tid) or {}
        items.append({
            "item_id": shown[tid], "x": round(float(proj.coords[i, 0]), 4), "y": round(float(proj.coords[i, 1]), 4),
            "title": lab.get("title"), "author": lab.get("artist"), "tag": lab.get("tag"),
            "label": lab.get(label_field) if label_field else None,
        })
    legend = Counter(it["label"] for it in items)
    body = json.dumps({
        "model": model, "projection": proj.method, "colour_by": q.colour_by, "count": len(items), "total": n,
        "computed_at": proj.computed_at, "legend": [{"label": k, "count": v} for k, v in legend.most_common()], "items": items,
    }, separators=(",", ":")).encode()
    caches.map_bodies = {k: v for k, v in caches.map_bodies.items() if k[:4] == key[:4]}  # drop the answers of older maps
    caches.map_bodies[key] = body
    return body


def selection(catalog: Catalog, req: MapSelection) -> MapSelectionResponse:
    """The tracks selected on the map, in the order given, for a playlist."""
    ids = resolve(catalog, req.item_ids, "item_ids")
    meta = catalog.tracks_brief(ids)
    tracks = [
        SelectedTrack(
            item_id=shown_id(m), title=m.get("title"), author=m.get("artist"), album=m.get("album"), duration_s=m.get("duration_s")
        )
        for t in ids if (m := meta.get(t)) is not None
    ]
    return MapSelectionResponse(count=len(tracks), duration_s=round(sum(t.duration_s or 0 for t in tracks), 3), tracks=tracks)

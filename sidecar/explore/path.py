"""Song paths: a walk of similar tracks from one track to another (AudioMuse-AI's /api/find_path).

The ideal points are a spherical interpolation between the two ends' unit vectors; the tracks nearest them are
assigned to them all at once (a linear assignment maximising total similarity), and no two tracks of a path
are one song or one recording (see sidecar/explore/__init__.py)."""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

from schemas.explore import FindPathQuery, FindPathResponse
from sidecar.data import Catalog, VectorStore
from sidecar.data.ids import song_key
from sidecar.data.recordings import Recordings
from sidecar.errors import BadInput, Conflict
from sidecar.explore.common import resolve, track_item, unit, unit_vectors


def find_path(catalog: Catalog, store: VectorStore, model: str, q: FindPathQuery) -> FindPathResponse:
    start = resolve(catalog, [q.start_song_id], "start_song_id")[0]
    end = resolve(catalog, [q.end_song_id], "end_song_id")[0]
    if start == end:
        raise BadInput("start and end must be different tracks", "end_song_id")
    unit_vectors(store, model, [start], "start_song_id")
    unit_vectors(store, model, [end], "end_song_id")
    path, total = song_path(store, catalog, model, start, end, q.max_steps)
    meta = catalog.tracks_brief([t for t, _ in path])
    return FindPathResponse(
        path=[track_item(t, meta, d) for t, d in path], total_distance=round(total, 6), model=model, requested_steps=q.max_steps
    )


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


def _slerp_weights(dot: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): the interior ideal points are a*s + b*e, unit points on the great circle from s to e."""
    t = np.linspace(0.0, 1.0, steps)[1:-1]
    omega = math.acos(dot)
    if math.sin(omega) > 1e-4:
        a, b = np.sin((1 - t) * omega) / math.sin(omega), np.sin(t * omega) / math.sin(omega)
    else:  # (anti)parallel ends: interpolate linearly and renormalise
        a, b = 1 - t, t
        norms = np.maximum(np.sqrt(a * a + b * b + 2 * a * b * dot), 1e-6)
        a, b = a / norms, b / norms
    return a.astype(np.float32), b.astype(np.float32)


def song_path(
    store: VectorStore, catalog: Catalog, model: str, start: str, end: str, steps: int
) -> tuple[list[tuple[str, float]], float]:
    """[(track id, cosine distance to its ideal point)] from start to end, and the summed step distances."""
    ends = store.get_vectors(model, [start, end])
    for tid, fld in ((start, "start_song_id"), (end, "end_song_id")):
        if tid not in ends:  # deleted since the request was checked
            raise Conflict(f"track {tid!r} has no {model} vector any more", fld)
    s, e = unit(ends[start]), unit(ends[end])
    ids, sims = store.similarities(model, np.stack([s, e]))
    s0, s1 = sims[:, 0], sims[:, 1]
    n, interior = len(ids), steps - 2
    dot = float(np.clip(s @ e, -1.0, 1.0))
    a, b = _slerp_weights(dot, steps)

    brief_ends = catalog.tracks_brief([start, end])
    taken_keys = {k for tid in (start, end) if (m := brief_ends.get(tid)) and (k := song_key(m["title"], m["artist"]))}
    usable = np.ones(n, bool)
    for tid in (start, end):
        if (r := ids.row(tid)) is not None:
            usable[r] = False
    recordings = Recordings.of(catalog)

    # in-plane length of each track: an upper bound of its similarity to every ideal point, used to score only
    # the tracks that can be among a step's best
    e_perp = (s1 - dot * s0) / max(math.sqrt(max(1.0 - dot * dot, 0.0)), 1e-6)
    reach = np.sqrt(s0 * s0 + e_perp * e_perp) if dot < 1 - 1e-6 else np.abs(s0)

    accepted: list[int] = []  # rows, best candidates first, no two of one song or one recording
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
        kept = set(recordings.distinct(pool_ids, taken=[start, end, *(ids[r] for r in accepted)]))
        for r, tid in zip(order, pool_ids):
            if tid not in vecs or tid not in kept:  # deleted since the read, or another file of a recording in the path
                continue
            u = unit(vecs[tid])
            key = (m := meta.get(tid)) and song_key(m["title"], m["artist"])
            if key and key in taken_keys:
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

    chosen: list[tuple[int, int]] = []  # (step, index into accepted)
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

"""What the exploration features share: unit vectors, the tracks a request names, a track as answered."""
from __future__ import annotations

import numpy as np

from schemas.explore import ExploreTrack
from sidecar.data import Catalog, VectorStore
from sidecar.data.ids import shown_id
from sidecar.errors import Conflict, NotFound


def unit(v: np.ndarray) -> np.ndarray:
    """A vector, or each row of a matrix, scaled to length 1 (float32)."""
    v = np.asarray(v, np.float32)
    if v.ndim == 1:
        return v / max(float(np.linalg.norm(v)), 1e-12)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def resolve(catalog: Catalog, ids: list[str], field: str) -> list[str]:
    """Our track ids for ids that may be ours or a media server's, in order, without repeats; NotFound naming
    `field` for an unknown one."""
    got = catalog.resolve_ids(ids)
    missing = [i for i in ids if i not in got]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise NotFound(f"no track with id {missing[0]!r}{more}", field)
    return list(dict.fromkeys(got[i] for i in ids))


def unit_vectors(store: VectorStore, model: str, ids: list[str], field: str) -> dict[str, np.ndarray]:
    """The tracks' unit vectors; Conflict naming `field` for a track that has none yet."""
    vecs = store.get_vectors(model, ids)
    for tid in ids:
        if tid not in vecs:
            raise Conflict(f"track {tid!r} has no {model} vector yet (not analysed, or analysis failed)", field)
    return {t: unit(v) for t, v in vecs.items()}


def track_item(tid: str, meta: dict[str, dict], distance: float, cls=ExploreTrack, **extra):
    """A track in AudioMuse-AI's fields, from Catalog.tracks_brief's `meta` (shown by the media server's id)."""
    m = meta.get(tid) or {}
    return cls(
        item_id=shown_id(m) if m else tid, title=m.get("title"), author=m.get("artist"), album=m.get("album"),
        distance=round(float(distance), 6), **extra,
    )

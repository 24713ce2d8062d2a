"""Tracks that sound like one track: the nearest vectors in one model's space (AudioMuse-AI's fields)."""
from __future__ import annotations

from schemas.api import SimilarTrack, SimilarTracksQuery
from sidecar.data import Catalog, VectorStore
from sidecar.data.ids import shown_id, song_key
from sidecar.data.recordings import Recordings
from sidecar.errors import Conflict, NotFound


def similar_tracks(catalog: Catalog, store: VectorStore, model: str, q: SimilarTracksQuery) -> list[SimilarTrack]:
    track_id = catalog.resolve_ids([q.item_id]).get(q.item_id)
    if track_id is None:
        raise NotFound(f"no track with id {q.item_id!r}", "item_id")
    vectors = store.get_vectors(model, [track_id])
    if track_id not in vectors:
        raise Conflict(f"track {q.item_id!r} has no {model} vector yet (not analysed, or analysis failed)", "item_id")
    extra = 3 * q.n if q.eliminate_duplicates else 0  # room for what the same title and artist removes
    recordings = Recordings.of(catalog)  # and one file of each recording, the seed's other files left out
    hits = store.search(model, vectors[track_id], q.n + extra + recordings.spare([track_id]), [track_id])
    hits = recordings.distinct(hits, q.n + extra, key=lambda h: h[0], taken=[track_id])
    meta = catalog.tracks_brief([track_id] + [h[0] for h in hits])
    seen = {song_key(meta[track_id]["title"], meta[track_id]["artist"])} if track_id in meta else set()
    out = []
    for tid, sim in hits:
        m = meta.get(tid)
        if m is None:
            continue
        key = song_key(m["title"], m["artist"])
        if q.eliminate_duplicates and key is not None and key in seen:
            continue
        seen.add(key)
        out.append(SimilarTrack(
            item_id=shown_id(m), title=m["title"], author=m["artist"], album=m["album"] or "unknown",
            album_artist=m["artist"], distance=round(1.0 - sim, 6),
        ))
        if len(out) == q.n:
            break
    return out

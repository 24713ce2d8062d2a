"""Track search in AudioMuse-AI's form: every word of the query in the title, artist or album."""
from __future__ import annotations

from schemas.explore import SearchTrack, SearchTracksQuery
from sidecar.data import Catalog
from sidecar.data.ids import shown_id

MAX_WORDS = 8
MIN_LENGTH = 3  # as AudioMuse-AI: a shorter query finds nothing


def search_tracks(catalog: Catalog, q: SearchTracksQuery) -> list[SearchTrack]:
    text = q.search_query.strip() or f"{q.artist.strip()} {q.title.strip()}".strip()
    if len(text) < MIN_LENGTH or (q.end is not None and q.end <= q.start):
        return []
    limit = min(100, (q.end - q.start) if q.end is not None else 20)
    rows = catalog.search_words(text.split()[:MAX_WORDS], limit, q.start)
    return [
        SearchTrack(item_id=shown_id(r), title=r["title"], author=r["artist"], album=(r["album"] or "").strip() or "unknown")
        for r in rows
    ]

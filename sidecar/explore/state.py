"""One sidecar's exploration caches (Sidecar.explore_caches) and what they hold: the fitted maps (Projection)
and their JSON answers, the map's labels, the artist vectors (ArtistIndex) and parsed MusiCNN tags. Each entry
carries what it was computed from, and is rebuilt (or patched) once that changed; maps.py and artists.py do that."""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from sidecar.data import Catalog


@dataclass
class Projection:
    """A map: every track of a model at a point in 2-D."""

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
    """Every artist's vector in one model's space, and its tracks'."""

    stamp: tuple
    names: list[str]  # display names
    by_key: dict[str, int]  # casefolded name -> row
    centroids: np.ndarray  # (artists, dim), unit; dim: as the mirror holds them (artists.py)
    members: list[np.ndarray]  # rows of `unit` per artist
    track_ids: list[str]
    titles: list[str | None]
    unit: np.ndarray  # (tracks with an artist, dim), unit
    writes: tuple = ()  # the catalog's write token (and vector count) when `stamp` was last checked


class ParsedTags:
    """Per track, what `derive` makes of its MusiCNN tags (None for a track without tags), kept with the time the
    tags were written: a track's JSON is parsed again only when its tags were rewritten."""

    def __init__(self, derive: Callable[[dict | None], Any]):
        self.derive = derive
        self._by_track: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def current(self, catalog: Catalog, track_ids: Iterable[str] | None = None) -> dict[str, Any]:
        """{track id: derived value} for the tracks MusiCNN analysed: all of them, or those of `track_ids`."""
        versions = catalog.tag_versions(None if track_ids is None else list(track_ids))
        with self._lock:
            have = self._by_track
            stale = [t for t, at in versions.items() if (h := have.get(t)) is None or h[0] != at]
            parsed = catalog.musicnn_tags(stale) if stale else {}
            for t in stale:
                have[t] = (versions[t], self.derive(parsed.get(t)))
            if track_ids is None:  # the whole library was read: forget the tracks that left it
                for t in [t for t in have if t not in versions]:
                    del have[t]
            return {t: have[t][1] for t in versions}


def dominant_tag(probs: dict | None) -> str | None:
    """The most probable of the Million Song Dataset tags, the map's legend (other taggers' tags beside them, like
    MusiCNN's "mtt:ambient", are probabilities on another scale)."""
    msd = {t: p for t, p in (probs or {}).items() if ":" not in t}
    return max(msd, key=msd.get) if msd else None


@dataclass
class ExploreCaches:
    maps: dict[tuple[str, str], Projection] = field(default_factory=dict)  # (model, method) -> its map
    map_locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)  # one fit of a map at a time
    map_bodies: dict[tuple, bytes] = field(default_factory=dict)  # JSON answers of the current maps
    map_versions: int = 0  # counts the maps made, to tell their answers apart
    labels: tuple | None = None  # (stamp, {track id: title, artist, album, genre, tag})
    dominant_tags: ParsedTags = field(default_factory=lambda: ParsedTags(dominant_tag))  # every track's, for the map
    tag_probs: ParsedTags = field(default_factory=lambda: ParsedTags(lambda probs: probs))  # fingerprint seeds'
    artists: dict[str, ArtistIndex] = field(default_factory=dict)  # model -> artist vectors
    artists_lock: threading.Lock = field(default_factory=threading.Lock)

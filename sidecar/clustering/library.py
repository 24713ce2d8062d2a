"""The library as clustering sees it: the tracks that have both a vector of the model and MusiCNN tags, and the
feature matrix the search clusters."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sidecar.data import Catalog, VectorStore
from sidecar.data.recordings import Recordings
from sidecar.text.vocabulary import MSD_TAGS


@dataclass
class Library:
    ids: list[str]
    titles: list[str | None]
    artists: list[str | None]
    vectors: np.ndarray  # (n, d) the model's raw vectors
    tags: np.ndarray  # (n, 50) MusiCNN tag probabilities, MSD_TAGS order
    tempo: np.ndarray  # (n,) DSP tempo in BPM, NaN where unknown
    recordings: Recordings = field(default_factory=Recordings)  # a playlist holds one file of each

    def __len__(self) -> int:
        return len(self.ids)


def load_library(catalog: Catalog, store: VectorStore, model: str) -> Library:
    """Tracks that have both a vector of `model` and MusiCNN tags, ordered by their audio's content hash (blocking).

    That order, unlike the store's (the order analyses finished in) or the track ids (random), is the same for
    the same music in every library, so a seeded search gives the same playlists."""
    ids, matrix = store.snapshot(model)
    analysed: dict[str, tuple] = {}  # track id -> (title, artist, tag probabilities, tempo, content hash)
    for r in catalog.iter_analysed_tracks():
        if r["tags"]:
            tempo = r["features"].get("tempo_bpm")
            analysed[r["track_id"]] = (
                r["title"], r["artist"], [r["tags"].get(t, 0.0) for t in MSD_TAGS], float(tempo) if tempo is not None else np.nan,
                r["content_hash"],
            )
    keep = sorted((i for i, t in enumerate(ids) if t in analysed), key=lambda i: (analysed[ids[i]][4], ids[i]))
    sel = [analysed[ids[i]] for i in keep]
    return Library(
        ids=[ids[i] for i in keep], titles=[s[0] for s in sel], artists=[s[1] for s in sel],
        vectors=matrix[keep].astype(np.float64),
        tags=np.array([s[2] for s in sel], np.float64).reshape(len(sel), len(MSD_TAGS)),
        tempo=np.array([s[3] for s in sel], np.float64), recordings=Recordings.of(catalog),
    )


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 1e-9, sd, 1.0)


def feature_matrix(lib: Library, use_tags: bool = True, tag_weight: float = 1.0) -> np.ndarray:
    """The model's vectors standardised per dimension, then optionally the tag probabilities standardised too;
    each block scaled by 1/sqrt(its width) so that both weigh the same (times tag_weight for the tags)."""
    blocks = [_standardise(lib.vectors) / math.sqrt(lib.vectors.shape[1])]
    if use_tags and tag_weight > 0:
        blocks.append(_standardise(lib.tags) * tag_weight / math.sqrt(lib.tags.shape[1]))
    return np.hstack(blocks)

"""The best partition as playlists: members ordered most typical first, each named after its two defining tags
and its median tempo (the seed's default "Mood_Tempo" scheme, not its optional LLM naming), e.g.
"Electronic · Dance · Fast (128 BPM)"."""
from __future__ import annotations

import numpy as np

from schemas.clustering import ClusteringStart, ClusterPlaylist, ClusterTrack, TagScore
from sidecar.clustering.job import Best
from sidecar.clustering.library import Library
from sidecar.clustering.scoring import PURITY_TOP_TAGS, Scores, TagStats, score_partition, select_diverse
from sidecar.clustering.search import enforce_sizes, extend_labels
from sidecar.text.vocabulary import MSD_TAGS

TAG_LABELS = {"rnb": "R&B", "Hip-Hop": "Hip-Hop", "00s": "00s"}


def tag_label(tag: str) -> str:
    return TAG_LABELS.get(tag) or " ".join(w[:1].upper() + w[1:] for w in tag.split())


def tempo_label(bpm: float | None) -> str | None:
    if bpm is None:
        return None
    word = "Slow" if bpm < 90 else "Moderate" if bpm < 120 else "Fast" if bpm < 150 else "Very fast"
    return f"{word} ({round(bpm)} BPM)"


def playlist_name(top_tags: list[str], bpm: float | None) -> str:
    parts = [tag_label(t) for t in top_tags[:2]] or ["Mixed"]
    if (tl := tempo_label(bpm)) is not None:
        parts.append(tl)
    return " · ".join(parts)


def build_playlists(
    lib: Library, best: Best, feats: np.ndarray, pcs: np.ndarray | None, req: ClusteringStart
) -> tuple[list[ClusterPlaylist], Scores]:
    stats = TagStats.of(lib.tags)
    space = feats if not best.params["pca"] else pcs[:, : best.params["pca"]]
    if best.rows is None:
        labels = best.labels
    else:
        labels = extend_labels(best.labels, best.rows, space)
        labels = enforce_sizes(labels, space, req.max_songs_per_playlist, req.min_songs_per_playlist, best.seed)
    scores = score_partition(labels, stats)
    order = select_diverse(scores.distances, req.top_n_playlists, scores.sizes)
    kept_d = scores.distances[np.ix_(order, order)]
    kept_div = kept_d.sum(axis=1) / (len(order) - 1) if len(order) > 1 else np.zeros(len(order))
    out: list[ClusterPlaylist] = []
    names: set[str] = set()
    for pos, j in enumerate(order):
        members = np.flatnonzero(scores.labels == j)
        d = np.linalg.norm(space[members] - space[members].mean(axis=0), axis=1)
        members = members[np.argsort(d, kind="stable")]  # the most typical first, one file of each recording
        members = np.array(lib.recordings.distinct(members, key=lambda i: lib.ids[i]), int)
        excess = scores.profiles[j] - stats.mean
        top = [int(i) for i in np.argsort(-excess, kind="stable")[:PURITY_TOP_TAGS] if excess[i] > 0]
        tempos = lib.tempo[members]
        bpm = round(float(np.median(tempos[~np.isnan(tempos)])), 1) if (~np.isnan(tempos)).any() else None
        tags = [MSD_TAGS[i] for i in top]
        name = playlist_name(tags, bpm)
        if name in names and len(tags) > 2:  # two playlists led by the same tags: name the third as well
            name = playlist_name([tags[0], tags[2]], bpm)
        base, extra = name, 2
        while name in names:
            name, extra = f"{base} {extra}", extra + 1
        names.add(name)
        out.append(ClusterPlaylist(
            name=name, size=len(members), purity=round(float(scores.playlist_purity[j]), 4), diversity=round(float(kept_div[pos]), 4),
            tempo_bpm=bpm,
            top_tags=[TagScore(tag=MSD_TAGS[i], score=round(float(excess[i]), 4)) for i in top],
            tracks=[ClusterTrack(track_id=lib.ids[i], title=lib.titles[i], artist=lib.artists[i]) for i in members],
        ))
    return out, scores

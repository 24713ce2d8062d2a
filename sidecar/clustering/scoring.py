"""Purity and diversity of a partition of the library into playlists, and how they differ from the seed's
(AudioMuse-AI's) formulas.

Notation: P is the tracks x 50 matrix of MusiCNN tag probabilities, mu its column means (the library's
average track), R the per-library percentile rank of each track on each tag (0..1, 0.5 = a typical track).

A playlist's *profile* is the mean of its songs' P rows, always. The seed uses the centroid when clustering ran
on score vectors; our clustering space is standardised (and maybe PCA'd), where a centroid has no tag meaning,
and DBSCAN and spectral clustering have no centroid at all.

Its *defining tags* are the K = 3 tags with the largest excess profile - mu. The seed takes the top moods
of the raw profile, which are the tags every track has (here "electronic", "ambient" and "instrumental" lead
nearly every track's list), so every playlist got the same "top moods" whatever it held.

Purity. Seed: for each song, the maximum raw score among the playlist's top K moods (skipping moods not
"active" in the song's vector), *summed* over songs, then log1p and a normalisation by fixed statistics from
another library. Broken because (1) a sum grows with the number of songs, not with their consistency; (2) the
top moods are taken from a profile that includes the song being scored, so a playlist of one song is
perfectly pure and the score rises steadily with the number of clusters; (3) the maximum rewards a song for
matching any single one of the K moods; (4) raw probabilities favour tags that are high everywhere; (5) the
normalisation constants do not transfer between libraries. Ours: a song's *alignment* is the mean of its
percentile ranks R on its playlist's defining tags, where those tags are picked from the profile of the
playlist's *other* songs (leave-one-out; a song alone in a playlist aligns 0). A playlist's purity is the mean
alignment of its songs (0.5 is what a random playlist gets; a playlist of m of the library's n tracks whose
songs are the library's strongest on its tags reaches the ceiling 1 - (m-1)/(2(n-1)), so a perfect half of
the library scores 0.75, a perfect tenth 0.95). The clustering's purity is the sum of alignments divided by the
number of tracks that were clustered, so songs left out (DBSCAN noise, trimmed, tiny clusters) count 0 and
dropping songs never raises it. No "active moods": every track has all 50 tags.

Diversity. Seed: the sum of the scores of the unique dominant moods across playlists. Broken because it grows
with the number of playlists (it rewards many clusters, not different ones), it looks only at each
playlist's single dominant mood (two playlists that share it differ not at all, whatever else they hold),
its "unique" is ambiguous (which playlist's score counts when two share a mood?), and raw scores again favour
the tags every track has. Ours: a playlist's *identity* is max(profile - mu, 0), what it has more of than
the library; the distance between two playlists is 1 - cosine of their identities (0: the same character,
1: nothing in common); a playlist's diversity is its mean distance to the others and the clustering's is the
mean over playlists (0 with a single playlist). Bounded in [0, 1] and independent of the number of playlists.

Score = ``score_weight_purity`` * purity + ``score_weight_diversity`` * diversity (defaults 1 and 2, as the
seed's); both terms are already on [0, 1] scales, so no log1p or foreign statistics are needed. The seed's
silhouette-type metrics (weight 0 there) are not used.

Top N: after the search, the ``top_n_playlists`` most diverse playlists are kept by farthest-first selection
on the identity distances (the most distinctive playlist first, then repeatedly the one farthest from all
kept), and each kept playlist's diversity is reported against the other kept ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sidecar.text.calibration import percentiles

PURITY_TOP_TAGS = 3  # K: a playlist's defining tags


@dataclass
class TagStats:
    probs: np.ndarray  # P
    ranks: np.ndarray  # R
    mean: np.ndarray  # mu

    @classmethod
    def of(cls, tags: np.ndarray) -> "TagStats":
        return cls(tags, percentiles(tags), tags.mean(axis=0))


@dataclass
class Scores:
    purity: float
    diversity: float
    labels: np.ndarray  # the compact playlist labels scored (0..C-1), -1 unplaced
    playlist_purity: np.ndarray  # (C,)
    distances: np.ndarray  # (C, C) identity distances
    profiles: np.ndarray  # (C, 50) mean tag probabilities
    sizes: np.ndarray  # (C,)

    @property
    def playlist_diversity(self) -> np.ndarray:
        c = len(self.sizes)
        return self.distances.sum(axis=1) / (c - 1) if c > 1 else np.zeros(c)


def compact(labels: np.ndarray) -> np.ndarray:
    """The labels renumbered 0..C-1 in order, -1 (unplaced) kept."""
    out = np.full(len(labels), -1)
    placed = labels >= 0
    if placed.any():
        out[placed] = np.unique(labels[placed], return_inverse=True)[1]
    return out


def identity_distances(profiles: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """1 - cosine of the playlists' identities max(profile - mean, 0); a playlist with no identity (the library
    average) is at distance 0 from everything: it adds no diversity."""
    ident = np.maximum(profiles - mean, 0.0)
    norm = np.linalg.norm(ident, axis=1)
    unit = ident / np.where(norm > 1e-12, norm, 1.0)[:, None]
    sim = unit @ unit.T
    flat = norm <= 1e-12
    sim[flat, :] = 1.0
    sim[:, flat] = 1.0
    d = np.clip(1.0 - sim, 0.0, 1.0)
    np.fill_diagonal(d, 0.0)
    return d


def score_partition(labels: np.ndarray, stats: TagStats, top_k: int = PURITY_TOP_TAGS) -> Scores:
    """Purity and diversity of a partition (labels -1: not in any playlist); see the module docstring."""
    labels = compact(np.asarray(labels))
    n, t = stats.probs.shape
    placed = labels >= 0
    c = int(labels.max()) + 1 if placed.any() else 0
    if c == 0:
        return Scores(0.0, 0.0, labels, np.zeros(0), np.zeros((0, 0)), np.zeros((0, t)), np.zeros(0, int))
    idx = labels[placed]
    probs, ranks = stats.probs[placed], stats.ranks[placed]
    sums = np.zeros((c, t))
    np.add.at(sums, idx, probs)
    sizes = np.bincount(idx, minlength=c)
    m = sizes[idx]
    # leave-one-out: the playlist's defining tags as its other songs define them
    excess = (sums[idx] - probs) / np.maximum(m - 1, 1)[:, None] - stats.mean
    k = min(top_k, t)
    top = np.argpartition(-excess, k - 1, axis=1)[:, :k]
    align = np.take_along_axis(ranks, top, axis=1).mean(axis=1)
    align[m < 2] = 0.0
    playlist_purity = np.bincount(idx, weights=align, minlength=c) / sizes
    profiles = sums / sizes[:, None]
    dist = identity_distances(profiles, stats.mean)
    diversity = float(dist.sum() / (c * (c - 1))) if c > 1 else 0.0
    return Scores(float(align.sum() / n), diversity, labels, playlist_purity, dist, profiles, sizes)


def select_diverse(distances: np.ndarray, keep: int, sizes: np.ndarray) -> list[int]:
    """Farthest-first: the playlist farthest on average from the others, then repeatedly the one whose nearest
    kept playlist is farthest (ties: the bigger). keep=0 orders them all."""
    c = len(distances)
    if c == 0:
        return []
    keep = c if keep <= 0 else min(keep, c)
    mean_d = distances.sum(axis=1) / max(c - 1, 1)
    first = int(np.lexsort((-np.asarray(sizes), -mean_d))[0])
    chosen = [first]
    nearest = distances[:, first].astype(float).copy()
    nearest[first] = -np.inf
    while len(chosen) < keep:
        best = int(np.lexsort((-np.asarray(sizes), -nearest))[0])
        chosen.append(best)
        nearest = np.minimum(nearest, distances[:, best])
        nearest[chosen] = -np.inf
    return chosen

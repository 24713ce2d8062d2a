"""Playlists from clustering the whole library: an evolutionary Monte-Carlo search over clustering algorithms
and their parameters, run as a cancellable background job.

    POST /api/clustering/start          -> 202 and the job (409 naming the running job if one runs)
    GET  /api/clustering                -> the recent jobs
    GET  /api/clustering/{job_id}       -> status, progress, best score so far, ETA; the playlists when done
    POST /api/clustering/{job_id}/cancel

The search (after AudioMuse-AI's "Montecarlo Evolutionary Approach")
-------------------------------------------------------------------
Features: the model's vectors, standardised per dimension, optionally followed by the 50 MusiCNN tag
probabilities, standardised too; each block is scaled by 1/sqrt(its width) so that both weigh the same
(times ``tag_weight`` for the tags). A PCA of that matrix is computed once; an iteration that uses PCA with c
components takes its first c columns.

Each iteration draws a parameter set: k for kmeans, gmm and spectral (in [k_min, k_max]), the covariance type
for gmm and the neighbourhood for spectral, eps and min_samples for dbscan (eps as a quantile of the distances
to the min_samples-th neighbour, so that it means the same whatever the scale of the space), and the PCA
components (or none). The first iterations draw at random; later ones, with ``exploitation_probability``,
take one of the five best parameter sets so far (the elites) and mutate it by small steps. Clusters bigger
than ``max_songs_per_playlist`` are split (k-means inside the cluster), what is still too big is trimmed to the
songs nearest its centroid, and clusters smaller than ``min_songs_per_playlist`` are dropped; the score is
taken on those final playlists, so the search optimises what it delivers. With ``sample_size`` each iteration
clusters a sample instead of the whole library: stratified by each track's most distinctive tag, so that rare
kinds are always present, and perturbed between iterations (``sample_change`` of it swapped); the best
solution is then extended to every track by nearest centroid. The cancel flag is checked between iterations,
so a cancel takes effect when the current run ends: for the 51-track test library a run takes milliseconds; on
20,000 tracks of 200-d vectors (measured on this project's 2-core machines) a k-means run takes 0.2-0.5 s, a
GMM run about 2 s, a DBSCAN run about 5 s (use sample_size there); spectral clustering is refused above 5,000
tracks per run, and the playlists' count is bounded by 2,000 (max_songs_per_playlist must allow it).

Purity and diversity, and how they differ from the seed's formulas
------------------------------------------------------------------
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
the library scores 0.75, a perfect tenth 0.95). The clustering's purity is the sum of alignments divided by the number of tracks that
were clustered, so songs left out (DBSCAN noise, trimmed, tiny clusters) count 0 and dropping songs never
raises it. No "active moods": every track has all 50 tags.

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

Naming (the seed's default "Mood_Tempo" scheme, not its optional LLM naming): the two defining tags and the
median tempo of the playlist, e.g. "Electronic · Dance · Fast (128 BPM)".
"""
from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
import uuid
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from schemas.clustering import (
    ClusteringConflict, ClusteringJob, ClusteringJobList, ClusteringStart, ClusterPlaylist, ClusterTrack, Progress, TagScore,
)
from sidecar.http.common import ApiError, json_response, parse_body, sidecar_of
from sidecar.http.openapi import documented
from sidecar.text.zero_shot import MSD_TAGS

if TYPE_CHECKING:
    from sidecar.service import Sidecar

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

PURITY_TOP_TAGS = 3  # K: a playlist's defining tags
ELITES = 5
MIN_TRACKS = 4
MINIBATCH_ABOVE = 5000  # k-means on more tracks than this uses MiniBatchKMeans
MAX_PLAYLISTS = 2000  # per run: bounds the playlists' distance matrix (and nobody wants more)
SPECTRAL_MAX = 5000  # spectral clustering of more tracks per iteration takes minutes (an eigenproblem on n x n)
KEEP_JOBS = 20
GMM_FULL_MAX_DIMS = 8  # full covariances only in small spaces (cost d^2 per component; 35 s a run at 16-d, 20k tracks)
TAG_LABELS = {"rnb": "R&B", "Hip-Hop": "Hip-Hop", "00s": "00s"}


# ------------------------------------------------------------------------------------------------ data
@dataclass
class Library:
    ids: list[str]
    titles: list[str | None]
    artists: list[str | None]
    vectors: np.ndarray  # (n, d) the model's raw vectors
    tags: np.ndarray  # (n, 50) MusiCNN tag probabilities, MSD_TAGS order
    tempo: np.ndarray  # (n,) DSP tempo in BPM, NaN where unknown

    def __len__(self) -> int:
        return len(self.ids)


def load_library(sc: "Sidecar", model: str) -> Library:
    """Tracks that have both a vector of `model` and MusiCNN tags (blocking: run it in a thread)."""
    import json

    with sc.store._lock:
        m = sc.store.mirrors[model]
        ids = list(m.ids)
        matrix = m.matrix.copy()
    rows = sc.catalog._q(
        "SELECT e.track_id, e.tags, t.title, t.artist, json_extract(d.features, '$.tempo_bpm') AS tempo"
        " FROM embeddings e JOIN tracks t ON t.track_id = e.track_id"
        " LEFT JOIN embeddings d ON d.track_id = e.track_id AND d.model = 'dsp' AND d.status = 'done'"
        " WHERE e.model = 'musicnn' AND e.status = 'done' AND e.tags IS NOT NULL"
    )
    by_id = {r["track_id"]: r for r in rows}
    keep = [i for i, t in enumerate(ids) if t in by_id]
    sel = [by_id[ids[i]] for i in keep]
    tags = np.array([[(json.loads(r["tags"]) or {}).get(t, 0.0) for t in MSD_TAGS] for r in sel], np.float64).reshape(len(sel), len(MSD_TAGS))
    tempo = np.array([float(r["tempo"]) if r["tempo"] is not None else np.nan for r in sel], np.float64)
    return Library(
        ids=[ids[i] for i in keep], titles=[r["title"] for r in sel], artists=[r["artist"] for r in sel],
        vectors=matrix[keep].astype(np.float64), tags=tags, tempo=tempo,
    )


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 1e-9, sd, 1.0)


def feature_matrix(lib: Library, use_tags: bool = True, tag_weight: float = 1.0) -> np.ndarray:
    blocks = [_standardise(lib.vectors) / math.sqrt(lib.vectors.shape[1])]
    if use_tags and tag_weight > 0:
        blocks.append(_standardise(lib.tags) * tag_weight / math.sqrt(lib.tags.shape[1]))
    return np.hstack(blocks)


def percentile_ranks(x: np.ndarray) -> np.ndarray:
    """Each column as ranks in [0, 1] (ties broken by order)."""
    n = x.shape[0]
    if n < 2:
        return np.full(x.shape, 0.5)
    return x.argsort(axis=0, kind="stable").argsort(axis=0, kind="stable") / (n - 1)


# --------------------------------------------------------------------------------------------- metrics
@dataclass
class TagStats:
    probs: np.ndarray  # P
    ranks: np.ndarray  # R
    mean: np.ndarray  # mu

    @classmethod
    def of(cls, tags: np.ndarray) -> "TagStats":
        return cls(tags, percentile_ranks(tags), tags.mean(axis=0))


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


# ------------------------------------------------------------------------------------------ parameters
@dataclass
class Bounds:
    k_lo: int
    k_hi: int
    pca_max: int  # 0: no PCA
    n: int  # tracks clustered per iteration


def _draw_pca(rng: np.random.Generator, b: Bounds) -> int:
    if b.pca_max < 2 or rng.random() < 0.3:
        return 0
    return int(rng.integers(2, b.pca_max + 1))


def random_params(rng: np.random.Generator, algorithm: str, b: Bounds) -> dict[str, Any]:
    p: dict[str, Any] = {"algorithm": algorithm, "pca": _draw_pca(rng, b)}
    if algorithm == "dbscan":
        p["eps_quantile"] = round(float(rng.uniform(0.05, 0.95)), 4)
        p["min_samples"] = int(rng.integers(2, max(3, min(16, b.n // 4)) + 1))
    else:
        p["k"] = int(rng.integers(b.k_lo, b.k_hi + 1))
    if algorithm == "gmm":
        p["covariance"] = str(rng.choice(["diag", "spherical", "full"]))
    if algorithm == "spectral":
        p["n_neighbors"] = int(rng.integers(5, 31))
    return clamp(p, b)


def clamp(p: dict[str, Any], b: Bounds) -> dict[str, Any]:
    p = dict(p)
    if b.pca_max < 2:
        p["pca"] = 0
    elif p["pca"]:
        p["pca"] = int(np.clip(p["pca"], 2, b.pca_max))
    if "k" in p:
        p["k"] = int(np.clip(p["k"], b.k_lo, b.k_hi))
    if "min_samples" in p:
        p["min_samples"] = int(np.clip(p["min_samples"], 2, max(2, b.n - 1)))
    if "eps_quantile" in p:
        p["eps_quantile"] = round(float(np.clip(p["eps_quantile"], 0.01, 0.99)), 4)
    if "n_neighbors" in p:
        p["n_neighbors"] = int(np.clip(p["n_neighbors"], 2, max(2, b.n - 1)))
    if p.get("covariance") == "full" and (p["pca"] == 0 or p["pca"] > GMM_FULL_MAX_DIMS):
        p["covariance"] = "diag"
    return p


def mutate(p: dict[str, Any], rng: np.random.Generator, b: Bounds, algorithms: list[str]) -> dict[str, Any]:
    if len(algorithms) > 1 and rng.random() < 0.1:  # now and then an elite's neighbourhood in another algorithm
        other = [a for a in algorithms if a != p["algorithm"]]
        q = random_params(rng, str(rng.choice(other)), b)
        q["pca"] = p["pca"]
        return clamp(q, b)
    q = dict(p)
    if q["pca"] == 0:
        if rng.random() < 0.2:
            q["pca"] = _draw_pca(rng, b)
    elif rng.random() < 0.1:
        q["pca"] = 0
    else:
        q["pca"] += int(rng.integers(-max(1, b.pca_max // 8), max(1, b.pca_max // 8) + 1))
    if "k" in q:
        step = max(1, (b.k_hi - b.k_lo) // 10)
        q["k"] += int(rng.integers(-step, step + 1))
    if "eps_quantile" in q:
        q["eps_quantile"] += float(rng.uniform(-0.1, 0.1))
    if "min_samples" in q:
        q["min_samples"] += int(rng.integers(-2, 3))
    if "covariance" in q and rng.random() < 0.2:
        q["covariance"] = str(rng.choice(["diag", "spherical", "full"]))
    if "n_neighbors" in q:
        q["n_neighbors"] += int(rng.integers(-3, 4))
    return clamp(q, b)


# ------------------------------------------------------------------------------------------ clustering
def run_algorithm(p: dict[str, Any], x: np.ndarray, seed: int) -> np.ndarray:
    """Cluster labels (-1: noise) of the rows of x."""
    from sklearn.cluster import DBSCAN, KMeans, MiniBatchKMeans, SpectralClustering
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import NearestNeighbors

    n = x.shape[0]
    a = p["algorithm"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and graph-connectivity warnings: the score judges the result
        if a == "kmeans":
            k = min(p["k"], n)
            if n > MINIBATCH_ABOVE:
                return MiniBatchKMeans(k, batch_size=1024, n_init=1, random_state=seed).fit_predict(x)
            return KMeans(k, n_init=1, random_state=seed).fit_predict(x)
        if a == "gmm":
            gm = GaussianMixture(
                min(p["k"], n), covariance_type=p["covariance"], reg_covar=1e-3, max_iter=50, init_params="k-means++", random_state=seed,
            )
            return gm.fit(x).predict(x)
        if a == "spectral":
            sc = SpectralClustering(
                min(p["k"], n - 1), affinity="nearest_neighbors", n_neighbors=min(p["n_neighbors"], n - 1),
                assign_labels="cluster_qr", random_state=seed,
            )
            return sc.fit_predict(x)
        if a == "dbscan":
            ms = min(p["min_samples"], n)
            dist, _ = NearestNeighbors(n_neighbors=ms).fit(x).kneighbors(x)  # the first neighbour is the point itself
            eps = max(float(np.quantile(dist[:, -1], p["eps_quantile"])), 1e-9)
            p["eps"] = round(eps, 6)
            return DBSCAN(eps=eps, min_samples=ms).fit_predict(x)
    raise ValueError(f"unknown algorithm {a!r}")


def split_kmeans(x: np.ndarray, parts: int, seed: int, iterations: int = 25) -> np.ndarray:
    """A small k-means (k-means++ start, Lloyd steps) in numpy: splitting one oversized cluster must cost
    microseconds, not the tens of milliseconds of a scikit-learn fit, as a run may split hundreds."""
    rng = np.random.default_rng(seed)
    n = len(x)
    parts = min(parts, n)
    sq = (x**2).sum(axis=1)
    centres = [x[rng.integers(n)]]
    d2 = np.maximum(sq - 2 * x @ centres[0] + centres[0] @ centres[0], 0)
    for _ in range(1, parts):
        probs = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1 / n)
        c = x[rng.choice(n, p=probs)]
        centres.append(c)
        d2 = np.minimum(d2, np.maximum(sq - 2 * x @ c + c @ c, 0))
    cent = np.stack(centres)
    labels = np.zeros(n, int)
    for _ in range(iterations):
        dist = sq[:, None] - 2 * x @ cent.T + (cent**2).sum(axis=1)[None, :]
        new = dist.argmin(axis=1)
        if _ and (new == labels).all():
            break
        labels = new
        for j in range(parts):
            if (labels == j).any():
                cent[j] = x[labels == j].mean(axis=0)
    return labels


def enforce_sizes(labels: np.ndarray, x: np.ndarray, max_songs: int, min_songs: int, seed: int) -> np.ndarray:
    """Split clusters bigger than max_songs (k-means inside the cluster, into ceil(size/max) parts), trim a
    part that is still too big to the songs nearest its centroid, drop clusters smaller than min_songs."""
    out = np.full(len(labels), -1)
    nxt = 0
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if len(members) == 0 or labels[members[0]] < 0:
            continue
        groups = [members]
        if len(members) > max_songs:
            parts = math.ceil(len(members) / max_songs)
            sub = split_kmeans(x[members], parts, seed)
            groups = [members[sub == j] for j in range(parts)]
        for g in groups:
            if len(g) > max_songs:
                d = np.linalg.norm(x[g] - x[g].mean(axis=0), axis=1)
                g = g[np.argsort(d, kind="stable")[:max_songs]]
            if len(g) >= min_songs:
                out[g] = nxt
                nxt += 1
    return out


def extend_labels(labels_sample: np.ndarray, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Labels for every track from a sample's: each unsampled track joins the nearest playlist centroid when it
    lies within that playlist's radius (its farthest member), else stays out."""
    n = x.shape[0]
    out = np.full(n, -1)
    out[rows] = labels_sample
    c = int(labels_sample.max()) + 1 if (labels_sample >= 0).any() else 0
    if c == 0:
        return out
    placed = rows[labels_sample >= 0]
    lab = labels_sample[labels_sample >= 0]
    cent = np.stack([x[placed[lab == j]].mean(axis=0) for j in range(c)])
    radius = np.array([np.linalg.norm(x[placed[lab == j]] - cent[j], axis=1).max() for j in range(c)])
    rest = np.setdiff1d(np.arange(n), rows)
    c2 = (cent**2).sum(axis=1)
    for chunk in np.array_split(rest, max(1, len(rest) // 4096)):
        if len(chunk) == 0:
            continue
        xc = x[chunk]
        d = np.sqrt(np.maximum((xc**2).sum(axis=1)[:, None] - 2 * xc @ cent.T + c2[None, :], 0.0))
        j = d.argmin(axis=1)
        ok = d[np.arange(len(chunk)), j] <= radius[j]
        out[chunk[ok]] = j[ok]
    return out


def stratified_sample(rng: np.random.Generator, pool: np.ndarray, size: int, strata: np.ndarray) -> np.ndarray:
    """`size` rows of `pool`: first up to a target from every stratum (the larger of 5 and the 25th percentile
    of the strata's sizes, within the budget), then at random."""
    if size >= len(pool):
        return pool.copy()
    groups = [pool[strata[pool] == s] for s in np.unique(strata[pool])]
    counts = np.array([len(g) for g in groups])
    target = max(5, int(np.percentile(counts, 25)))
    target = max(1, min(target, size // max(1, len(groups))))
    picked = [rng.choice(g, min(target, len(g)), replace=False) for g in groups]
    chosen = np.concatenate(picked) if picked else np.zeros(0, int)
    if len(chosen) > size:
        chosen = rng.choice(chosen, size, replace=False)
    rest = np.setdiff1d(pool, chosen)
    fill = rng.choice(rest, size - len(chosen), replace=False) if size > len(chosen) else np.zeros(0, int)
    return np.sort(np.concatenate([chosen, fill]).astype(int))


# ---------------------------------------------------------------------------------------------- search
@dataclass
class Best:
    score: float
    purity: float
    diversity: float
    params: dict[str, Any]
    rows: np.ndarray | None  # the sample clustered; None: all tracks
    labels: np.ndarray
    seed: int


@dataclass
class Job:
    job_id: str
    model: str
    algorithms: list[str]
    seed: int
    total: int
    tracks: int = 0
    status: str = "running"
    done: int = 0
    failures: int = 0
    last_failure: str | None = None
    best: Best | None = None
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    error: str | None = None
    playlists: list[ClusterPlaylist] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def snapshot(self) -> ClusteringJob:
        with self.lock:
            best = self.best
            elapsed = (time.monotonic() - self.started_mono) if self.finished_at is None else (self.finished_at - self.started_at)
            eta = None
            if self.status == "running" and self.done:
                eta = round(elapsed / self.done * (self.total - self.done), 3)
            return ClusteringJob(
                job_id=self.job_id, status=self.status, model=self.model, algorithms=self.algorithms, tracks=self.tracks,
                seed=self.seed, progress=Progress(done=self.done, total=self.total),
                best_score=round(best.score, 6) if best else None, best_purity=round(best.purity, 6) if best else None,
                best_diversity=round(best.diversity, 6) if best else None, best_params=dict(best.params) if best else None,
                started_at=self.started_at, finished_at=self.finished_at, elapsed_s=round(elapsed, 3), eta_s=eta,
                cancel_requested=self.cancel.is_set(), error=self.error, playlists=self.playlists,
            )


class Cancelled(Exception):
    pass


def search(lib: Library, req: ClusteringStart, job: Job) -> tuple[Best | None, np.ndarray, np.ndarray | None]:
    """The evolutionary search; returns the best solution, the feature matrix and its PCA (for the final
    playlists). Raises Cancelled when the job's cancel flag is seen."""
    rng = np.random.default_rng(job.seed)
    feats = feature_matrix(lib, req.use_tags, req.tag_weight)
    n = len(lib)
    pcs = None
    if req.pca:
        from sklearn.decomposition import PCA

        comps = min(req.pca_max_components, n - 1, feats.shape[1])
        if comps >= 2:
            pcs = PCA(comps, svd_solver="full" if n <= 2000 else "randomized", random_state=job.seed).fit_transform(feats)
    stats = TagStats.of(lib.tags)
    strata = np.argmax(lib.tags - stats.mean, axis=1)  # each track's most distinctive tag
    sampling = 0 < req.sample_size < n
    n_it = req.sample_size if sampling else n
    k_hi = req.k_max if req.k_max is not None else max(req.k_min, min(100, n // 5))
    k_hi = max(2, min(k_hi, n_it - 1))
    bounds = Bounds(k_lo=min(req.k_min, k_hi), k_hi=k_hi, pca_max=pcs.shape[1] if pcs is not None else 0, n=n_it)
    warmup = min(max(3, req.iterations // 10), 50)
    elites: list[tuple[float, dict[str, Any]]] = []
    rows = None
    everything = np.arange(n)
    for it in range(req.iterations):
        if job.cancel.is_set():
            raise Cancelled
        if sampling:
            if rows is None:
                rows = stratified_sample(rng, everything, n_it, strata)
            else:
                keep = rng.choice(rows, int(round(len(rows) * (1 - req.sample_change))), replace=False)
                new = stratified_sample(rng, np.setdiff1d(everything, keep), n_it - len(keep), strata)
                rows = np.sort(np.concatenate([keep, new]))
        if elites and it >= warmup and rng.random() < req.exploitation_probability:
            params = mutate(elites[int(rng.integers(len(elites)))][1], rng, bounds, req.algorithms)
        else:
            params = random_params(rng, str(rng.choice(req.algorithms)), bounds)
        space = feats if not params["pca"] else pcs[:, : params["pca"]]
        x = space[rows] if rows is not None else space
        it_seed = int(rng.integers(2**31 - 1))
        try:
            labels = run_algorithm(params, x, it_seed)
            labels = enforce_sizes(labels, x, req.max_songs_per_playlist, req.min_songs_per_playlist, it_seed)
        except Exception as e:  # an ill-conditioned draw (a singular covariance...): the next one may do
            log.debug("clustering run %s failed: %s", params, e)
            with job.lock:
                job.failures += 1
                job.last_failure = f"{params['algorithm']}: {type(e).__name__}: {e}"
                job.done = it + 1
            continue
        sub = stats if rows is None else TagStats(stats.probs[rows], stats.ranks[rows], stats.mean)
        s = score_partition(labels, sub)
        total = req.score_weight_purity * s.purity + req.score_weight_diversity * s.diversity
        key = tuple(sorted((k, v) for k, v in params.items() if k != "eps"))
        if not any(tuple(sorted((k, v) for k, v in e[1].items() if k != "eps")) == key for e in elites):
            elites = sorted(elites + [(total, params)], key=lambda e: -e[0])[:ELITES]
        with job.lock:
            if job.best is None or total > job.best.score:
                job.best = Best(total, s.purity, s.diversity, params, None if rows is None else rows.copy(), s.labels, it_seed)
            job.done = it + 1
    return job.best, feats, pcs


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


def build_playlists(lib: Library, best: Best, feats: np.ndarray, pcs: np.ndarray | None, req: ClusteringStart) -> tuple[list[ClusterPlaylist], Scores]:
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
        members = members[np.argsort(d, kind="stable")]  # the most typical first
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


def run_job(job: Job, lib: Library, req: ClusteringStart) -> None:
    """The job's thread: search, then build the playlists; the outcome lands in the job."""
    try:
        best, feats, pcs = search(lib, req, job)
        if job.cancel.is_set():
            raise Cancelled
        if best is None:
            raise RuntimeError(f"all {job.failures} clustering runs failed; the last: {job.last_failure}")
        playlists = build_playlists(lib, best, feats, pcs, req)[0]
        with job.lock:
            job.playlists, job.status = playlists, "done"
    except Cancelled:
        with job.lock:
            job.status = "cancelled"
    except Exception as e:
        log.exception("clustering job %s failed", job.job_id)
        with job.lock:
            job.status, job.error = "failed", str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
    finally:
        with job.lock:
            job.finished_at = time.time()


# ---------------------------------------------------------------------------------------------- jobs
class Jobs:
    """One sidecar's clustering jobs: at most one running, the last few kept for their results."""

    def __init__(self):
        self.jobs: OrderedDict[str, Job] = OrderedDict()

    @property
    def running(self) -> Job | None:
        return next((j for j in self.jobs.values() if j.status == "running"), None)

    def add(self, job: Job) -> None:
        self.jobs[job.job_id] = job
        while len(self.jobs) > KEEP_JOBS:
            oldest = next((k for k, j in self.jobs.items() if j.status != "running"), None)
            if oldest is None:
                break
            del self.jobs[oldest]

    def cancel_all(self) -> None:
        for j in self.jobs.values():
            j.cancel.set()


_JOBS: "weakref.WeakKeyDictionary[Sidecar, Jobs]" = weakref.WeakKeyDictionary()


def jobs_of(sc: "Sidecar") -> Jobs:
    jobs = _JOBS.get(sc)
    if jobs is None:
        jobs = _JOBS[sc] = Jobs()
    return jobs


def _job(request: web.Request) -> Job:
    job_id = request.match_info["job_id"]
    job = jobs_of(sidecar_of(request)).jobs.get(job_id)
    if job is None:
        raise ApiError(404, f"no clustering job {job_id!r}", "job_id")
    return job


@routes.post("/api/clustering/start")
@documented(
    "Start clustering the library into playlists (a background job)", body=ClusteringStart, response=ClusteringJob, status=202,
    responses={409: ClusteringConflict},
)
async def start_clustering(request: web.Request) -> web.Response:
    req = await parse_body(request, ClusteringStart)
    sc = sidecar_of(request)
    model = req.model or sc.default_model
    if model not in sc.embedders.ready or model not in sc.store.mirrors:
        raise ApiError(400, f"unknown or unavailable model {model!r}; available: {', '.join(sc.embedders.ready)}", "model")
    jobs = jobs_of(sc)
    if (running := jobs.running) is not None:
        return json_response(ClusteringConflict(
            error=f"clustering job {running.job_id} is running; wait for it or cancel it (POST /api/clustering/{running.job_id}/cancel)",
            job_id=running.job_id,
        ), 409)
    seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
    job = Job(job_id=uuid.uuid4().hex, model=model, algorithms=req.algorithms, seed=seed, total=req.iterations)
    jobs.add(job)  # reserved before the first await: a second start now gets 409
    try:
        lib = await asyncio.to_thread(load_library, sc, model)
    except BaseException:
        jobs.jobs.pop(job.job_id, None)
        raise
    if len(lib) < max(MIN_TRACKS, 2 * req.min_songs_per_playlist):
        jobs.jobs.pop(job.job_id, None)
        raise ApiError(
            409, f"{len(lib)} tracks have both a {model} vector and MusiCNN tags; clustering needs at least "
            f"{max(MIN_TRACKS, 2 * req.min_songs_per_playlist)}", "model",
        )
    per_run = req.sample_size if 0 < req.sample_size < len(lib) else len(lib)
    if math.ceil(len(lib) / req.max_songs_per_playlist) > MAX_PLAYLISTS:
        jobs.jobs.pop(job.job_id, None)
        raise ApiError(
            400, f"{len(lib)} tracks in playlists of at most {req.max_songs_per_playlist} would make more than {MAX_PLAYLISTS} "
            f"playlists; raise max_songs_per_playlist to at least {math.ceil(len(lib) / MAX_PLAYLISTS)}", "max_songs_per_playlist",
        )
    if "spectral" in req.algorithms and per_run > SPECTRAL_MAX:
        jobs.jobs.pop(job.job_id, None)
        raise ApiError(
            400, f"spectral clustering of {per_run} tracks per run is too slow; set sample_size to at most {SPECTRAL_MAX} "
            "or leave spectral out", "algorithms",
        )
    job.tracks = len(lib)
    job.thread = threading.Thread(target=run_job, args=(job, lib, req), name=f"clustering-{job.job_id[:8]}", daemon=True)
    job.thread.start()
    return json_response(job.snapshot(), 202)


@routes.get("/api/clustering")
@documented("Clustering jobs, newest first (without their playlists)", response=ClusteringJobList)
async def list_clustering(request: web.Request) -> web.Response:
    jobs = jobs_of(sidecar_of(request)).jobs.values()
    return json_response(ClusteringJobList(jobs=[j.snapshot().model_copy(update={"playlists": None}) for j in reversed(jobs)]))


# not `start`: that path takes only POST, so GET there is a 405 (OpenAPI matches concrete paths before templates)
@routes.get("/api/clustering/{job_id:(?!start$)[^/]+}")
@documented("One clustering job, with its playlists when done", response=ClusteringJob, errors=(404,))
async def get_clustering(request: web.Request) -> web.Response:
    return json_response(_job(request).snapshot())


@routes.post("/api/clustering/{job_id}/cancel")
@documented("Cancel a running clustering job", response=ClusteringJob, errors=(404, 409))
async def cancel_clustering(request: web.Request) -> web.Response:
    job = _job(request)
    if job.status != "running":
        raise ApiError(409, f"clustering job {job.job_id} is {job.status}; nothing to cancel", "job_id")
    job.cancel.set()
    thread = job.thread
    if thread is not None:  # usually stops within one iteration; wait briefly so the answer says so
        await asyncio.to_thread(thread.join, 1.0)
    return json_response(job.snapshot())

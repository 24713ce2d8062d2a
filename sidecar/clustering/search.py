"""The evolutionary Monte-Carlo search over clustering algorithms and their parameters (after AudioMuse-AI's
"Montecarlo Evolutionary Approach").

Features: the model's vectors, standardised per dimension, optionally followed by the 50 MusiCNN tag
probabilities, standardised too (library.feature_matrix). A PCA of that matrix is computed once; an iteration
that uses PCA with c components takes its first c columns.

Each iteration draws a parameter set: k for kmeans, gmm and spectral (in [k_min, k_max]), the covariance type
for gmm and the neighbourhood for spectral, eps and min_samples for dbscan (eps as a quantile of the distances
to the min_samples-th neighbour, so that it means the same whatever the scale of the space), and the PCA
components (or none). The first iterations draw at random; later ones, with ``exploitation_probability``,
take one of the five best parameter sets so far (the elites) and mutate it by small steps. Clusters bigger
than ``max_songs_per_playlist`` are split (k-means inside the cluster), what is still too big is trimmed to the
songs nearest its centroid, and clusters smaller than ``min_songs_per_playlist`` are dropped; the score
(scoring.py) is taken on those final playlists, so the search optimises what it delivers. With ``sample_size``
each iteration clusters a sample instead of the whole library: stratified by each track's most distinctive
tag, so that rare kinds are always present, and perturbed between iterations (``sample_change`` of it
swapped); the best solution is then extended to every track by nearest centroid. The cancel flag is checked
between iterations, so a cancel takes effect when the current run ends: for the 51-track test library a run
takes milliseconds; on 20,000 tracks of 200-d vectors (measured on this project's 2-core machines) a k-means
run takes 0.2-0.5 s, a GMM run about 2 s, a DBSCAN run about 5 s (use sample_size there); spectral clustering
is refused above 5,000 tracks per run, and the playlists' count is bounded by 2,000 (max_songs_per_playlist
must allow it).
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.clustering import ClusteringStart
from sidecar.clustering.job import Best, Cancelled, Job
from sidecar.clustering.library import Library, feature_matrix
from sidecar.clustering.scoring import TagStats, score_partition

log = logging.getLogger(__name__)

ELITES = 5
MINIBATCH_ABOVE = 5000  # k-means on more tracks than this uses MiniBatchKMeans
MAX_PLAYLISTS = 2000  # per run: bounds the playlists' distance matrix (and nobody wants more)
SPECTRAL_MAX = 5000  # spectral clustering of more tracks per iteration takes minutes (an eigenproblem on n x n)
GMM_FULL_MAX_DIMS = 8  # full covariances only in small spaces (cost d^2 per component; 35 s a run at 16-d, 20k tracks)


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

"""2-D projections for the alchemy plot and the music map: a PCA fitted on some rows, and the scaling of
coordinates into [-1, 1]."""
from __future__ import annotations

from typing import Callable

import numpy as np


def pca_2d(fit: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A 2-D PCA fitted on `fit` (rows), with deterministic signs; returns the projection function.

    The two leading eigenvectors of the covariance by subspace iteration: LAPACK's SVD (and eigh) of matrices
    this small took 0.1 to 0.6 s when the machine was busy (their threads wait on each other), where a few
    hundred 200 x 2 products take about a millisecond."""
    mean = fit.mean(axis=0)
    if fit.shape[0] < 2:
        return lambda x: np.zeros((len(x), 2), np.float32)
    centred = (fit - mean).astype(np.float64)
    if len(centred) < centred.shape[1]:
        # fewer rows than dimensions (alchemy's few dozen points of 1,012-d vectors): the same eigenvectors through
        # the rows' small Gram matrix (60 ms less at 1,012-d)
        comps = centred.T @ top2_eigenvectors(centred @ centred.T)
        comps = (comps / np.linalg.norm(comps, axis=0).clip(1e-300)).T
    else:
        comps = top2_eigenvectors(centred.T @ centred).T
    comps = comps * np.sign(comps[np.arange(2), np.abs(comps).argmax(axis=1)])[:, None]
    comps = comps.astype(np.float32)
    return lambda x: ((np.asarray(x, np.float32) - mean) @ comps.T).astype(np.float32)


def top2_eigenvectors(cov: np.ndarray, iterations: int = 40) -> np.ndarray:
    """(dim, 2): the leading two eigenvectors of a symmetric positive semi-definite matrix, orthonormal, by
    block subspace iteration (8 vectors, so it converges at the rate of the 9th eigenvalue) and Rayleigh-Ritz."""
    dim = cov.shape[0]
    k = min(8, dim)
    start = cov[:, np.argsort(-np.diag(cov), kind="stable")[:k]]  # inside the range of the matrix
    start = start + 1e-6 * np.sqrt(np.abs(np.diag(cov)).max() + 1e-300) * np.cos(np.outer(np.arange(dim), np.arange(1, k + 1)))
    v, _ = np.linalg.qr(start)
    for _ in range(iterations):
        v, _ = np.linalg.qr(cov @ v)
    vals, vecs = np.linalg.eigh(v.T @ cov @ v)  # k x k
    out = v @ vecs[:, ::-1][:, :2]
    if out.shape[1] < 2:
        out = np.hstack([out, np.zeros((dim, 1))])
    return out


def scaler(coords: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Centre and scale uniformly so that the fitted coordinates lie in [-1, 1]."""
    if coords.shape[0] == 0:
        return lambda c: c
    centre = coords.mean(axis=0)
    scale = float(np.abs(coords - centre).max()) or 1.0
    return lambda c: (np.asarray(c, np.float32) - centre) / scale

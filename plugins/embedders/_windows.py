"""Windows and pooling, shared by the checkpoint embedders (MERT, CLAP, MuQ, MuQ-MuLan, Music2Latent).

Windowing: a track is cut into at most `max_windows` windows of `window` samples. Without a cap the windows
tile the track (their count is ceil(n / window)); the first starts at 0 and the last ends at the last sample,
the ones between are evenly spaced, so consecutive windows overlap a little rather than leaving a short
remainder. With a cap, the same evenly spaced layout simply uses fewer windows, spread over the whole track.
A track shorter than one window gives one window: the whole track, not padded (each model pads its own way).

    starts = window_starts(len(audio), window, max_windows)   # sample offsets, ascending
    windows = split_windows(audio, window, max_windows)       # (n, min(window, len(audio))) float32

Pooling:

    l2_normalize(x, axis=-1)        # unit vectors along `axis` (zero vectors stay zero)
    pooled_mean_std(means, vars_, counts)  # combine per-window frame statistics into the whole-track ones
    mean_spread_vector(mean, std, pooling)  # (..., blocks, features) statistics -> (..., dim) unit vectors
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["window_starts", "split_windows", "l2_normalize", "pooled_mean_std", "mean_spread_vector"]


def window_starts(n_samples: int, window: int, max_windows: int) -> np.ndarray:
    """Start offsets (int64, ascending) of the windows of a track of `n_samples` samples (see the module doc)."""
    if n_samples <= 0 or window <= 0 or max_windows <= 0:
        raise ValueError(f"need n_samples, window and max_windows > 0, got {n_samples}, {window}, {max_windows}")
    if n_samples <= window:
        return np.zeros(1, dtype=np.int64)
    count = min(math.ceil(n_samples / window), max_windows)
    last = n_samples - window
    if count == 1:  # a cap of one window: take the middle of the track
        return np.array([last // 2], dtype=np.int64)
    return np.linspace(0, last, count).round().astype(np.int64)


def split_windows(audio: np.ndarray, window: int, max_windows: int) -> np.ndarray:
    """The windows themselves: a (n, min(window, len(audio))) float32 array (copies, C-contiguous)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-d), got shape {audio.shape}")
    width = min(window, len(audio))
    starts = window_starts(len(audio), window, max_windows)
    return np.stack([audio[s : s + width] for s in starts]).astype(np.float32, copy=False)


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """`x` divided by its L2 norm along `axis`, float32; an all-zero vector stays zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(np.float32, copy=False)


def mean_spread_vector(mean: np.ndarray, std: np.ndarray, pooling: str) -> np.ndarray:
    """The "mean plus spread" vectors of (..., blocks, features) statistics (a block: one layer, or the mean of
    several): each block's mean, and with pooling "meanstd" its standard deviation, L2-normalised and joined
    with equal weights, so the (..., pieces x features) result is a unit vector in which no block or statistic
    drowns the others by scale; pooling "mean" keeps the means alone."""
    pieces = [l2_normalize(mean)] + ([l2_normalize(std)] if pooling == "meanstd" else [])
    v = np.concatenate(pieces, axis=-2)
    v = v / np.sqrt(v.shape[-2])
    return v.reshape(*v.shape[:-2], -1).astype(np.float32)


def pooled_mean_std(means: np.ndarray, vars_: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over all frames of all windows, from each window's frame statistics.

    means, vars_: (n_windows, d) per-window frame mean and population variance; counts: (n_windows,) frames per
    window. Exact (the law of total variance), so the frames themselves need not be kept.
    """
    means = np.asarray(means, dtype=np.float64)
    vars_ = np.asarray(vars_, dtype=np.float64)
    w = np.asarray(counts, dtype=np.float64)[:, None]
    total = w.sum()
    mean = (w * means).sum(axis=0) / total
    var = (w * (vars_ + (means - mean) ** 2)).sum(axis=0) / total
    return mean.astype(np.float32), np.sqrt(np.maximum(var, 0.0)).astype(np.float32)

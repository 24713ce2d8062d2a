"""Small helpers shared by the windowed transformer embedders (MERT, CLAP; reusable by MuQ, Music2Latent...).

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

Options (every message names the environment variable that sets the option):

    checkpoint_dir(plugin, options)               # the required `checkpoint` option as an existing directory
    number_option(plugin, options, key, default, kind=int, minimum=1)
    checkpoint_fingerprint(path)                  # 8 hex digits naming the checkpoint's files, for `version`
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sidecar.plugins import EmbedderUnavailable, option_env

__all__ = [
    "window_starts", "split_windows", "l2_normalize", "pooled_mean_std", "checkpoint_dir", "number_option",
    "checkpoint_fingerprint",
]  # fmt: skip


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
    """The "mean plus spread" track or segment vector: pooling "meanstd" joins the L2-normalised mean and
    standard deviation with equal weight (a unit vector); "mean" keeps the normalised mean alone."""
    if pooling == "mean":
        return l2_normalize(mean)
    return (np.concatenate([l2_normalize(mean), l2_normalize(std)], axis=-1) / np.sqrt(2.0)).astype(np.float32)


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


def checkpoint_dir(plugin: str, options: Mapping[str, str], *, required_files: tuple[str, ...] = ("config.json",)) -> Path:
    """The `checkpoint` option as an existing directory holding `required_files`; EmbedderUnavailable otherwise."""
    env = option_env(plugin, "checkpoint")
    raw = str(options.get("checkpoint") or "").strip()
    if not raw:
        raise EmbedderUnavailable(
            f"the {plugin} embedder needs a local checkpoint directory: set {env}=/path/to/checkpoint"
        )
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise EmbedderUnavailable(f"{env}={raw}: no such directory")
    missing = [f for f in required_files if not (path / f).is_file()]
    if missing:
        raise EmbedderUnavailable(
            f"{env}={raw} is not a checkpoint directory for {plugin}: {', '.join(missing)} missing"
        )
    return path


def number_option(
    plugin: str, options: Mapping[str, str], key: str, default: float, *, kind: type = int, minimum: float = 1
) -> float:
    """Option `key` parsed as `kind` (int or float), at least `minimum`; `default` when unset or empty."""
    raw = options.get(key)
    if raw is None or str(raw).strip() == "":
        return kind(default)
    try:
        value = kind(str(raw).strip())
    except ValueError:
        raise EmbedderUnavailable(f"{option_env(plugin, key)}={raw!r} is not a valid {kind.__name__}") from None
    if not math.isfinite(value) or value < minimum:
        raise EmbedderUnavailable(f"{option_env(plugin, key)}={raw!r} must be at least {minimum}")
    return value


def checkpoint_fingerprint(path: Path) -> str:
    """8 hex digits from the checkpoint's JSON configs and Python files (contents) and weight files (names and sizes).

    Put it in an embedder's `version`, so that pointing the option at another checkpoint (95M -> 330M, a new
    release) re-embeds the library. Cheap: weights are not read. Two fine-tunes with identical configs and
    identical file sizes would collide; change another option or the directory's configs to tell them apart.
    """
    path = Path(path)
    h = hashlib.blake2b(digest_size=4)
    for f in sorted(path.iterdir()):
        if not f.is_file():
            continue
        if f.suffix in (".json", ".py"):
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
        elif f.suffix in (".safetensors", ".bin", ".pt", ".ckpt", ".pth"):
            h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
    return h.hexdigest()

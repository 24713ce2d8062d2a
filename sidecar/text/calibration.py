"""What the analysis measured, calibrated over the library: the scale on which the text search and the instant
playlists score the vocabulary's concepts (vocabulary.py).

A tag's probability means little on its own: some tags are high on every track of a library (to the MSD network
a whole library of game soundtracks is "electronic"). So each tag's probability becomes a logit, z-scored over
the library, and a word both networks predict is the mean of their two columns; each DSP feature is z-scored
too (tempo, onset rate and brightness on a log scale). A concept's score is the weighted mean of its signed
columns: how many standard deviations a track stands above the library's mean on it. On the quality corpus
this beat percentile ranks and raw probabilities (scripts/quality_text.py). The statistics are those of the
library as it is: the indexes that hold a Calibration rebuild it when the catalog's analysis stamp changes.

A column no track has (a library analysed before the MTT tags existed, or without the DSP analysis) is left
out, and a concept is scored on the rest of its recipe; a track that lacks a value sits at the mean (0).
"""
from __future__ import annotations

import threading
from array import array

import numpy as np

from sidecar.text.vocabulary import FEATURES, MSD_TAGS, MTT_PREFIX, MTT_TAGS, Concept

LOG_FEATURES = frozenset({"tempo_bpm", "onset_rate", "brightness"})  # rates and frequencies: their ratios matter
TAG_KEYS = MSD_TAGS + tuple(MTT_PREFIX + t for t in MTT_TAGS)  # as the musicnn analysis stores them
PROBABILITY_CLIP = 1e-6  # logits of 0 and 1 are infinite


class Measurements:
    """Tracks' tag probabilities and DSP features as they are read, packed (lists of floats would be GBs at 100k)."""

    def __init__(self) -> None:
        self._tags, self._features = array("f"), array("f")
        self.n = 0

    def add(self, tags: dict, features: dict) -> None:
        """One track: its musicnn tags and its DSP features ({} where it has no DSP analysis)."""
        self._tags.extend([_number(tags.get(k)) for k in TAG_KEYS])
        f = dict(features, minor=1.0 if features.get("scale") == "minor" else 0.0) if features else {}
        self._features.extend([_number(f.get(k)) for k in FEATURES])
        self.n += 1

    def calibrate(self) -> "Calibration":
        tags = np.frombuffer(self._tags, np.float32).reshape(self.n, len(TAG_KEYS))
        by_word: dict[str, list[int]] = {}
        for j, key in enumerate(TAG_KEYS):
            by_word.setdefault(key.removeprefix(MTT_PREFIX).lower(), []).append(j)
        words = {}
        for word, cols in by_word.items():
            known = [z for j in cols if (z := _zscore(_logit(tags[:, j]))) is not None]
            if known:
                words[word] = _mean_known(known)
        raw = np.frombuffer(self._features, np.float32).reshape(self.n, len(FEATURES))
        features = {}
        for j, k in enumerate(FEATURES):
            z = _zscore(np.log(np.maximum(raw[:, j], 1e-3)) if k in LOG_FEATURES else raw[:, j])
            if z is not None:
                features[k] = _mean_known([z])
        return Calibration(words, features)


def _number(v) -> float:
    return float(v) if isinstance(v, (int, float)) else np.nan


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return np.log(p / (1 - p))


def _zscore(col: np.ndarray) -> np.ndarray | None:
    """The column z-scored over its known (non-NaN) values, NaN kept; None when no value is known."""
    ok = ~np.isnan(col)
    if not ok.any():
        return None
    mean, std = col[ok].mean(), col[ok].std()
    return ((col - mean) / std if std > 0 else np.where(ok, 0.0, np.nan)).astype(np.float32)


def _mean_known(cols: list[np.ndarray]) -> np.ndarray:
    """The mean of the columns where they are known, 0 (the library's mean) where none is."""
    stacked = np.stack(cols)
    known = ~np.isnan(stacked)
    total = np.where(known, stacked, 0.0).sum(axis=0)
    return (total / np.maximum(known.sum(axis=0), 1)).astype(np.float32)


def percentiles(x: np.ndarray) -> np.ndarray:
    """Each column as percentile ranks in [0, 1]; missing values (NaN) sit at 0.5 (no evidence either way)."""
    out = np.full(x.shape, 0.5, np.float32)
    n = x.shape[0]
    for j in range(x.shape[1]):
        col = x[:, j]
        ok = ~np.isnan(col)
        if ok.sum() > 1:
            ranks = col[ok].argsort(kind="stable").argsort(kind="stable")
            out[ok, j] = ranks / (ok.sum() - 1)
    return out if n else x


class Calibration:
    """A library's calibrated columns: tag words and DSP features, each a z-score per track."""

    def __init__(self, words: dict[str, np.ndarray], features: dict[str, np.ndarray]):
        self.words, self.features = words, features
        self._cache: dict[tuple, np.ndarray | None] = {}  # a concept is a fixed mix of columns: scored once
        self._lock = threading.Lock()

    def concept(self, c: Concept) -> np.ndarray | None:
        """How far each track stands above the library on the concept (in standard deviations of its columns),
        or None when the library has none of its columns."""
        return self._cached(("score", c.name, tuple(c.tags.items()), tuple(c.features.items())), lambda: self._score(c))

    def ranks(self, c: Concept) -> np.ndarray | None:
        """The concept's score as percentile ranks in [0, 1] (1: the track most like it), or None as concept()."""
        key = ("ranks", c.name, tuple(c.tags.items()), tuple(c.features.items()))
        return self._cached(key, lambda: None if (s := self.concept(c)) is None else percentiles(s[:, None])[:, 0])

    def _cached(self, key: tuple, compute) -> np.ndarray | None:
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = compute()  # outside the lock: two threads may both compute it, and get the same
        with self._lock:
            self._cache[key] = value
        return value

    def _score(self, c: Concept) -> np.ndarray | None:
        terms, weights = [], []
        for cols, recipe in ((self.words, {t.lower(): w for t, w in c.tags.items()}), (self.features, c.features)):
            for name, w in recipe.items():
                if name in cols:
                    terms.append(cols[name] if w > 0 else -cols[name])
                    weights.append(abs(w))
        return np.average(np.stack(terms), axis=0, weights=weights).astype(np.float32) if terms else None

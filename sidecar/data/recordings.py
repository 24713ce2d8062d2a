"""The same recording in other files, in one place: the rule, and how a list keeps one copy of each recording.

Exact same audio is already one track (the content hash). This is for different audio of one recording: another
format or bit rate, a few seconds trimmed, a gain change, another master. Two tracks are the same recording when
(1) their durations are within 8 s + 3% and four DSP descriptors that neither a re-encode nor a gain change nor a
short trim moves much are within tolerance (cheap: SQL narrows the candidates by them), and (2) their loudness
contours over time correlate (what tells apart distinct tracks that merely measure alike). Vector cosines cannot
tell: a -6 dB copy falls to 0.90 in MusiCNN's space while distinct tracks of one album reach 0.996.

The catalog groups tracks when their DSP result is stored (Catalog.record_embedding): every track of a group but
the first added has `duplicate_of` = that first one. A list (similar tracks, recommendations, text and instant
playlists, song path, alchemy, fingerprint, clustering) keeps the best-ranked track of each group and fills from
further down (`Recordings.distinct`), unless the settings allow one recording twice (allow_duplicate_recordings).
Measured: scripts/bench_quality.py --only duplicates (found, false merges), scripts/bench_duplicates.py (cost).
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:
    from sidecar.data.catalog import Catalog

KEYS_MODEL = "dsp"  # the embedder whose result the rule compares
CONTOUR = "loudness_contour"  # the feature of that result that holds the loudness contour (plugins/embedders/dsp.py)
DURATION_SLACK_S, DURATION_SLACK_SHARE = 8.0, 0.03  # trims and codec padding: 8 s + 3% of the longer
SHORT_S = 180.0
# Stage 1, the descriptors: columns of the catalog's duplicate_keys, in order (brightness as the log of its Hz).
# Tolerances: twice the 97th percentile of |copy - original| over 170 altered copies of dev tracks (MP3, Opus, trimmed
# 3+2 s, -6 dB, all three). Alone (scripts/bench_quality.py --only duplicates) they found 99.4% of the dev copies and
# 100% of the 80 test ones, merged none of 2,290 pairs of distinct tracks of one album, but 3 of 45,150 pairs of the
# corpus (6.6e-5): at 100k tracks, about 7 false partners per track. Hence stage 2.
DESCRIPTORS = ("dynamics_db", "percussiveness", "log_brightness", "key_strength")
TOLERANCES = np.array([2.56, 0.0065, 0.069, 0.031])
# Stage 2, the loudness contours (levels every 0.125 s over the first 2 minutes): band-passed to 0.5-4 s (slower is
# what most music shares, faster depends on where the windows fall), correlated at the best of +-16 s of lag and of
# four quarter-hop offsets (a trim is no whole number of hops). On the same corpus: the 250 copies scored >= 0.913
# (Opus; MP3 0.996, trims 0.998); 3,374 pairs of distinct tracks of compatible durations <= 0.747 (two short tracks;
# q99.9 0.536) but for two versions of one tracker module (0.999, which stage 1 tells apart). A trim by half a hop,
# the worst case, stayed >= 0.90 for 99% of the 301 tracks (0.67 for one steady electronic loop; measured once by
# hand, tests/test_duplicates.py checks it on a real track). Between the two: 0.8.
CONTOUR_HOP_S, CONTOUR_BAND_S, CONTOUR_MAX_LAG_S, CONTOUR_MIN = 0.125, (0.5, 4.0), 16.0, 0.8


def descriptors(features: Mapping[str, Any] | None) -> tuple[float, float, float, float] | None:
    """The four values stage 1 compares, from a DSP result's features; None when one is missing."""
    f = features or {}
    values = (f.get("dynamics_db"), f.get("percussiveness"), f.get("brightness"), f.get("key_strength"))
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    dyn, perc, bright, key = (float(v) for v in values)
    return dyn, perc, math.log(max(bright, 1.0)), key


def similar_descriptors(duration_a, desc_a, duration_b, desc_b) -> np.ndarray:
    """Stage 1: durations within 8 s + 3%, descriptors within tolerance (widened by 180 s / duration for shorter
    tracks: a trim is a larger share of them, and their statistics rest on fewer frames). Broadcasts: durations
    (...), descriptors (..., 4)."""
    a, b = np.asarray(duration_a, np.float64), np.asarray(duration_b, np.float64)
    durations = np.abs(a - b) <= DURATION_SLACK_S + DURATION_SLACK_SHARE * np.maximum(a, b)
    widen = np.maximum(1.0, SHORT_S / np.maximum(np.minimum(a, b), 1e-9))
    close = np.abs(np.asarray(desc_a, np.float64) - np.asarray(desc_b, np.float64)) <= TOLERANCES * widen[..., None]
    return durations & close.all(axis=-1)


def candidate_ranges(duration: float, desc: Sequence[float]) -> list[tuple[float, float]]:
    """(low, high) of the duration and of each descriptor: every track that can pass stage 1 with this one lies
    within them (what SQL narrows the candidates by)."""
    low = (1 - DURATION_SLACK_SHARE) * duration - DURATION_SLACK_S
    high = (duration + DURATION_SLACK_S) / (1 - DURATION_SLACK_SHARE)
    widen = max(1.0, SHORT_S / max(min(duration, low), 1e-9))  # the widest any candidate can get
    return [(low, high)] + [(v - t * widen, v + t * widen) for v, t in zip(desc, TOLERANCES)]


def contour(encoded: str | None) -> np.ndarray | None:
    """A stored loudness contour, band-passed for stage 2; None without one (or one too short to tell)."""
    if not encoded:
        return None
    x = np.frombuffer(base64.b64decode(encoded), np.int8).astype(np.float64) / 4.0
    short, long = (max(1, round(s / CONTOUR_HOP_S)) for s in CONTOUR_BAND_S)
    if len(x) < 4 * long:
        return None
    band = np.convolve(x, np.ones(short) / short, "same") - np.convolve(x, np.ones(long) / long, "same")
    return band[long:-long]  # the edges, where the moving means run short


def _best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> float:
    """The highest Pearson correlation of a and b shifted by up to max_lag steps, over overlaps of at least 80% of
    the shorter."""
    n, m = len(a), len(b)
    lags = np.arange(-max_lag, max_lag + 1)  # a[i + lag] against b[i]
    count = np.minimum(n, lags + m) - np.maximum(0, lags)
    keep = count >= 0.8 * min(n, m)
    if not keep.any():
        return -1.0
    padded = np.concatenate([np.zeros(max_lag), a, np.zeros(max_lag + m)])
    xy = sliding_window_view(padded, m)[lags[keep] + max_lag] @ b  # zeros outside a: sums over the overlaps
    lags, count = lags[keep], count[keep]
    ca, cb = (np.concatenate([[0.0], np.cumsum(v)]) for v in (a, b))
    qa, qb = (np.concatenate([[0.0], np.cumsum(v * v)]) for v in (a, b))
    a0, b0 = np.maximum(0, lags), np.maximum(0, -lags)  # where each overlap starts in a and in b
    sa, sb = ca[a0 + count] - ca[a0], cb[b0 + count] - cb[b0]
    va, vb = qa[a0 + count] - qa[a0] - sa * sa / count, qb[b0 + count] - qb[b0] - sb * sb / count
    r = (xy - sa * sb / count) / np.sqrt(np.maximum(va * vb, 1e-18))
    return float(r.max())


def same_contour(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Stage 2: the band-passed loudness contours (`contour`) correlate at some lag and quarter-hop offset."""
    if a is None or b is None:
        return False
    max_lag = round(CONTOUR_MAX_LAG_S / CONTOUR_HOP_S)
    for f in (0.0, 0.25, 0.5, 0.75):
        shifted = b if f == 0.0 else (1 - f) * b[:-1] + f * b[1:]
        if _best_correlation(a, shifted, max_lag) >= CONTOUR_MIN:
            return True
    return False


@dataclass(frozen=True)
class Keys:
    """What the rule compares of one track: its duration, descriptors and band-passed contour."""

    duration: float
    desc: tuple[float, ...]
    contour: np.ndarray | None = field(default=None, compare=False)


def same_recording(a: Keys, b: Keys) -> bool:
    return bool(similar_descriptors(a.duration, a.desc, b.duration, b.desc)) and same_contour(a.contour, b.contour)


def group_roots(keys: Sequence[Keys]) -> list[int]:
    """For tracks in the order they were added, the index of each one's group's first track: groups are the
    connected parts of the rule (a copy of a copy is in its original's group)."""
    d = np.array([k.duration for k in keys], np.float64)
    x = np.array([k.desc for k in keys], np.float64).reshape(len(keys), len(DESCRIPTORS))
    near = np.triu(similar_descriptors(d[:, None], x[:, None, :], d[None, :], x[None, :, :]), 1)
    root = list(range(len(keys)))

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i

    for i, j in zip(*np.nonzero(near)):
        a, b = find(int(i)), find(int(j))
        if a != b and same_contour(keys[i].contour, keys[j].contour):
            root[max(a, b)] = min(a, b)  # the earlier one leads
    return [find(i) for i in range(len(keys))]


class Recordings:
    """Which tracks are one recording, as a list sees them: {track id: its group's first track} for the tracks
    that have a copy (empty: every track is its own recording)."""

    def __init__(self, groups: Mapping[str, str] | None = None):
        self.groups = dict(groups or {})

    @classmethod
    def of(cls, catalog: "Catalog") -> "Recordings":
        """The catalog's groups now; none where the settings allow one recording twice in a list."""
        return cls() if catalog.allow_duplicate_recordings else cls(catalog.recording_groups())

    def spare(self, taken: Iterable[str] = ()) -> int:
        """At most how many tracks `distinct` can leave out of a ranking: fetch `limit` + this many to fill `limit`."""
        return sum(1 for t, root in self.groups.items() if t != root) + len(set(taken))

    def distinct(self, ranked: Iterable, limit: int | None = None, *, key: Callable[[Any], str] | None = None,
                 taken: Iterable[str] = ()) -> list:
        """The items of `ranked` (best first; `key` gives an item's track id) without a second track of one recording,
        nor one of the recording of a `taken` track (a seed, or a track the list must leave out): the best-ranked of
        each group stays. At most `limit`; `ranked` is read only as far as needed."""
        seen = {self.groups.get(t, t) for t in taken}
        out: list = []
        if limit is not None and limit <= 0:
            return out
        for item in ranked:
            track_id = key(item) if key is not None else item
            recording = self.groups.get(track_id, track_id)
            if recording in seen:
                continue
            seen.add(recording)
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
        return out

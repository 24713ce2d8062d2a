"""The library as the instant playlist sees it, and a query applied to it.

The index: per analysed track its metadata, its raw DSP features and their per-library percentile ranks, and
its tags and features calibrated as the text search sees them (sidecar/text/calibration.py). `IndexCache` (one
per sidecar: Sidecar.instant_index) rebuilds it when a track or an analysis changed.

Applying a query: hard filters first: feature ranges (raw values, or percentiles), key, scale, and the metadata
filters (year range, artist, album, genres; names match case-insensitively as substrings). A metadata filter
that no track of the library satisfies (an untagged library has no years) is dropped with a note: a decade
then falls back to MusiCNN's decade tag where there is one (60s..00s), a genre word to its tag, an artist or
album name to the text search. Then tags and concepts (vocabulary.py) as thresholds on the track's percentile
rank in the library on each: an included one needs a score >= 0.5 (at least the median track's), an excluded
one <= 0.5; when fewer tracks than `limit` pass, the threshold is relaxed to 0.4, then 0.3.

Ranking (rank_tracks): survivors are ranked by the mean of what applies: the tag/concept match, the closeness
to the feature ranges' centres, and the text search on `text` (the text recommender's tags path, or its
vector path where the model takes text), as a rank among the survivors.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

import numpy as np

from schemas.api import TextRecommendationRequest
from schemas.instant import RANGE_FEATURES, InstantQuery, InstantTrack
from sidecar.data.ids import norm_name
from sidecar.data.recordings import Recordings
from sidecar.errors import BadInput
from sidecar.text.calibration import Calibration, Measurements, percentiles
from sidecar.text.vocabulary import CONCEPTS_BY_NAME, DECADE_TAGS, MSD_TAGS, TAG_CONCEPTS_BY_NAME

if TYPE_CHECKING:
    from sidecar.data.catalog import Catalog
    from sidecar.text.recommender import TextRecommender

THRESHOLDS = (0.5, 0.4, 0.3)
CLOSENESS_WEIGHT = 0.2
TEXT_LIMIT = 500  # the text recommender's most results; survivors beyond them get no text score


# ----------------------------------------------------------------------------------------- the library
@dataclass
class InstantIndex:
    stamp: tuple
    track_ids: list[str]
    meta: list[dict]  # title, artist, album, genre, year (int or None), key, scale
    raw: dict[str, np.ndarray]  # RANGE_FEATURES -> raw values, NaN where unknown
    pct: dict[str, np.ndarray]  # RANGE_FEATURES -> per-library percentile ranks (0.5 where unknown)
    calibration: Calibration  # tags and features on the library's scale, as the text search sees them
    recordings: Recordings = field(default_factory=Recordings)  # the same recording in other files: one in a list

    @classmethod
    def from_rows(cls, rows: Iterable[dict], stamp: tuple = (), recordings: Recordings | None = None) -> "InstantIndex":
        """From rows as Catalog.iter_analysed_tracks gives them (track_id, metadata, parsed tags and features)."""
        ids, meta, feats, measured = [], [], [], Measurements()
        for r in rows:
            f = r["features"]
            ids.append(r["track_id"])
            meta.append({
                "title": r["title"], "artist": r["artist"], "album": r["album"], "genre": r["genre"], "year": _year(r["year"]),
                "key": f.get("key"), "scale": f.get("scale"),
            })
            feats.append([float(f[k]) if isinstance(f.get(k), (int, float)) else np.nan for k in RANGE_FEATURES])
            measured.add(r["tags"], f)
        fm = np.array(feats, np.float32).reshape(len(ids), len(RANGE_FEATURES))
        fp = percentiles(fm) if len(ids) else fm
        return cls(
            stamp=stamp, track_ids=ids, meta=meta, calibration=measured.calibrate(), recordings=recordings or Recordings(),
            raw={k: fm[:, j] for j, k in enumerate(RANGE_FEATURES)}, pct={k: fp[:, j] for j, k in enumerate(RANGE_FEATURES)},
        )

    def concept(self, kind: str, name: str) -> np.ndarray:
        """A tag's or descriptor's percentile rank per track, in [0, 1]; 0.5 (no evidence) where the library
        has none of what it is measured by."""
        ranks = self.calibration.ranks(TAG_CONCEPTS_BY_NAME[name] if kind == "tag" else CONCEPTS_BY_NAME[name])
        return ranks if ranks is not None else np.full(len(self.track_ids), 0.5, np.float32)


def _year(v) -> int | None:
    m = re.match(r"\s*(\d{4})", str(v)) if v is not None else None
    return int(m.group(1)) if m else None


class IndexCache:
    """A sidecar's instant index, rebuilt when tracks or analyses changed."""

    def __init__(self) -> None:
        self._index: InstantIndex | None = None
        self._lock = threading.Lock()

    def current(self, catalog: "Catalog") -> InstantIndex:
        """The index of the catalog as it is now (blocking: call it in a thread)."""
        stamp = catalog.analysis_stamp()
        with self._lock:
            if self._index is None or self._index.stamp != stamp:
                self._index = InstantIndex.from_rows(catalog.iter_analysed_tracks(), stamp, Recordings.of(catalog))
            return self._index


# ------------------------------------------------------------------------------------- applying a query
@dataclass
class Applied:
    query: InstantQuery  # as applied (metadata filters nobody satisfies dropped, fallbacks added)
    notes: list[str]
    candidates: np.ndarray  # rows that passed
    structured: np.ndarray | None  # per-row tag/concept match (n,), or None
    closeness: np.ndarray | None  # per-row closeness to the feature ranges, or None
    threshold: float | None
    constraints: list[tuple[str, str, bool]]  # (kind, name, include)
    library: int = 0  # tracks in the index


def apply_filters(idx: InstantIndex, query: InstantQuery, limit: int) -> Applied:
    n = len(idx.track_ids)
    notes: list[str] = []
    q = query.model_copy(deep=True)
    ok = np.ones(n, bool)
    extra_text: list[str] = []

    # metadata: dropped (with a note and a fallback) when no track satisfies it
    years = np.array([m["year"] if m["year"] is not None else -1 for m in idx.meta])
    if q.year_min is not None or q.year_max is not None:
        lo, hi = q.year_min or 0, q.year_max or 9999
        hit = (years >= lo) & (years <= hi)
        span = f"{q.year_min or '…'}–{q.year_max or '…'}"
        if hit.any():
            ok &= hit
        else:
            why = "no track has a year" if (years < 0).all() else f"no track's year is in {span}"
            decade = DECADE_TAGS.get((lo // 10) * 10) if q.year_min and q.year_max and lo // 10 == hi // 10 else None
            if decade:
                q.include_tags = list(dict.fromkeys([*q.include_tags, decade]))
                notes.append(f"years {span} not applied ({why}); used MusiCNN's '{decade}' tag instead")
            else:
                notes.append(f"years {span} not applied ({why})")
            q.year_min = q.year_max = None
    for fld in ("artist", "album"):
        want = getattr(q, fld)
        if want:
            values = [norm_name(m[fld]) for m in idx.meta]
            hit = np.array([bool(v) and norm_name(want) in v for v in values])
            if hit.any():
                ok &= hit
            else:
                notes.append(f"no track's {fld} matches {want!r}: left to the text search")
                extra_text.append(want)
                setattr(q, fld, None)
    if q.genres:
        values = [norm_name(m["genre"]) for m in idx.meta]
        usable = [g for g in q.genres if any(norm_name(g) in v for v in values if v)]
        for g in q.genres:
            if g not in usable:
                tag = next((t for t in MSD_TAGS if t.lower() == g.lower()), None)
                fallback = f"; its MusiCNN tag '{tag}' stands for it" if tag and tag in q.include_tags else ""
                notes.append(f"no track's genre mentions {g!r}: genre filter not applied{fallback}")
        if usable:
            ok &= np.array([any(norm_name(g) in v for g in usable) for v in values])
        q.genres = usable

    # features, key, scale: hard
    closeness_parts = []
    for r in q.features:
        vals = idx.pct[r.feature] if r.percentile else idx.raw[r.feature]
        known = ~np.isnan(idx.raw[r.feature])
        lo = -np.inf if r.min is None else r.min
        hi = np.inf if r.max is None else r.max
        ok &= known & (vals >= lo) & (vals <= hi)
        if r.min is not None and r.max is not None and r.max > r.min:
            mid, half = (r.min + r.max) / 2, (r.max - r.min) / 2
            closeness_parts.append(np.clip(1 - np.abs(np.nan_to_num(vals, nan=mid + 2 * half) - mid) / half, 0, 1))
    if q.key is not None:
        ok &= np.array([m["key"] == q.key for m in idx.meta])
    if q.scale is not None:
        ok &= np.array([m["scale"] == q.scale for m in idx.meta])

    constraints = [("tag", t, True) for t in q.include_tags] + [("tag", t, False) for t in q.exclude_tags]
    constraints += [("concept", c, True) for c in q.include_concepts] + [("concept", c, False) for c in q.exclude_concepts]
    structured = threshold = None
    candidates = np.flatnonzero(ok)
    if constraints and n:
        cols = np.stack([idx.concept(k, name) if inc else 1 - idx.concept(k, name) for k, name, inc in constraints], axis=1)
        structured = cols.mean(axis=1)
        for threshold in THRESHOLDS:
            passing = ok & (cols >= threshold).all(axis=1)
            if passing.sum() >= limit:
                break
        if threshold != THRESHOLDS[0]:
            notes.append(f"fewer than {limit} tracks passed every tag at the median; threshold relaxed to the {threshold:.0%} percentile")
        candidates = np.flatnonzero(passing)
    if extra_text:
        q.text = " ".join([q.text, *extra_text]).strip()[:500]
    closeness = np.mean(closeness_parts, axis=0) if closeness_parts else None
    return Applied(q, notes, candidates, structured, closeness, threshold, constraints, n)


def _rank01(values: np.ndarray) -> np.ndarray:
    """Ranks among the given values, scaled to [0, 1] (1: best); a single value gets 1."""
    if len(values) <= 1:
        return np.ones(len(values))
    return values.argsort(kind="stable").argsort(kind="stable") / (len(values) - 1)


@dataclass
class Ranked:
    tracks: list[InstantTrack]
    ranked_by: list[str]  # what the order came from
    notes: list[str]  # what could not be used, and why


def rank_tracks(
    idx: InstantIndex, ap: Applied, limit: int, model: str | None, text: "TextRecommender | None", text_unavailable: str | None = None,
) -> Ranked:
    """The best `limit` of the tracks that passed the filters, each with its reasons (blocking: the text search)."""
    q, rows = ap.query, ap.candidates
    notes: list[str] = []
    components: list[np.ndarray] = []
    ranked_by: list[str] = []
    if ap.structured is not None:
        components.append(ap.structured[rows])
        ranked_by.append("tags and concepts")
    text_reasons: dict[str, list[str]] = {}
    prompt = q.text or ", ".join(f"no {t}" for t in q.exclude_text)
    if prompt and len(rows):
        if text is None:
            notes.append(f"text search is unavailable ({text_unavailable}): '{prompt}' was not used")
        else:
            method, models = "tags", None
            if model is not None and model in text.text_models():
                method, models = "vector", [model]
            elif model is None and text.text_models():
                method = "vector"
            elif model is not None:
                notes.append(f"model {model!r} cannot take text: the zero-shot tags path ranked '{prompt}'")
            req = TextRecommendationRequest(
                text=prompt[:500], negative_prompts=q.exclude_text if q.text else [], method=method, models=models, limit=TEXT_LIMIT,
            )
            try:
                playlist = text.recommend(req)
            except BadInput as e:  # no path here takes text (no musicnn, no model with text): rank without it
                notes.append(f"{e}: '{prompt}' was not used")
            else:
                score = {t.track_id: t.score for t in playlist.tracks}
                text_reasons = {t.track_id: t.reasons for t in playlist.tracks}
                raw = np.array([score.get(idx.track_ids[r], -np.inf) for r in rows])
                finite = raw[np.isfinite(raw)]
                raw[~np.isfinite(raw)] = (finite.min() - 1) if len(finite) else 0
                components.append(_rank01(raw))
                ranked_by.append(f"text search ({playlist.method}) on '{prompt}'")
    if ap.closeness is not None:  # the range already filtered: its centre only breaks near-ties, unless alone
        weights = [1.0] * len(components) + [CLOSENESS_WEIGHT if components else 1.0]
        components.append(ap.closeness[rows])
        ranked_by.append("closeness to the feature ranges" + (" (tie-break)" if len(components) > 1 else ""))
    else:
        weights = [1.0] * len(components)
    if components:
        final = np.average(components, axis=0, weights=weights)
        order = np.argsort(-final, kind="stable")
    else:  # nothing to rank by (e.g. only an artist): the library's order
        final = np.ones(len(rows))
        order = np.array(sorted(range(len(rows)), key=lambda i: tuple(
            norm_name(idx.meta[rows[i]][k]) for k in ("artist", "album", "title"))), int)
        ranked_by.append("artist, album, title")
    tracks = []
    for i in idx.recordings.distinct(order, limit, key=lambda i: idx.track_ids[rows[i]]):  # one file of each recording
        r = int(rows[i])
        m = idx.meta[r]
        reasons = []
        for kind, name, inc in ap.constraints:
            v = float(idx.concept(kind, name)[r])
            reasons.append((v if inc else 1 - v, f"{'' if inc else 'not '}{name} {v if inc else 1 - v:.2f}"))
        why = [w for _, w in sorted(reasons, key=lambda x: -x[0])[:3]]
        for rng in q.features:
            v = idx.raw[rng.feature][r]
            why.append(f"{rng.feature} {v:.4g}" + (f" (percentile {idx.pct[rng.feature][r]:.2f})" if rng.percentile else ""))
        why += text_reasons.get(idx.track_ids[r], [])[:2]
        tempo = idx.raw["tempo_bpm"][r]
        tracks.append(InstantTrack(
            track_id=idx.track_ids[r], title=m["title"], artist=m["artist"], album=m["album"], genre=m["genre"], year=m["year"],
            tempo_bpm=None if np.isnan(tempo) else round(float(tempo), 2), key=m["key"], scale=m["scale"],
            score=round(float(final[i]), 6), reasons=why,
        ))
    return Ranked(tracks, ranked_by, notes)

"""Instant playlists from one sentence: POST /api/instant_playlist {text, limit, model, use_llm}.

AudioMuse-AI's instant chat asks an LLM to write SQL and runs it under a restricted role. Here nothing
produced from the request is ever executed: a deterministic parser turns the sentence into an `InstantQuery`
(closed vocabularies, numbers and words: schemas/instant.py), and an optional LLM may only fill the same
structure as JSON, which pydantic validates; on any failure (not configured, unreachable, not JSON, not the
schema) the rules' parse is used and the answer says why. The LLM's URL comes from the settings, never from
the request.

The parser
----------
Patterns first, each removed from the sentence once read: an album ("from the album X", quoted or up to the
next clause), an artist ("by X"), tempo ("around 120 bpm" -> tempo_bpm in [110, 130]; "over/under N bpm";
"100-120 bpm"), years ("90s", "1990s", "the nineties", "early 80s", "from 1995", "1990 to 1995", "before
2000") and keys ("in a minor" -> A minor, "in the key of C", "minor key" -> scale). The rest is split into
clauses at commas and at "and", "but", "with", "no", "without"...; a clause that starts with a negation is
negative. In each clause the longest phrases of the text-search lexicon (sidecar/textsearch.py: the 50 MSD
tags with their synonyms, and the descriptors: calm, orchestral, percussive, vocals...) become tags and
concepts, included or excluded. "fast"/"slow" become tempo ranges (>= 120 / <= 90 BPM; an explicit BPM wins),
"loud"/"quiet" loudness ranges on the library's percentiles (>= 0.6 / <= 0.4: dBFS depends on mastering);
"no vocals" excludes the vocals concept and asks for the instrumental tag; genre words also become genre
filters. Words left over form `text` (and, from negative clauses, `exclude_text`) for the text search.

Applying a query
----------------
Hard filters first: feature ranges (raw values, or percentiles), key, scale, and the metadata filters (year
range, artist, album, genres; names match case-insensitively as substrings). A metadata filter that no track
of the library satisfies (an untagged library has no years) is dropped with a note: a decade then falls
back to MusiCNN's decade tag where there is one (60s..00s), a genre word to its tag, an artist or album name
to the text search. Then tags and concepts as thresholds on per-library percentile ranks: an included one
needs a score >= 0.5 (at least the median track's), an excluded one <= 0.5; when fewer tracks than `limit`
pass, the threshold is relaxed to 0.4, then 0.3. Survivors are ranked by the mean of what applies: the
tag/concept match, the closeness to the feature ranges' centres, and the text search on `text` (the text
recommender's tags path, or its vector path where the model takes text), as a rank among the survivors.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
from aiohttp import web
from pydantic import ValidationError

from schemas.api import TextRecommendationRequest
from schemas.instant import (
    RANGE_FEATURES, FeatureRange, InstantPlaylist, InstantQuery, InstantRequest, InstantTrack,
)
from sidecar.http.common import ApiError, json_response, parse_body, sidecar_of
from sidecar.http.openapi import documented
from sidecar.text.zero_shot import DESCRIPTORS, FEATURES, MSD_TAGS, TAG_CONCEPTS, VOCAL_TAGS, _concept_score, percentiles

if TYPE_CHECKING:
    from sidecar.data.catalog import Catalog
    from sidecar.service import Sidecar

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

FAST_BPM, VERY_FAST_BPM, SLOW_BPM, VERY_SLOW_BPM = 120.0, 140.0, 90.0, 70.0
AROUND_BPM = 10.0
LOUD_PCT, QUIET_PCT = 0.6, 0.4
THRESHOLDS = (0.5, 0.4, 0.3)
CLOSENESS_WEIGHT = 0.2
TEXT_LIMIT = 500  # the text recommender's most results; survivors beyond them get no text score
DECADE_TAGS = {1960: "60s", 1970: "70s", 1980: "80s", 1990: "90s", 2000: "00s"}
# Genre names also filter on the tracks' genre tags. Words that describe a sound more than name a genre
# (orchestral, ambient, chill, dance...) are left to the audio tags and concepts alone.
GENRE_WORDS = (
    "rock", "pop", "jazz", "metal", "classical", "electronic", "hip hop", "hip-hop", "rap", "folk", "blues", "country",
    "soul", "funk", "punk", "reggae", "techno", "house", "trance", "disco", "r&b", "rnb", "indie", "alternative",
    "soundtrack", "latin", "gospel", "ska", "grunge", "dubstep", "drum and bass", "new age", "lo-fi", "opera", "swing",
    "bossa nova", "emo", "hardcore", "industrial", "synthwave", "electro", "edm", "trip hop",
)
STOPWORDS = frozenset(
    "a an the some any all of for to from in on at by into onto with within please play give me i i'd id want need "
    "would like love make create build get find put together playlist playlists mix list selection set music songs "
    "song tracks track tunes tune stuff things something anything ones one kind type style sort vibe vibes feel "
    "feeling sound sounds sounding that which is are be been it its this these those my our your us we let lets "
    "let's can could should just only mostly mainly really very quite pretty rather so too more most bit little "
    "lot lots plenty around about roughly approximately good great nice best top or also maybe perhaps while when "
    "where during".split()
)
_NEG_WORDS = r"(?:no|not|without|avoid|except|minus|nothing|non|none|never)"
_SPLIT = re.compile(r"\s*([,;/.!?]|\bbut\b|\band\b|\bwith\b|\bplus\b|\bor\b|\bnor\b)\s*", re.I)
_NEG_START = re.compile(rf"^{_NEG_WORDS}\b[\s-]*(?:too\s+|any\s+|more\s+|much\s+|so\s+)?", re.I)
_BOUNDARY = r"(?=\s*(?:[,;.!?]|$)|\s+(?:from|in|with|without|around|about|at|no|but|and\s+no|that|which|for|near|over|under|between)\b)"
_NAME = r"(?:\"(?P<q1>[^\"]+)\"|“(?P<q2>[^”]+)”|'(?P<q3>[^']+)'|(?P<bare>[^\s,;.!?\"“][^,;.!?\"“]*?))"
_ALBUM = re.compile(rf"\b(?:(?:from|off|on)\s+(?:the\s+)?(?:album|record|lp)|album)\s+{_NAME}(?:{_BOUNDARY}|(?=\s+by\b))", re.I)
_NOT_ARTIST = r"(?<!driven )(?<!led )(?<!inspired )(?<!influenced )(?<!followed )(?<!backed )(?<!accompanied )(?<!powered )(?<!carried )(?<!dominated )"
_ARTIST = re.compile(rf"{_NOT_ARTIST}\bby\s+(?:the\s+(?:artist|band)\s+)?{_NAME}{_BOUNDARY}", re.I)
_BPM = r"\s*(?:bpm|beats\s+per\s+minute|beats/min)\b"
_BPM_RANGE = re.compile(rf"\b(?:between\s+)?(\d{{2,3}})\s*(?:-|–|to|and)\s*(\d{{2,3}}){_BPM}", re.I)
_BPM_MIN = re.compile(rf"\b(?:over|above|more\s+than|faster\s+than|at\s+least)\s+(\d{{2,3}}){_BPM}", re.I)
_BPM_MAX = re.compile(rf"\b(?:under|below|less\s+than|slower\s+than|at\s+most|up\s+to)\s+(\d{{2,3}}){_BPM}", re.I)
_BPM_AROUND = re.compile(rf"(?:\b(?:around|about|approximately|roughly|near|circa|at)\s+|~\s*)?\b(\d{{2,3}}){_BPM}", re.I)
_DECADE_WORDS = {"sixties": 1960, "seventies": 1970, "eighties": 1980, "nineties": 1990, "noughties": 2000, "fifties": 1950}
_PART = r"(?:(?P<part>early|mid|late)[\s-]+)?"
_DECADE = re.compile(
    rf"(?:\b(?:from|in|of|during)\s+)?(?:\bthe\s+)?{_PART}(?:\b(?P<full>(?:19|20)\d)0'?s\b|(?<![\w'])'?(?P<short>\d)0'?s\b"
    rf"|\b(?P<word>{'|'.join(_DECADE_WORDS)})\b)",
    re.I,
)
_YEAR_RANGE = re.compile(r"\b(?:from\s+|between\s+)?((?:19|20)\d\d)\s*(?:-|–|to|and|until|through)\s*((?:19|20)\d\d)\b", re.I)
_YEAR_BEFORE = re.compile(r"\b(?:before|until|prior\s+to)\s+((?:19|20)\d\d)\b", re.I)
_YEAR_AFTER = re.compile(r"\b(?:after|since)\s+((?:19|20)\d\d)\b", re.I)
_YEAR = re.compile(r"\b(?:from|in|of|during|released\s+in)\s+((?:19|20)\d\d)\b", re.I)
_ACC = r"(?P<acc>#|♯|♭|b(?!\w)|\s+sharp|\s+flat)?"
_KEY_SCALE = re.compile(rf"\bin\s+(?:the\s+key\s+of\s+)?(?P<note>[a-g]){_ACC}\s*(?P<scale>major|minor|maj|min)\b(?:\s+key\b)?", re.I)
_KEY_ONLY = re.compile(rf"\bin\s+the\s+key\s+of\s+(?P<note>[a-g]){_ACC}(?![\w#])", re.I)
_SCALE = re.compile(r"\b(?:in\s+(?:an?\s+)?)?(?P<scale>major|minor)\s+(?:key|scale|mode|tonality)s?\b|\bin\s+(?P<scale2>major|minor)\b", re.I)


# ------------------------------------------------------------------------------------------- the parser
def _phrase_table() -> dict[tuple[str, ...], tuple[str, str]]:
    """Lexicon phrase (as words) -> ("tag", MSD tag) or ("concept", descriptor); descriptors win ties."""
    table: dict[tuple[str, ...], tuple[str, str]] = {}
    for c in TAG_CONCEPTS:
        for p in c.phrases:
            table[tuple(_words(p))] = ("tag", c.name)
    for c in DESCRIPTORS:
        for p in c.phrases:
            table[tuple(_words(p))] = ("concept", c.name)
    return table


def _words(s: str) -> list[str]:
    return re.findall(r"[\w&'#+-]+", s.lower())


PHRASES = _phrase_table()
MAX_PHRASE = max(len(k) for k in PHRASES)
GENRES = {tuple(_words(g)): g for g in GENRE_WORDS}
MAX_GENRE = max(len(k) for k in GENRES)
TEMPO_WORDS = {
    ("fast",): (FAST_BPM, None), ("quick",): (FAST_BPM, None), ("uptempo",): (FAST_BPM, None), ("up-tempo",): (FAST_BPM, None),
    ("very", "fast"): (VERY_FAST_BPM, None), ("slow",): (None, SLOW_BPM), ("downtempo",): (None, SLOW_BPM),
    ("very", "slow"): (None, VERY_SLOW_BPM), ("slower",): (None, SLOW_BPM), ("faster",): (FAST_BPM, None),
}
LOUDNESS_WORDS = {("loud",): (LOUD_PCT, None), ("quiet",): (None, QUIET_PCT), ("soft",): (None, QUIET_PCT)}


@dataclass
class Parsed:
    query: InstantQuery
    notes: list[str] = field(default_factory=list)


def _name(m: re.Match) -> str:
    return next(v for v in (m.group("q1"), m.group("q2"), m.group("q3"), m.group("bare")) if v).strip()


def _cut(text: str, m: re.Match) -> str:
    return text[: m.start()] + " , " + text[m.end():]


def _decade_range(m: re.Match) -> tuple[int, int]:
    if m.group("full"):
        start = int(m.group("full")) * 10
    elif m.group("short"):
        d = int(m.group("short"))
        start = (2000 if d <= 2 else 1900) + d * 10
    else:
        start = _DECADE_WORDS[m.group("word").lower()]
    part = (m.group("part") or "").lower()
    return {"early": (start, start + 4), "mid": (start + 3, start + 7), "late": (start + 5, start + 9)}.get(part, (start, start + 9))


def _note(m: re.Match) -> str:
    acc = (m.group("acc") or "").strip().lower()
    note = m.group("note").upper()
    if acc in ("#", "♯", "sharp"):
        note += "#"
    elif acc in ("b", "♭", "flat"):
        note += "b"
    return note


def parse_instant(text: str) -> Parsed:
    """The deterministic parse of a request (see the module docstring)."""
    notes: list[str] = []
    q: dict[str, Any] = {
        "include_tags": [], "exclude_tags": [], "include_concepts": [], "exclude_concepts": [], "features": [], "genres": [],
        "exclude_text": [],
    }
    s = " " + re.sub(r"\s+", " ", text.strip()) + " "

    if m := _ALBUM.search(s):
        q["album"] = _name(m)
        s = _cut(s, m)
    if m := _ARTIST.search(s):
        q["artist"] = _name(m)
        s = _cut(s, m)

    tempo: tuple[float | None, float | None] | None = None
    for rx, make in (
        (_BPM_RANGE, lambda m: (float(min(m[1], m[2], key=int)), float(max(m[1], m[2], key=int)))),
        (_BPM_MIN, lambda m: (float(m[1]), None)),
        (_BPM_MAX, lambda m: (None, float(m[1]))),
        (_BPM_AROUND, lambda m: (float(m[1]) - AROUND_BPM, float(m[1]) + AROUND_BPM)),
    ):
        if tempo is None and (m := rx.search(s)):
            tempo = make(m)
            s = _cut(s, m)

    years: tuple[int | None, int | None] | None = None
    for rx, make in (
        (_YEAR_RANGE, lambda m: (int(min(m[1], m[2])), int(max(m[1], m[2])))),
        (_YEAR_BEFORE, lambda m: (None, int(m[1]) - 1)),
        (_YEAR_AFTER, lambda m: (int(m[1]) + 1 if m.group(0).lower().startswith("after") else int(m[1]), None)),
        (_YEAR, lambda m: (int(m[1]), int(m[1]))),
        (_DECADE, _decade_range),
    ):
        if years is None and (m := rx.search(s)):
            years = make(m)
            s = _cut(s, m)
    if years is not None:
        q["year_min"], q["year_max"] = years

    m = _KEY_SCALE.search(s)
    if m and m.group("note").lower() == "a" and not m.group("acc") and m.group(0).lower().endswith("key"):
        m = None  # "in a minor key": the article, some minor key
    if m:
        q["key"] = _note(m)
        q["scale"] = "minor" if m.group("scale").lower().startswith("min") else "major"
        s = _cut(s, m)
    elif m := _KEY_ONLY.search(s):
        q["key"] = _note(m)
        s = _cut(s, m)
    if "scale" not in q and (m := _SCALE.search(s)):
        q["scale"] = (m.group("scale") or m.group("scale2")).lower()
        s = _cut(s, m)

    # clauses; a negation word starts a new (negative) clause
    s = re.sub(rf"(?<=\w)\s+(?={_NEG_WORDS}\b)", " , ", s, flags=re.I)
    word_tempo: tuple[float | None, float | None] | None = None
    loudness: tuple[float | None, float | None] | None = None
    leftovers: list[str] = []
    pieces = _SPLIT.split(s)  # clause, separator, clause, ...
    negative = False
    for n_piece in range(0, len(pieces), 2):
        part = pieces[n_piece].strip(" .!?-")
        sep = pieces[n_piece - 1].lower() if n_piece else ""
        if not part:
            continue
        # "without synth or vocals": a clause joined by "or"/"nor" to a negative one is negative too
        negative = bool(_NEG_START.match(part)) or (negative and sep in ("or", "nor"))
        words = _words(_NEG_START.sub("", part))
        rest: list[str] = []
        i = 0
        while i < len(words):
            hit = None
            for n in range(min(MAX_PHRASE, len(words) - i), 0, -1):
                key = tuple(words[i : i + n])
                if key in TEMPO_WORDS:
                    lo, hi = TEMPO_WORDS[key]
                    word_tempo = (hi, lo) if negative else (lo, hi)  # "not fast": at most the "fast" line
                    hit = n
                elif key in LOUDNESS_WORDS:
                    lo, hi = LOUDNESS_WORDS[key]
                    loudness = (hi, lo) if negative else (lo, hi)
                    hit = n
                elif key in PHRASES:
                    kind, name = PHRASES[key]
                    if kind == "concept" and name == "vocals" and negative:
                        q["exclude_concepts"].append("vocals")
                        q["include_tags"].append("instrumental")
                    elif kind == "tag" and name in VOCAL_TAGS and negative:
                        q["exclude_tags"].append(name)
                    elif kind == "tag" and name == "instrumental" and negative:  # "not instrumental": wants vocals
                        q["include_concepts"].append("vocals")
                    else:
                        q[("exclude_" if negative else "include_") + ("tags" if kind == "tag" else "concepts")].append(name)
                    if not negative and (g := GENRES.get(key)) is not None:
                        q["genres"].append(g)
                    hit = n
                elif not negative and key in GENRES:
                    q["genres"].append(GENRES[key])
                    hit = n
                if hit:
                    break
            if hit:
                i += hit
                continue
            if words[i] not in STOPWORDS:
                rest.append(words[i])
            i += 1
        if rest:
            if negative:
                q["exclude_text"].append(" ".join(rest))
            else:
                leftovers.append(" ".join(rest))

    if tempo is not None:
        if word_tempo is not None:
            notes.append("an explicit BPM was given: the tempo word's range is not used")
        lo, hi = tempo
    elif word_tempo is not None:
        lo, hi = word_tempo
    else:
        lo = hi = None
    if lo is not None or hi is not None:
        q["features"].append(FeatureRange(feature="tempo_bpm", min=lo, max=hi))
    if loudness is not None:
        q["features"].append(FeatureRange(feature="loudness_db", min=loudness[0], max=loudness[1], percentile=True))
    q["text"] = " ".join(leftovers)[:500]
    for a, b in (("include_tags", "exclude_tags"), ("include_concepts", "exclude_concepts")):
        both = set(q[a]) & set(q[b])
        if both:
            notes.append(f"asked both for and against {', '.join(sorted(both))}: the exclusion wins")
            q[a] = [x for x in q[a] if x not in both]
    # within the schema's bounds, whatever the sentence (a long list keeps its first entries)
    for k in ("include_tags", "exclude_tags", "include_concepts", "exclude_concepts"):
        q[k] = list(dict.fromkeys(q[k]))[:20]
    q["genres"] = list(dict.fromkeys(q["genres"]))[:10]
    q["exclude_text"] = list(dict.fromkeys(t[:100] for t in q["exclude_text"]))[:10]
    for k in ("artist", "album"):
        if k in q:
            q[k] = q[k][:200].strip() or None  # a quoted blank ("by ' '") names nothing
    return Parsed(InstantQuery.model_validate(q), notes)


# ----------------------------------------------------------------------------------------- the library
@dataclass
class InstantIndex:
    stamp: tuple
    track_ids: list[str]
    meta: list[dict]  # title, artist, album, genre, year (int or None), key, scale
    raw: dict[str, np.ndarray]  # RANGE_FEATURES -> raw values, NaN where unknown
    pct: dict[str, np.ndarray]  # RANGE_FEATURES -> per-library percentile ranks (0.5 where unknown)
    tags: np.ndarray  # (n, 50) percentile ranks, MSD_TAGS order (as textsearch.LibraryIndex)
    features: np.ndarray  # (n, len(FEATURES)) percentile ranks, textsearch.FEATURES order

    def concept(self, kind: str, name: str) -> np.ndarray:
        if kind == "tag":
            return self.tags[:, MSD_TAGS.index(name)]
        return _concept_score(next(c for c in DESCRIPTORS if c.name == name), self)


_INDEXES: "weakref.WeakKeyDictionary[Sidecar, InstantIndex]" = weakref.WeakKeyDictionary()
_INDEX_LOCK = threading.Lock()


def _year(v) -> int | None:
    m = re.match(r"\s*(\d{4})", str(v)) if v is not None else None
    return int(m.group(1)) if m else None


def build_index(catalog: "Catalog", stamp: tuple = ()) -> InstantIndex:
    rows = catalog.analysed_tracks()
    ids, meta, tags, feats = [], [], [], []
    for r in rows:
        t, f = r["tags"], r["features"]
        ids.append(r["track_id"])
        meta.append({
            "title": r["title"], "artist": r["artist"], "album": r["album"], "genre": r["genre"], "year": _year(r["year"]),
            "key": f.get("key"), "scale": f.get("scale"),
        })
        tags.append([float(t.get(name, 0.0)) for name in MSD_TAGS])
        f = dict(f, minor=(1.0 if f.get("scale") == "minor" else 0.0) if f else np.nan)
        feats.append([float(f[k]) if isinstance(f.get(k), (int, float)) else np.nan for k in dict.fromkeys(RANGE_FEATURES + FEATURES)])
    names = list(dict.fromkeys(RANGE_FEATURES + FEATURES))
    fm = np.array(feats, np.float32).reshape(len(ids), len(names))
    fp = percentiles(fm) if len(ids) else fm
    return InstantIndex(
        stamp=stamp, track_ids=ids, meta=meta,
        raw={k: fm[:, names.index(k)] for k in RANGE_FEATURES},
        pct={k: fp[:, names.index(k)] for k in RANGE_FEATURES},
        tags=percentiles(np.array(tags, np.float32).reshape(len(ids), len(MSD_TAGS))),
        features=fp[:, [names.index(k) for k in FEATURES]],
    )


def index_of(sc: "Sidecar") -> InstantIndex:
    """The sidecar's index, rebuilt when tracks or analyses changed (blocking: call it in a thread)."""
    cat = sc.catalog
    stamp = cat.analysis_stamp()
    with _INDEX_LOCK:
        idx = _INDEXES.get(sc)
        if idx is None or idx.stamp != stamp:
            idx = _INDEXES[sc] = build_index(cat, stamp)
        return idx


# ------------------------------------------------------------------------------------- applying a query
def _norm(s: str | None) -> str:
    return " ".join(re.findall(r"\w+", (s or "").casefold()))


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
            values = [_norm(m[fld]) for m in idx.meta]
            hit = np.array([bool(v) and _norm(want) in v for v in values])
            if hit.any():
                ok &= hit
            else:
                notes.append(f"no track's {fld} matches {want!r}: left to the text search")
                extra_text.append(want)
                setattr(q, fld, None)
    if q.genres:
        values = [_norm(m["genre"]) for m in idx.meta]
        usable = [g for g in q.genres if any(_norm(g) in v for v in values if v)]
        for g in q.genres:
            if g not in usable:
                tag = next((t for t in MSD_TAGS if t.lower() == g.lower()), None)
                fallback = f"; its MusiCNN tag '{tag}' stands for it" if tag and tag in q.include_tags else ""
                notes.append(f"no track's genre mentions {g!r}: genre filter not applied{fallback}")
        if usable:
            ok &= np.array([any(_norm(g) in v for g in usable) for v in values])
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


def run_query(sc: "Sidecar", query: InstantQuery, limit: int, model: str | None) -> tuple[Applied, list[InstantTrack], list[str], list[str]]:
    """Filter and rank (blocking). Returns what was applied, the tracks, the ranking used and extra notes."""
    idx = index_of(sc)
    ap = apply_filters(idx, query, limit)
    q, rows = ap.query, ap.candidates
    notes: list[str] = []
    components: list[np.ndarray] = []
    ranked_by: list[str] = []
    if ap.structured is not None:
        components.append(ap.structured[rows])
        ranked_by.append("tags and concepts")
    text_reasons: dict[str, list[str]] = {}
    text = q.text or ", ".join(f"no {t}" for t in q.exclude_text)
    if text and len(rows):
        if sc.text is None:
            notes.append(f"text search is unavailable ({sc.text_unavailable}): '{text}' was not used")
        else:
            method, models = "tags", None
            if model is not None and model in sc.text.text_models():
                method, models = "vector", [model]
            elif model is None and sc.text.text_models():
                method = "vector"
            elif model is not None:
                notes.append(f"model {model!r} cannot take text: the zero-shot tags path ranked '{text}'")
            req = TextRecommendationRequest(
                text=text[:500], negative_prompts=q.exclude_text if q.text else [], method=method, models=models, limit=TEXT_LIMIT,
            )
            playlist = sc.text.recommend(req)
            score = {t.track_id: t.score for t in playlist.tracks}
            text_reasons = {t.track_id: t.reasons for t in playlist.tracks}
            raw = np.array([score.get(idx.track_ids[r], -np.inf) for r in rows])
            finite = raw[np.isfinite(raw)]
            raw[~np.isfinite(raw)] = (finite.min() - 1) if len(finite) else 0
            components.append(_rank01(raw))
            ranked_by.append(f"text search ({playlist.method}) on '{text}'")
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
        order = np.array(sorted(range(len(rows)), key=lambda i: (
            _norm(idx.meta[rows[i]]["artist"]), _norm(idx.meta[rows[i]]["album"]), _norm(idx.meta[rows[i]]["title"]))), int)
        ranked_by.append("artist, album, title")
    tracks = []
    for i in order[:limit]:
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
    return ap, tracks, ranked_by, notes


# ------------------------------------------------------------------------------------------ the LLM
@dataclass
class LlmConfig:
    url: str
    model: str
    api_key: str = ""
    api: str = "openai"  # "openai": /v1/chat/completions; "ollama": /api/chat
    timeout_s: float = 30.0


def llm_config(settings) -> LlmConfig | None:
    """From the settings (SIDECAR_LLM_URL, _MODEL, _API_KEY, _API, _TIMEOUT_S); None when no URL is set."""
    url = (getattr(settings, "llm_url", "") or "").strip()
    if not url:
        return None
    return LlmConfig(
        url=url, model=getattr(settings, "llm_model", "") or "", api_key=getattr(settings, "llm_api_key", "") or "",
        api=getattr(settings, "llm_api", "openai") or "openai", timeout_s=float(getattr(settings, "llm_timeout_s", 30.0) or 30.0),
    )


def _endpoint(cfg: LlmConfig) -> str:
    base = cfg.url.rstrip("/")
    if cfg.api == "ollama":
        return base if base.endswith("/api/chat") else base + "/api/chat"
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


@functools.lru_cache(maxsize=1)
def system_prompt() -> str:
    schema = json.dumps(InstantQuery.model_json_schema(), separators=(",", ":"))
    examples = "\n".join(
        f"Request: {s}\nAnswer: {parse_instant(s).query.model_dump_json(exclude_defaults=True)}"
        for s in ("upbeat rock from the 90s, no vocals, around 120 bpm", "calm orchestral music in a minor, no drums")
    )
    concepts = "; ".join(f"{c.name} ({', '.join(c.phrases[:4])})" for c in DESCRIPTORS)
    return (
        "You turn a request for a music playlist into search filters. Answer with exactly one JSON object that "
        "validates against the JSON schema below, and nothing else: no SQL, no code, no prose.\n"
        f"JSON schema: {schema}\n"
        f"include_tags/exclude_tags take only these audio tags: {', '.join(MSD_TAGS)}.\n"
        f"include_concepts/exclude_concepts take only these descriptors: {concepts}.\n"
        "features are hard ranges: tempo_bpm in beats per minute (fast: min 120, slow: max 90, 'around N': N-10..N+10); "
        "for relative words set percentile true and give 0..1 bounds (loud: loudness_db min 0.6). "
        "year_min/year_max for decades or years; artist, album and genres only when the request names them. "
        "Put anything else the request asks for in text (a few words), and other unwanted things in exclude_text. "
        "Leave out what the request does not say.\n"
        f"Examples:\n{examples}"
    )


_FENCE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$", re.I)
MAX_LLM_BYTES = 1 << 20


def _content(api: str, body: Any) -> str:
    if api == "ollama":
        return body["message"]["content"]
    return body["choices"][0]["message"]["content"]


async def ask_llm(cfg: LlmConfig, text: str) -> InstantQuery:
    """The LLM's InstantQuery for `text`; raises ValueError (with a short reason) on any failure."""
    schema = InstantQuery.model_json_schema()
    messages = [{"role": "system", "content": system_prompt()}, {"role": "user", "content": text}]
    if cfg.api == "ollama":
        payload = {"model": cfg.model, "messages": messages, "stream": False, "format": schema, "options": {"temperature": 0}}
    else:
        payload = {
            "model": cfg.model, "messages": messages, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "InstantQuery", "schema": schema}},
        }
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as session:
            async with session.post(_endpoint(cfg), json=payload, headers=headers) as resp:
                raw = await resp.content.read(MAX_LLM_BYTES + 1)
                if resp.status != 200:
                    raise ValueError(f"the LLM answered HTTP {resp.status}: {raw[:200].decode('utf-8', 'replace')}")
    except asyncio.TimeoutError:
        raise ValueError(f"the LLM did not answer within {cfg.timeout_s:g} s") from None
    except aiohttp.ClientError as e:
        raise ValueError(f"cannot reach the LLM: {type(e).__name__}: {e}") from None
    if len(raw) > MAX_LLM_BYTES:
        raise ValueError("the LLM's answer is too large")
    try:
        content = _content(cfg.api, json.loads(raw))
    except (ValueError, KeyError, IndexError, TypeError):
        raise ValueError("the LLM's reply is not a chat completion") from None
    if not isinstance(content, str):
        raise ValueError("the LLM's reply has no text content")
    content = _FENCE.sub("", content.strip())
    start, end = content.find("{"), content.rfind("}")
    if start < 0 or end < start:
        raise ValueError(f"the LLM's answer holds no JSON object: {content[:120]!r}")
    try:
        return InstantQuery.model_validate_json(content[start : end + 1])
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ValueError(f"the LLM's answer does not fit the query schema ({where}: {err['msg']})") from None


# ------------------------------------------------------------------------------------------ the route
@routes.post("/api/instant_playlist")
@documented("A playlist from a sentence (rules, or an LLM when configured)", body=InstantRequest, response=InstantPlaylist)
async def instant_playlist(request: web.Request) -> web.Response:
    req = await parse_body(request, InstantRequest)
    sc = sidecar_of(request)
    if req.model is not None and req.model not in sc.embedders.ready:
        raise ApiError(400, f"unknown or unavailable model {req.model!r}; available: {', '.join(sc.embedders.ready)}", "model")
    parsed = parse_instant(req.text)
    query, notes, parsed_by, llm_error = parsed.query, list(parsed.notes), "rules", None
    if req.use_llm:
        cfg = llm_config(sc.settings)
        if cfg is None:
            llm_error = "no LLM is configured (SIDECAR_LLM_URL): used the rules' parse"
        else:
            try:
                query, notes, parsed_by = await ask_llm(cfg, req.text), [], "llm"
            except ValueError as e:
                llm_error = f"{e}: used the rules' parse"
                log.warning("instant playlist: %s", llm_error)
    ap, tracks, ranked_by, more = await asyncio.to_thread(run_query, sc, query, req.limit, req.model)
    if query.is_empty():
        notes.append("nothing in the request was understood as a filter")
    return json_response(InstantPlaylist(
        text=req.text, query=query, applied=ap.query, parsed_by=parsed_by, llm_error=llm_error, notes=notes + ap.notes + more,
        ranked_by=ranked_by, tag_threshold=ap.threshold, library=ap.library, candidates=len(ap.candidates),
        tracks=tracks,
    ))

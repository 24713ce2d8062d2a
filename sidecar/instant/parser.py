"""The deterministic parse of a sentence into an `InstantQuery` (schemas/instant.py): closed vocabularies,
numbers and words, nothing executed.

Patterns first, each removed from the sentence once read: an album ("from the album X", quoted or up to the
next clause), an artist ("by X"), tempo ("around 120 bpm" -> tempo_bpm in [110, 130]; "over/under N bpm";
"100-120 bpm"), years ("90s", "1990s", "the nineties", "early 80s", "from 1995", "1990 to 1995", "before
2000") and keys ("in a minor" -> A minor, "in the key of C", "minor key" -> scale). The rest is split into
clauses at commas and at "and", "but", "with", "no", "without"...; a clause that starts with a negation is
negative. In each clause the longest phrases of the text search's vocabulary (sidecar/text/vocabulary.py: the
50 MSD tags with their synonyms, and the descriptors: calm, orchestral, strings, choir, chiptune, vocals...;
a tag keeps its own words) become tags and concepts, included or excluded. "fast"/"slow" become tempo ranges
(>= 120 / <= 90 BPM; an explicit BPM wins), "loud"/"quiet" loudness ranges on the library's percentiles (>= 0.6
/ <= 0.4: dBFS depends on mastering); "no vocals" excludes the vocals concept and asks for the instrumental tag;
genre words also become genre filters. Words left over form `text` (and, from negative clauses,
`exclude_text`) for the text search.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from schemas.instant import FeatureRange, InstantQuery
from sidecar.text.vocabulary import DESCRIPTORS, GENRE_WORDS, NEGATIONS, TAG_CONCEPTS, VOCAL_TAGS, words_of

FAST_BPM, VERY_FAST_BPM, SLOW_BPM, VERY_SLOW_BPM = 120.0, 140.0, 90.0, 70.0
AROUND_BPM = 10.0
LOUD_PCT, QUIET_PCT = 0.6, 0.4
STOPWORDS = frozenset(
    "a an the some any all of for to from in on at by into onto with within please play give me i i'd id want need "
    "would like love make create build get find put together playlist playlists mix list selection set music songs "
    "song tracks track tunes tune stuff things something anything ones one kind type style sort vibe vibes feel "
    "feeling sound sounds sounding that which is are be been it its this these those my our your us we let lets "
    "let's can could should just only mostly mainly really very quite pretty rather so too more most bit little "
    "lot lots plenty around about roughly approximately good great nice best top or also maybe perhaps while when "
    "where during".split()
)
_NEG_WORDS = rf"(?:{'|'.join(NEGATIONS)})"
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


def _phrase_table() -> dict[tuple[str, ...], tuple[str, str]]:
    """Lexicon phrase (as words) -> ("tag", MSD tag) or ("concept", descriptor). A tag keeps its own words
    ("ambient", "metal": the query schema and the genre fallback know tags); a descriptor takes the others."""
    table: dict[tuple[str, ...], tuple[str, str]] = {}
    for c in DESCRIPTORS:
        for p in c.phrases:
            table[tuple(words_of(p))] = ("concept", c.name)
    for c in TAG_CONCEPTS:
        for p in c.phrases:
            table[tuple(words_of(p))] = ("tag", c.name)
    return table


PHRASES = _phrase_table()
GENRES = {tuple(words_of(g)): g for g in GENRE_WORDS}
TEMPO_WORDS = {
    ("fast",): (FAST_BPM, None), ("quick",): (FAST_BPM, None), ("uptempo",): (FAST_BPM, None), ("up-tempo",): (FAST_BPM, None),
    ("very", "fast"): (VERY_FAST_BPM, None), ("slow",): (None, SLOW_BPM), ("downtempo",): (None, SLOW_BPM),
    ("very", "slow"): (None, VERY_SLOW_BPM), ("slower",): (None, SLOW_BPM), ("faster",): (FAST_BPM, None),
}
LOUDNESS_WORDS = {("loud",): (LOUD_PCT, None), ("quiet",): (None, QUIET_PCT), ("soft",): (None, QUIET_PCT)}
MAX_WORDS = max(len(k) for table in (PHRASES, GENRES, TEMPO_WORDS, LOUDNESS_WORDS) for k in table)  # longest phrase looked up


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
    """The deterministic parse of a request (see the module docstring); always a valid query, whatever the text."""
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
        words = words_of(_NEG_START.sub("", part))
        rest: list[str] = []
        i = 0
        while i < len(words):
            hit = None
            for n in range(min(MAX_WORDS, len(words) - i), 0, -1):
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


"""Zero-shot text search over what the analysis measured: MusiCNN's 50 tag probabilities, the DSP features
and the library's own metadata. No training, no audio-text model needed.

A prompt is split into clauses ("upbeat rock, no vocals" -> "upbeat rock" and a negated "vocals"); each
clause is matched by sentence similarity against a lexicon of concepts: the 50 MSD tags (with synonyms)
and words people use for what the DSP analysis measures ("calm", "driving", "orchestral"...). Each concept
says which tags and features speak for it. Tracks are scored on per-library percentile ranks, so a tag that
every track has (electronic, ambient) does not dominate, and the score says which concepts it came from.
The concepts, their words and recipes are in vocabulary.py.
"""
from __future__ import annotations

import re
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from sidecar.data.catalog import Catalog
from sidecar.plugins import TextEncoder
from sidecar.text.vocabulary import CONCEPTS_BY_NAME, DESCRIPTORS, FEATURES, LEXICON, MSD_TAGS, Concept

MIN_SIMILARITY = 0.4  # below this a concept's match is noise (measured: lower ranks are unrelated tags)
# Genre words are all fairly similar to each other ("orchestral" ~ "electronic" 0.5): a clause keeps only the
# concepts close to its best match.
MAX_BELOW_BEST = 0.2
METADATA_MIN_SIMILARITY = 0.5
METADATA_FIELDS = ("genre", "artist", "album")
CLAUSE_CACHE_SIZE = 4096  # sentence vectors of recent clauses (1.5 KB each): a repeated clause skips the encoder

_NEGATION = re.compile(r"^(no|not|without|non|avoid|except|minus|nothing)\b[\s-]*", re.I)
_SPLIT = re.compile(r"\s*(?:[,;/]|\bbut\b|\band\b|\bwith\b|\bplus\b)\s*", re.I)


@dataclass
class Clause:
    text: str
    negative: bool


def parse_prompt(prompt: str) -> list[Clause]:
    """'upbeat rock, no vocals' -> [upbeat rock (+), vocals (-)]"""
    clauses = []
    for part in _SPLIT.split(prompt.strip()):
        part = part.strip(" .!?")
        if not part:
            continue
        negative = bool(_NEGATION.match(part))
        text = _NEGATION.sub("", part).strip()
        if text:
            clauses.append(Clause(text, negative))
    return clauses


@dataclass
class Match:
    concept: str
    weight: float  # signed: negative for "no X"
    similarity: float
    clause: str


@dataclass
class ScoredTrack:
    track_id: str
    score: float
    reasons: list[str]


class LibraryIndex:
    """Per-track tag probabilities and features as percentile ranks, rebuilt when the catalog changes."""

    def __init__(self, catalog: Catalog, encoder: TextEncoder):
        self.catalog, self.encoder = catalog, encoder
        self._stamp = None
        self._lock = threading.Lock()
        self.track_ids: list[str] = []
        self.tags = np.zeros((0, len(MSD_TAGS)), np.float32)
        self.features = np.zeros((0, len(FEATURES)), np.float32)
        # the library's own words: each distinct genre, artist and album is embedded once (a library has far
        # fewer of them than tracks), and each track points at its values
        self.words: list[str] = []
        self.word_vectors = np.zeros((0, encoder.dim), np.float32)
        self.track_words = np.zeros((0, len(METADATA_FIELDS)), np.int64)  # index into words, -1: none
        self._concepts: dict[str, np.ndarray] = {}  # concept -> its score per track, for the current analysis

    def refresh(self) -> None:
        stamp = self.catalog.analysis_stamp()
        with self._lock:
            if stamp == self._stamp:
                return
            ids = []
            tags, feats, meta = array("f"), array("f"), array("q")  # packed as read: lists of floats would be 0.2 GB at 100k
            known = {w: i for i, w in enumerate(self.words)}
            for r in self.catalog.iter_analysed_tracks():
                t, f = r["tags"], dict(r["features"])
                f["minor"] = 1.0 if f.get("scale") == "minor" else 0.0
                ids.append(r["track_id"])
                tags.extend(t.get(name, 0.0) for name in MSD_TAGS)
                feats.extend(float(f.get(name, np.nan)) for name in FEATURES)
                meta.extend(known.setdefault(str(r[k]), len(known)) if r[k] else -1 for k in METADATA_FIELDS)
            self.track_ids = ids
            self.tags = percentiles(np.frombuffer(tags, np.float32).reshape(len(ids), len(MSD_TAGS)))
            self.features = percentiles(np.frombuffer(feats, np.float32).reshape(len(ids), len(FEATURES)))
            new = list(known)[len(self.words):]
            if new:
                self.word_vectors = np.concatenate([self.word_vectors, self.encoder.encode(new)])
                self.words += new
            self.track_words = np.frombuffer(meta, np.int64).reshape(len(ids), len(METADATA_FIELDS))
            self._concepts = {}
            self._stamp = stamp

    def concept_score(self, c: Concept) -> np.ndarray:
        """c.score() on this index, computed once per analysis of the library (a concept is a fixed mix of columns)."""
        cache = self._concepts
        s = cache.get(c.name)
        if s is None:
            s = cache[c.name] = c.score(self.tags, self.features)
        return s

    def metadata_similarity(self, clause_vectors: np.ndarray) -> np.ndarray:
        """Per track, the best similarity of any clause to its genre, artist or album (0 where it has none)."""
        if not len(self.words) or not len(self.track_ids):
            return np.zeros(len(self.track_ids), np.float32)
        per_word = np.append((clause_vectors @ self.word_vectors.T).max(axis=0), 0.0).astype(np.float32)  # -1: no value
        best = per_word[self.track_words[:, 0]]
        for j in range(1, len(METADATA_FIELDS)):  # column by column: a max over a 3-wide axis is slow in numpy
            np.maximum(best, per_word[self.track_words[:, j]], out=best)
        return best


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


class ZeroShotSearch:
    def __init__(self, catalog: Catalog, encoder: TextEncoder):
        self.encoder = encoder
        self.index = LibraryIndex(catalog, encoder)
        phrases = [(i, p) for i, c in enumerate(LEXICON) for p in c.phrases]
        self._phrase_concept = np.array([i for i, _ in phrases])
        self._phrase_vectors = encoder.encode([p for _, p in phrases])
        self._clauses: OrderedDict[str, np.ndarray] = OrderedDict()  # LRU: clause text -> sentence vector
        self._clauses_lock = threading.Lock()

    def clause_vectors(self, texts: list[str]) -> np.ndarray:
        """Sentence vectors of clauses: recent ones from the cache, the others encoded in one batch."""
        with self._clauses_lock:
            known = {t: self._clauses[t] for t in texts if t in self._clauses}
            for t in known:
                self._clauses.move_to_end(t)
        new = list(dict.fromkeys(t for t in texts if t not in known))
        if new:
            known.update(zip(new, self.encoder.encode(new)))
            with self._clauses_lock:
                for t in new:
                    self._clauses[t] = known[t]
                while len(self._clauses) > CLAUSE_CACHE_SIZE:
                    self._clauses.popitem(last=False)
        return np.stack([known[t] for t in texts])

    def match(self, prompt: str, negative_prompts: list[str] = ()) -> tuple[list[Match], list[Clause]]:
        """Concepts named by the prompt, each with its weight; and the clauses (for metadata matching)."""
        clauses = parse_prompt(prompt) + [Clause(c.text, not c.negative) for n in negative_prompts for c in parse_prompt(n)]
        if not clauses:
            return [], []
        sims = self.clause_vectors([c.text for c in clauses]) @ self._phrase_vectors.T
        matches: dict[str, Match] = {}
        for clause, row in zip(clauses, sims):
            best = np.full(len(LEXICON), -1.0)
            np.maximum.at(best, self._phrase_concept, row)
            floor = max(MIN_SIMILARITY, best.max() - MAX_BELOW_BEST)
            for i in np.flatnonzero(best >= floor):
                w = (best[i] - floor) / (1 - floor) + 0.1
                m = Match(LEXICON[i].name, -w if clause.negative else w, float(best[i]), clause.text)
                if LEXICON[i].name not in matches or abs(m.weight) > abs(matches[m.concept].weight):
                    matches[m.concept] = m
        return sorted(matches.values(), key=lambda m: -abs(m.weight)), clauses

    def search(self, prompt: str, negative_prompts: list[str] = (), limit: int = 25) -> tuple[list[ScoredTrack], list[Match]]:
        idx = self.index
        idx.refresh()
        matches, clauses = self.match(prompt, negative_prompts)
        n = len(idx.track_ids)
        if n == 0:
            return [], matches
        score = np.zeros(n, np.float32)
        parts: list[tuple[str, np.ndarray]] = []
        total = 0.0
        for m in matches:
            s = idx.concept_score(CONCEPTS_BY_NAME[m.concept])
            score += m.weight * s
            total += abs(m.weight)
            parts.append((f"{'not ' if m.weight < 0 else ''}{m.concept} (from '{m.clause}', {m.similarity:.2f})", m.weight * s))
        # the library's own words: a clause that reads like a track's genre, artist or album
        positive = [c.text for c in clauses if not c.negative]
        if positive and len(idx.words):
            msim = idx.metadata_similarity(self.clause_vectors(positive))
            bonus = np.where(msim >= METADATA_MIN_SIMILARITY, msim, 0.0).astype(np.float32)
            score += bonus
            total += 1.0 if bonus.any() else 0.0
            parts.append(("metadata", bonus))
        if total:
            score /= total
        order = top_k(score, limit)
        out = []
        for i in order:
            reasons = [name for name, contrib in sorted(parts, key=lambda p: -abs(p[1][i])) if abs(contrib[i]) > 0.05][:3]
            out.append(ScoredTrack(idx.track_ids[i], float(score[i]), reasons))
        return out, matches


def top_k(score: np.ndarray, k: int) -> np.ndarray:
    """np.argsort(-score, kind="stable")[:k] (best first, ties in index order) without sorting every track."""
    if k >= len(score):
        return np.argsort(-score, kind="stable")[:k]
    kth = np.partition(score, len(score) - k)[len(score) - k]  # the k-th highest score
    near = np.flatnonzero(score >= kth)  # at least k tracks, in index order, ties with the k-th included
    return near[np.argsort(-score[near], kind="stable")[:k]]


def describe_track(
    tags: dict[str, float], feature_percentiles: dict[str, float], metadata: dict[str, str | None]
) -> list[tuple[str, ...]]:
    """What the library says of one track, as word slots: each slot lists interchangeable words (a tag and
    its synonyms, a descriptor's phrases), the first being the plain one. The training text of the projection."""
    slots = [CONCEPTS_BY_NAME[t].phrases for t, p in sorted(tags.items(), key=lambda kv: -kv[1]) if p >= 0.1][:5]
    for c in DESCRIPTORS:
        if c.features:
            total = sum(abs(w) for w in c.features.values())
            like = sum(abs(w) * (feature_percentiles[f] if w > 0 else 1 - feature_percentiles[f]) for f, w in c.features.items())
            if like / total >= 0.75:
                slots.append(c.phrases)
    slots += [(str(v),) for k in ("genre", "artist", "album", "year") if (v := metadata.get(k))]
    return slots

"""Zero-shot text search over what the analysis measured: MusiCNN's tags (the MSD tags and, where the library
has them, the MagnaTagATune tags), the DSP features and the library's own metadata. No training, no audio-text
model needed.

A prompt is split into clauses ("upbeat rock, no vocals" -> "upbeat rock" and a negated "vocals"; a negation
word starts a clause of its own); each clause is matched against the concepts of the vocabulary
(vocabulary.py) by sentence similarity with every phrase, so that "soundscape for sleeping" finds ambient; the
concepts close to the clause's best match count, weighted by how close they are (the clause's gist: in "calm
ambient soundscape" ambient weighs more than calm), and so does, at least a little, every concept whose phrase
the clause contains word for word ("slow dark ambient" names calm too). Tracks are scored on the library's
calibrated columns (calibration.py: z-scored logits, so a tag that every track has does not dominate), and the
score says which concepts it came from. A clause that reads like a track's genre, artist or album lifts that track.
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
from sidecar.text.calibration import Measurements
from sidecar.text.vocabulary import CONCEPTS_BY_NAME, DESCRIPTORS, LEXICON, NEGATIONS, TAG_CONCEPTS_BY_NAME, words_of

MIN_SIMILARITY = 0.5  # below this a concept's match is noise (measured on the quality corpus: 0.4 let in unrelated tags)
# Genre words are all fairly similar to each other ("orchestral" ~ "electronic" 0.5): a clause keeps only the
# concepts close to its best match.
MAX_BELOW_BEST = 0.2
METADATA_MIN_SIMILARITY = 0.5
REASON_MIN = 0.5  # a concept is a reason for a track that stands this many standard deviations its way on it
METADATA_FIELDS = ("genre", "artist", "album")
CLAUSE_CACHE_SIZE = 4096  # sentence vectors of recent clauses (1.5 KB each): a repeated clause skips the encoder

_NEGATION = re.compile(rf"^(?:{'|'.join(NEGATIONS)})\b[\s-]*", re.I)
_BEFORE_NEGATION = re.compile(rf"(?<=\w)\s+(?=(?:{'|'.join(NEGATIONS)})\b)", re.I)
_SPLIT = re.compile(r"\s*(?:[,;/]|\bbut\b|\band\b|\bwith\b|\bplus\b)\s*", re.I)
_ANYTHING_BUT = re.compile(r"\b(?:anything|everything)\s+but\b", re.I)  # a negation, though "but" splits clauses
_WHOLE = ("drum and bass", "rock and roll", "rhythm and blues")  # names with a splitting word in them


@dataclass
class Clause:
    text: str
    negative: bool


def parse_prompt(prompt: str) -> list[Clause]:
    """'upbeat rock, no vocals' -> [upbeat rock (+), vocals (-)]"""
    text = _BEFORE_NEGATION.sub(" , ", _ANYTHING_BUT.sub(" not ", prompt.strip()))
    for name in _WHOLE:  # hidden from the split: its "and" becomes a NUL character until then
        text = re.sub(re.escape(name), name.replace(" and ", "\x00"), text, flags=re.I)
    clauses = []
    for part in _SPLIT.split(text):
        part = part.replace("\x00", " and ").strip(" .!?")
        negative = bool(_NEGATION.match(part))
        words = _NEGATION.sub("", part).strip()
        if words:
            clauses.append(Clause(words, negative))
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
    """The library's calibrated tags and features, and its metadata words, rebuilt when the catalog changes."""

    def __init__(self, catalog: Catalog, encoder: TextEncoder):
        self.catalog, self.encoder = catalog, encoder
        self._stamp = None
        self._lock = threading.Lock()
        self.track_ids: list[str] = []
        self.calibration = Measurements().calibrate()
        # the library's own words: each distinct genre, artist and album is embedded once (a library has far
        # fewer of them than tracks), and each track points at its values
        self.words: list[str] = []
        self.word_vectors = np.zeros((0, encoder.dim), np.float32)
        self.word_weight = np.zeros(1, np.float32)  # per word, and 0 for "no value" (index -1)
        self.track_words = np.zeros((0, len(METADATA_FIELDS)), np.int64)  # index into words, -1: none

    def refresh(self) -> None:
        stamp = self.catalog.analysis_stamp()
        with self._lock:
            if stamp == self._stamp:
                return
            ids, measured, meta = [], Measurements(), array("q")
            known = {w: i for i, w in enumerate(self.words)}
            for r in self.catalog.iter_analysed_tracks():
                ids.append(r["track_id"])
                measured.add(r["tags"], r["features"])
                meta.extend(known.setdefault(str(r[k]), len(known)) if r[k] else -1 for k in METADATA_FIELDS)
            self.track_ids = ids
            self.calibration = measured.calibrate()
            new = list(known)[len(self.words):]
            if new:
                self.word_vectors = np.concatenate([self.word_vectors, self.encoder.encode(new)])
                self.words += new
            self.track_words = np.frombuffer(meta, np.int64).reshape(len(ids), len(METADATA_FIELDS))
            # how much a word tells: log(tracks / tracks carrying it) / log(tracks): 1 for one track's word, 0 for
            # a word on every track (a genre "Soundtrack" on most of a library says little about any one track)
            tw = self.track_words
            once = tw >= 0  # each word once per track (an album named like its artist counts once)
            for j in range(1, tw.shape[1]):
                once[:, j] &= (tw[:, :j] != tw[:, j : j + 1]).all(axis=1)
            df = np.bincount(tw[once], minlength=len(self.words)).astype(np.float64)
            n = max(len(ids), 2)
            self.word_weight = np.append(np.clip(np.log(n / np.maximum(df, 1)) / np.log(n), 0.0, 1.0), 0.0).astype(np.float32)
            self._stamp = stamp

    def metadata_similarity(self, clause_vectors: np.ndarray) -> np.ndarray:
        """Per track, the best similarity of any clause to its genre, artist or album (0 where it has none or it is
        below METADATA_MIN_SIMILARITY), times how much that word tells (word_weight)."""
        if not len(self.words) or not len(self.track_ids):
            return np.zeros(len(self.track_ids), np.float32)
        per_word = np.append((clause_vectors @ self.word_vectors.T).max(axis=0), 0.0).astype(np.float32)  # -1: no value
        per_word = np.where(per_word >= METADATA_MIN_SIMILARITY, per_word * self.word_weight, 0.0).astype(np.float32)
        best = per_word[self.track_words[:, 0]]
        for j in range(1, len(METADATA_FIELDS)):  # column by column: a max over a 3-wide axis is slow in numpy
            np.maximum(best, per_word[self.track_words[:, j]], out=best)
        return best


class ZeroShotSearch:
    def __init__(self, catalog: Catalog, encoder: TextEncoder):
        self.encoder = encoder
        self.index = LibraryIndex(catalog, encoder)
        phrases = [(i, p) for i, c in enumerate(LEXICON) for p in c.phrases]
        self._phrase_concept = np.array([i for i, _ in phrases])
        self._phrase_vectors = encoder.encode([p for _, p in phrases])
        self._phrase_words = {tuple(words_of(p)): i for i, p in phrases}  # the phrases as words, for a clause that names them
        self._longest_phrase = max(len(w) for w in self._phrase_words)
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

    def named(self, text: str) -> list[int]:
        """The concepts whose phrases the text contains word for word, longest phrases first."""
        words, found, i = words_of(text), [], 0
        while i < len(words):
            for n in range(min(self._longest_phrase, len(words) - i), 0, -1):
                concept = self._phrase_words.get(tuple(words[i : i + n]))
                if concept is not None:
                    found.append(concept)
                    i += n
                    break
            else:
                i += 1
        return found

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
            for i in np.union1d(np.flatnonzero(best >= floor), self.named(clause.text)).astype(int):
                w = max(best[i] - floor, 0.0) / (1 - floor) + 0.1
                m = Match(LEXICON[i].name, -w if clause.negative else w, float(best[i]), clause.text)
                if LEXICON[i].name not in matches or abs(m.weight) > abs(matches[m.concept].weight):
                    matches[m.concept] = m
        return sorted(matches.values(), key=lambda m: -abs(m.weight)), clauses

    def search(self, prompt: str, negative_prompts: list[str] = (), limit: int = 25) -> tuple[list[ScoredTrack], list[Match]]:
        idx = self.index
        idx.refresh()
        track_ids, calibration = idx.track_ids, idx.calibration  # of one analysis, should another refresh come
        matches, clauses = self.match(prompt, negative_prompts)
        n = len(track_ids)
        if n == 0:
            return [], matches
        score = np.zeros(n, np.float32)
        parts: list[tuple[str, float, np.ndarray]] = []  # (reason, weight, how far each track stands its way)
        total = 0.0
        for m in matches:
            s = calibration.concept(CONCEPTS_BY_NAME[m.concept])
            if s is None:  # none of its tags or features is in this library
                continue
            way = s if m.weight > 0 else -s  # how far each track stands the way the prompt asks
            # "no vocals" pushes down the tracks that have vocals; it does not rank the rest by how little they have
            score += abs(m.weight) * (way if m.weight > 0 else np.minimum(way, 0.0))
            total += abs(m.weight)
            parts.append((f"{'not ' if m.weight < 0 else ''}{m.concept} (from '{m.clause}', {m.similarity:.2f})", abs(m.weight), way))
        if total:
            score /= total
        # the library's own words: a clause that reads like a track's genre, artist or album lifts the track by up
        # to the whole spread of the audio score (what the library says outweighs what the audio suggests)
        positive = [c.text for c in clauses if not c.negative]
        if positive and len(idx.words):
            msim = idx.metadata_similarity(self.clause_vectors(positive))
            spread = float(score.max() - score.min()) or 1.0
            lift = (msim * spread).astype(np.float32)
            score += lift
            parts.append(("metadata", 1.0, lift))
        order = top_k(score, limit)
        out = []
        for i in order:
            ways = sorted(((w * v[i], name) for name, w, v in parts if v[i] >= REASON_MIN), reverse=True)
            out.append(ScoredTrack(track_ids[i], float(score[i]), [name for _, name in ways[:3]]))
        return out, matches


def top_k(score: np.ndarray, k: int) -> np.ndarray:
    """np.argsort(-score, kind="stable")[:k] (best first, ties in index order) without sorting every track."""
    if k >= len(score):
        return np.argsort(-score, kind="stable")[:k]
    kth = np.partition(score, len(score) - k)[len(score) - k]  # the k-th highest score
    near = np.flatnonzero(score >= kth)  # at least k tracks, in index order, ties with the k-th included
    return near[np.argsort(-score[near], kind="stable")[:k]]


DESCRIBES = 0.75  # a descriptor describes a track in the top quarter of the library on it


def describe_track(
    tags: dict[str, float], descriptor_percentiles: dict[str, float], metadata: dict[str, str | None]
) -> list[tuple[str, ...]]:
    """What the library says of one track, as word slots: each slot lists interchangeable words (an MSD tag and
    its synonyms, a descriptor's phrases), the first being the plain one. The training text of the projection.
    `descriptor_percentiles`: the track's percentile rank in the library on each descriptor."""
    msd = [(t, p) for t, p in tags.items() if t in TAG_CONCEPTS_BY_NAME]
    slots = [TAG_CONCEPTS_BY_NAME[t].phrases for t, p in sorted(msd, key=lambda kv: -kv[1]) if p >= 0.1][:5]
    slots += [c.phrases for c in DESCRIPTORS if descriptor_percentiles.get(c.name, 0.0) >= DESCRIBES]
    slots += [(str(v),) for k in ("genre", "artist", "album", "year") if (v := metadata.get(k))]
    return slots

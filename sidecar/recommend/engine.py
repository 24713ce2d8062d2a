"""The recommendation engine behind POST /api/recommendations.

Per model: every seed is a unit vector with a weight (older seeds weigh less); a track's relevance is its
weighted mean cosine similarity to the positive seeds, minus `negative_penalty` times its highest similarity
to a negative seed or prompt. The model's candidates are its best `candidates_per_model` tracks. Scores are
put on one scale across models (each model's relevance as a z-score over the whole library, through the
normal CDF, so 0-1), then merged:

- union: every candidate of any model (the union of each model's best `candidates_per_model`), scored by the
  mean of the models' z-scores for it weighted by their `fusion_weight` (a model without a vector for the track
  is left out), through the normal CDF: it ranks like one vector fusing the models, so a weaker model added
  to a stronger one moves the ranking a little instead of filling half of it with its own picks (on the labelled
  corpus, musicnn + dsp at 0.25: album P@10 0.419 / 0.281 on dev / test albums against musicnn alone 0.414 /
  0.285; the best model's relevance, as union scored before, gave 0.390 / 0.257; a mean of the 0-1 relevances
  0.400 / 0.262, the normal CDF flattening the differences among a strong model's best matches);
- intersection: only tracks every model proposed, scored by the mean;
- priority: the intersection if it fills the playlist, else the highest-priority model's own list;
- min_model_agreement K: only tracks proposed by at least K models (raising K can only remove tracks).

Then the user's low ratings are penalised, and the playlist is picked by maximal marginal relevance:
each next track maximises (1 - diversity) * score - diversity * (its highest similarity to a track already
picked), so diversity 0 is plain ranking and higher values spread the playlist out.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from schemas.recommend import NearSeed, Recommendation, RecommendationRequest, RecommendationResponse, Seed
from sidecar.data.mirror import Rows
from sidecar.data.recordings import Recordings
from sidecar.errors import BadInput

DISCOVERY_DIVERSITY = 0.3
FAVORITE_WEIGHT = 1.5


@dataclass
class _ModelSeeds:
    pos: list[np.ndarray] = field(default_factory=list)
    pos_w: list[float] = field(default_factory=list)
    pos_label: list[str] = field(default_factory=list)
    neg: list[np.ndarray] = field(default_factory=list)
    neg_w: list[float] = field(default_factory=list)
    neg_label: list[str] = field(default_factory=list)

    def add(self, vector: np.ndarray, weight: float, label: str, negative: bool) -> None:
        v = np.asarray(vector, np.float32)
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        if negative:
            self.neg.append(v), self.neg_w.append(weight), self.neg_label.append(label)
        else:
            self.pos.append(v), self.pos_w.append(weight), self.pos_label.append(label)


@dataclass
class _Scored:
    ids: Rows
    z: np.ndarray  # per library track: the model's z-score of its raw relevance over the library
    candidates: list[int]  # row indices, best first
    pos_sims: np.ndarray  # (n, seeds)
    neg_sims: np.ndarray | None
    seeds: _ModelSeeds

    def relevance(self, row: int) -> float:
        """0-1: the z-score through the normal CDF, so that models' relevances share one scale."""
        return float(ndtr(self.z[row]))

    @property
    def neg_cut(self) -> np.ndarray:
        """Per negative seed, the similarity above which a track is among the quarter most like it."""
        return np.quantile(self.neg_sims, 0.75, axis=0)


class Engine:
    def __init__(self, catalog, store, embedders, text=None):
        self.catalog, self.store, self.embedders, self.text = catalog, store, embedders, text

    # ---- seeds
    def _gather_seeds(self, req: RecommendationRequest) -> tuple[list[Seed], set[str]]:
        """The request's seeds plus the mode's, and the tracks the mode leaves out."""
        seeds = list(req.seeds)
        exclude: set[str] = set()
        if req.mode in ("recent", "all", "discovery"):
            seeds += [Seed(track_id=t, played_at=_dt(at)) for t, at in self.catalog.recent_listens(req.user, 50)]
        if req.mode in ("favorites", "all", "discovery"):
            seeds += [Seed(track_id=t, played_at=_dt(at), weight=FAVORITE_WEIGHT) for t, at in self.catalog.favorites(req.user)]
        if req.mode == "discovery":
            exclude |= self.catalog.played_tracks(req.user)
        if not seeds and not req.negative_prompts:
            where = f"user {req.user!r} has no listening history for mode {req.mode}" if req.mode != "custom" else "no seeds given"
            raise BadInput(f"nothing to recommend from: {where}", "seeds")
        return seeds, exclude

    def _resolve(self, req: RecommendationRequest, seeds: list[Seed], models: list[str]) -> dict[str, _ModelSeeds]:
        ids = self.catalog.resolve_ids(s.track_id for s in seeds if s.track_id)
        unknown = [s.track_id for s in seeds if s.track_id and s.track_id not in ids]
        if unknown:
            raise BadInput(f"unknown track id {unknown[0]!r}", "seeds")
        now = time.time()
        per_model = {m: _ModelSeeds() for m in models}
        for m in models:
            track_seeds = [s for s in seeds if s.track_id]
            vectors = self.store.get_vectors(m, [ids[s.track_id] for s in track_seeds])
            for s in track_seeds:
                v = vectors.get(ids[s.track_id])
                if v is not None:
                    per_model[m].add(v, _decayed(s, now, req.recency_half_life_days), ids[s.track_id], s.sign == "negative")
            for i, s in enumerate(x for x in seeds if x.vector is not None):
                if s.model not in per_model:
                    raise BadInput(f"a vector seed is in model {s.model!r}, which is not among the request's models", "seeds")
                if s.model == m:
                    if len(s.vector) != self.store.dim(m):
                        raise BadInput(f"a {m} vector has {self.store.dim(m)} numbers, not {len(s.vector)}", "seeds")
                    per_model[m].add(np.array(s.vector), _decayed(s, now, req.recency_half_life_days), f"vector #{i + 1}", s.sign == "negative")
            texts = [(s.text, _decayed(s, now, req.recency_half_life_days), s.sign == "negative") for s in seeds if s.text]
            texts += [(p, 1.0, True) for p in req.negative_prompts]
            if texts:
                field = "seeds" if any(s.text for s in seeds) else "negative_prompts"
                vectors_t = self._embed_text(m, [t for t, _, _ in texts], field)
                for (t, w, neg), v in zip(texts, vectors_t):
                    per_model[m].add(v, w, f"text: {t}", neg)
        return per_model

    def _embed_text(self, model: str, texts: list[str], field: str) -> np.ndarray:
        if self.text is None:
            raise BadInput("text seeds need the text encoder, which is unavailable", field)
        try:
            return self.text.embed_text(model, texts)[0]
        except BadInput as e:  # a model without text: the request's field at fault is the seed's
            raise BadInput(str(e), field) from None

    # ---- scoring
    def _score(self, model: str, seeds: _ModelSeeds, excluded: set[str], k: int, penalty: float) -> _Scored | None:
        if not seeds.pos:
            return None
        queries = np.stack(seeds.pos + seeds.neg)
        ids, sims = self.store.similarities(model, queries)
        if not ids:
            return None
        n_pos = len(seeds.pos)
        pos_sims, neg_sims = sims[:, :n_pos], (sims[:, n_pos:] if seeds.neg else None)
        w = np.array(seeds.pos_w, np.float32)
        raw = pos_sims @ (w / w.sum())
        if neg_sims is not None:
            raw = raw - penalty * np.clip(neg_sims * np.array(seeds.neg_w, np.float32), 0, None).max(axis=1)
        std = float(raw.std())
        z = (raw - raw.mean()) / std if std > 1e-9 else np.zeros(len(raw))
        allowed = z.copy()
        for tid in excluded:
            if (i := ids.row(tid)) is not None:
                allowed[i] = -np.inf
        k = min(k, int(np.isfinite(allowed).sum()))
        top = np.argpartition(-allowed, k - 1)[:k] if k > 0 else np.array([], int)
        top = top[np.argsort(-allowed[top], kind="stable")]
        return _Scored(ids, z, [int(i) for i in top], pos_sims, neg_sims if penalty > 0 else None, seeds)

    def recommend(self, req: RecommendationRequest) -> RecommendationResponse:
        models = [self.embedders.require(m, "models") for m in req.models or ()] or [self.embedders.default]
        priorities = req.model_priorities or models
        if set(priorities) != set(models):
            raise BadInput("model_priorities must list exactly the request's models", "model_priorities")
        seeds, excluded = self._gather_seeds(req)
        per_model = self._resolve(req, seeds, models)
        warnings = [f"no positive seed has a {m} vector; {m} proposed nothing" for m in models if not per_model[m].pos]
        if all(not s.pos for s in per_model.values()):
            raise BadInput("none of the seeds has a vector in the requested models (not analysed yet?)", "seeds")

        excluded |= {s for ms in per_model.values() for s in ms.pos_label + ms.neg_label if not s.startswith(("text:", "vector #"))}
        excluded |= set(self.catalog.resolve_ids(req.exclude_track_ids).values())
        for pid in req.exclude_playlist_ids:
            tracks = self.catalog.playlist_tracks(pid)
            if tracks is None:
                raise BadInput(f"unknown playlist id {pid!r}", "exclude_playlist_ids")
            excluded |= set(tracks)
        k = req.candidates_per_model or 4 * req.limit
        scored = {m: s for m in models if (s := self._score(m, per_model[m], excluded, k, req.negative_penalty)) is not None}

        merged = self._merge(req, scored, priorities)
        low = self.catalog.low_rated(req.user) if req.user else set()
        for tid, entry in merged.items():
            if tid in low:
                entry["score"] *= req.low_rating_penalty
                entry["reasons"].append("rated low by the user")
        ranked = sorted(merged, key=lambda t: -merged[t]["score"])  # one file of each recording, none of a seed's
        merged = {t: merged[t] for t in Recordings.of(self.catalog).distinct(ranked, taken=excluded)}
        diversity = req.diversity if req.diversity is not None else (DISCOVERY_DIVERSITY if req.mode == "discovery" else 0.0)
        picked = self._mmr(merged, scored, req.limit, diversity)
        meta = self.catalog.tracks_brief(picked)
        out = [self._explain(tid, merged[tid], scored, meta[tid]) for tid in picked if tid in meta]
        return RecommendationResponse(
            mode=req.mode, models=models, merge_strategy=req.merge_strategy, seeds_used=len(seeds), diversity=diversity,
            tracks=out, warnings=warnings,
        )

    def _merge(self, req: RecommendationRequest, scored: dict[str, _Scored], priorities: list[str]) -> dict[str, dict]:
        found: dict[str, dict[str, float]] = {}
        order: dict[str, list[str]] = {}
        for m, s in scored.items():
            order[m] = [s.ids[i] for i in s.candidates]
            for i in s.candidates:
                found.setdefault(s.ids[i], {})[m] = float(s.relevance(i))
        everyone = set(scored)

        def entry(tid: str, score: float) -> dict:
            return {"score": score, "models": sorted(found[tid]), "reasons": []}

        if req.merge_strategy == "union":
            merged = {t: entry(t, self._fused(t, scored)) for t in found}
        else:
            merged = {t: entry(t, float(np.mean(list(by.values())))) for t, by in found.items() if set(by) == everyone}
            if req.merge_strategy == "priority" and len(merged) < req.limit:
                primary = next(m for m in priorities if m in scored)
                merged = {t: entry(t, found[t][primary]) for t in order[primary]}
                for e in merged.values():
                    e["reasons"].append(f"too few tracks all models agree on: {primary}'s list (priority)")
        if req.min_model_agreement > 1:
            merged = {t: e for t, e in merged.items() if len(found[t]) >= req.min_model_agreement}
        return merged

    def _fused(self, tid: str, scored: dict[str, _Scored]) -> float:
        """The fusion_weight-weighted mean of the models' z-scores for the track, as a relevance (0-1)."""
        total = weights = 0.0
        for m, s in scored.items():
            if (i := s.ids.row(tid)) is not None:
                w = self.embedders.ready[m].fusion_weight
                total, weights = total + w * float(s.z[i]), weights + w
        return float(ndtr(total / weights))

    def _mmr(self, merged: dict[str, dict], scored: dict[str, _Scored], limit: int, diversity: float) -> list[str]:
        ranked = sorted(merged, key=lambda t: -merged[t]["score"])
        if diversity <= 0 or len(ranked) <= 1:
            return ranked[:limit]
        model = next(iter(scored))
        vecs = self.store.get_vectors(model, ranked)
        pool = [t for t in ranked if t in vecs]
        if not pool:
            return ranked[:limit]
        m = np.stack([vecs[t] for t in pool]).astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True).clip(1e-12)
        rel = np.array([merged[t]["score"] for t in pool], np.float32)
        closest = np.full(len(pool), -np.inf, np.float32)  # highest similarity to anything picked so far
        chosen: list[int] = []
        available = np.ones(len(pool), bool)
        while len(chosen) < min(limit, len(pool)):
            value = (1 - diversity) * rel - diversity * np.where(np.isfinite(closest), closest, 0.0)
            value[~available] = -np.inf
            i = int(np.argmax(value))
            chosen.append(i)
            available[i] = False
            closest = np.maximum(closest, m @ m[i])
        return [pool[i] for i in chosen]

    def _explain(self, tid: str, entry: dict, scored: dict[str, _Scored], meta: dict) -> Recommendation:
        near: list[NearSeed] = []
        reasons = [f"found by {', '.join(entry['models'])}"] + entry["reasons"]
        for m, s in scored.items():
            i = s.ids.row(tid)
            if i is None:
                continue
            for j in np.argsort(-s.pos_sims[i])[:2]:
                near.append(NearSeed(seed=s.seeds.pos_label[j], similarity=round(float(s.pos_sims[i, j]), 4), model=m))
            if s.neg_sims is not None:
                j = int(np.argmax(s.neg_sims[i] - s.neg_cut))
                if s.neg_sims[i, j] >= s.neg_cut[j]:
                    reasons.append(f"pushed down: like {s.seeds.neg_label[j]} ({s.neg_sims[i, j]:.2f}, {m})")
        return Recommendation(**meta, score=round(entry["score"], 6), models=entry["models"], nearest_seeds=near, reasons=reasons)


def _decayed(seed: Seed, now: float, half_life_days: float) -> float:
    if seed.played_at is None:
        return seed.weight
    age_days = max(0.0, now - seed.played_at.timestamp()) / 86400
    return seed.weight * 0.5 ** (age_days / half_life_days)


def _dt(epoch: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc)

"""Playlists from text, two ways: zero-shot over the analysis (zero_shot), or text vectors in each audio
model's space (a model's own text tower, or a trained projection), searched in Milvus."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from schemas.api import ConceptMatch, PlaylistTrack, TextPlaylist, TextRecommendationRequest
from sidecar.data import Catalog, VectorStore
from sidecar.data.recordings import Recordings
from sidecar.errors import BadInput
from sidecar.plugins import LoadedEmbedders, TextEncoder
from sidecar.text.projection import TextProjector, checkpoint_path
from sidecar.text.zero_shot import ZeroShotSearch

log = logging.getLogger(__name__)


class UnsupportedModel(BadInput):
    """A model that cannot take text; the message names the ones that can."""

    def __init__(self, message: str, field: str = "model"):
        super().__init__(message, field)


class TextRecommender:
    def __init__(self, catalog: Catalog, store: VectorStore, embedders: LoadedEmbedders, encoder: TextEncoder, data_dir: Path):
        self.catalog, self.store, self.embedders, self.encoder = catalog, store, embedders, encoder
        self.zero_shot = ZeroShotSearch(catalog, encoder) if "musicnn" in embedders.ready else None
        self.projections: dict[str, TextProjector] = {}
        for name, emb in embedders.ready.items():
            path = checkpoint_path(data_dir, name)
            if emb.supports_text or not path.exists():
                continue
            try:
                projector = TextProjector(path, encoder)
            except Exception as e:  # a stale or foreign checkpoint: say so, and go on without it
                log.warning("text projection for %s not loaded: %s", name, e)
                continue
            if projector.meta["audio_version"] != emb.version:
                log.warning("text projection for %s was trained on version %s, now %s: run `sidecar train-text`",
                            name, projector.meta["audio_version"], emb.version)
            self.projections[name] = projector

    def text_models(self) -> dict[str, str]:
        """Audio models that take text, and how: joint (own text tower) or projection (trained)."""
        out = {n: "joint" for n, e in self.embedders.ready.items() if e.supports_text}
        out.update({n: "projection" for n in self.projections})
        return out

    def embed_text(self, model: str, texts: list[str]) -> tuple[np.ndarray, str]:
        via = self.text_models().get(model)
        if via is None:
            raise UnsupportedModel(
                f"model {model!r} cannot embed text; models that can: {', '.join(self.text_models()) or 'none'}"
                + ("" if self.text_models() else " (train a projection with `sidecar train-text`)")
            )
        vectors = self.embedders.ready[model].embed_text(texts) if via == "joint" else self.projections[model].embed_text(texts)
        return np.asarray(vectors, np.float32), via

    def recommend(self, req: TextRecommendationRequest) -> TextPlaylist:
        models = req.models or list(self.text_models())
        method = req.method
        if method == "auto":
            method = "vector" if models else "tags"
        if method == "tags":
            if self.zero_shot is None:
                raise UnsupportedModel("zero-shot text search needs the musicnn embedder", "method")
            recordings = Recordings.of(self.catalog)  # one file of each recording
            scored, matches = self.zero_shot.search(req.text, req.negative_prompts, req.limit + recordings.spare())
            scored = recordings.distinct(scored, req.limit, key=lambda s: s.track_id)
            meta = self.catalog.tracks_brief(s.track_id for s in scored)
            tracks = [
                PlaylistTrack(**meta[s.track_id], score=round(s.score, 6), models=["musicnn", "dsp"], reasons=s.reasons)
                for s in scored if s.track_id in meta
            ]
            return TextPlaylist(method="tags", matched=[ConceptMatch(**m.__dict__) for m in matches], tracks=tracks)
        return TextPlaylist(method="vector", tracks=self._vector_search(req, models))

    def _vector_search(self, req: TextRecommendationRequest, models: list[str]) -> list[PlaylistTrack]:
        best: dict[str, tuple[float, list[str], str]] = {}
        for model in models:
            q, via = self.embed_text(model, [req.text])
            hits = self.store.search(model, q[0], req.limit * 3)
            if not hits:
                continue
            scores = {tid: sim for tid, sim in hits}
            reason = f"{model}: near the text ({via})"
            if req.negative_prompts:
                neg, _ = self.embed_text(model, req.negative_prompts)
                vecs = self.store.get_vectors(model, list(scores))
                for tid, v in vecs.items():
                    v = v / max(float(np.linalg.norm(v)), 1e-9)
                    scores[tid] -= req.negative_penalty * max(0.0, float((neg @ v).max()))
            for tid, s in scores.items():
                prev = best.get(tid)
                if prev is None:
                    best[tid] = (s, [model], reason)
                else:  # union: the best score any model gave, and every model that found it
                    best[tid] = (max(prev[0], s), prev[1] + [model], prev[2])
        ranked = Recordings.of(self.catalog).distinct(sorted(best.items(), key=lambda kv: -kv[1][0]), req.limit, key=lambda kv: kv[0])
        meta = self.catalog.tracks_brief(t for t, _ in ranked)
        return [
            PlaylistTrack(**meta[t], score=round(s, 6), models=ms, reasons=[why]) for t, (s, ms, why) in ranked if t in meta
        ]

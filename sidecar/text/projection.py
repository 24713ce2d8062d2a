"""A trained projection from text into an audio model's space (the seed's TextToAudioEmbedder).

Trained contrastively on the user's own library: each track's text is what the library says of it (file
tags: genre, artist, album, year; MusiCNN's predicted tags; words for its DSP measurements), each track's
target is its audio vector. A small MLP maps the sentence encoder's vector onto the audio vector's
direction (symmetric InfoNCE). One checkpoint per audio model, in data_dir/text_projection/<model>.pt.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from sidecar.data.catalog import Catalog
from sidecar.plugins import TextEncoder
from sidecar.data.store import VectorStore
from sidecar.text.calibration import Measurements
from sidecar.text.vocabulary import DESCRIPTORS
from sidecar.text.zero_shot import describe_track

FORMAT = 1
AUGMENTED_TEXTS = 8  # random word subsets per track, encoded once


class Projection(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=-1)


@dataclass
class LibraryText:
    track_ids: list[str]
    words: list[list[tuple[str, ...]]]  # word slots per track (see zero_shot.describe_track)
    audio: np.ndarray  # (n, dim) unit vectors


def library_text(catalog: Catalog, store: VectorStore, model: str) -> LibraryText:
    """Every track that has both a MusiCNN analysis and a vector of `model`, with its words."""
    # by content hash: the same music gives the same folds, whatever its random track ids
    rows = sorted(catalog.analysed_tracks(with_model=model), key=lambda r: r["content_hash"])
    measured = Measurements()
    for r in rows:
        measured.add(r["tags"], r["features"])
    calibration = measured.calibrate()
    ranks = {c.name: pct for c in DESCRIPTORS if (pct := calibration.ranks(c)) is not None}
    ids, words = [], []
    for i, r in enumerate(rows):
        ids.append(r["track_id"])
        words.append(describe_track(r["tags"], {name: float(v[i]) for name, v in ranks.items()}, r))
    vectors = {}
    for i in range(0, len(ids), 1000):
        vectors.update(store.get_vectors(model, ids[i : i + 1000]))
    keep = [i for i, t in enumerate(ids) if t in vectors]
    audio = np.stack([vectors[ids[i]] for i in keep]) if keep else np.zeros((0, 1), np.float32)
    audio /= np.linalg.norm(audio, axis=1, keepdims=True).clip(1e-9)
    return LibraryText([ids[i] for i in keep], [words[i] for i in keep], audio.astype(np.float32))


def _augment(slots: list[tuple[str, ...]], rng: np.random.Generator) -> str:
    """Some of the track's word slots, in random order, each as one of its alternatives."""
    if not slots:
        return "music"
    k = int(rng.integers(1, len(slots) + 1))
    return ", ".join(str(rng.choice(slots[i])) for i in rng.permutation(len(slots))[:k])


def plain_text(slots: list[tuple[str, ...]]) -> str:
    return ", ".join(s[0] for s in slots) or "music"


@dataclass
class TrainResult:
    projection: Projection  # fitted on every track
    recall_at_10: float  # mean over folds: each track's own text, held out, among all tracks' audio
    chance_at_10: float
    folds: int
    n_tracks: int
    seconds: float


def train(
    lib: LibraryText, encoder: TextEncoder, *, epochs: int = 60, folds: int = 5, seed: int = 0,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Estimate recall@10 by k-fold cross-validation (each track's text is a query once, from a model that
    never saw that track; chance is 10 / number of tracks), then fit the projection on every track.
    `on_epoch(done, total, loss)` reports progress over all the fits."""
    t0 = time.perf_counter()
    n = len(lib.track_ids)
    if n < 10:
        raise ValueError(f"{n} tracks have both analyses; at least 10 are needed to train")
    folds = max(2, min(folds, n // 2))
    order = np.random.default_rng(seed).permutation(n)
    total = (folds + 1) * epochs
    hits = 0.0
    for f, test in enumerate(np.array_split(order, folds)):
        model = _fit(lib, encoder, np.setdiff1d(order, test), epochs, seed, on_epoch and (lambda e, loss, f=f: on_epoch(f * epochs + e + 1, total, loss)))
        hits += recall_at_k(model, encoder, lib, test, k=10) * len(test)
    final = _fit(lib, encoder, order, epochs, seed, on_epoch and (lambda e, loss: on_epoch(folds * epochs + e + 1, total, loss)))
    return TrainResult(final, hits / n, min(1.0, 10 / n), folds, n, time.perf_counter() - t0)


def _fit(lib: LibraryText, encoder: TextEncoder, train_idx: np.ndarray, epochs: int, seed: int, on_epoch=None) -> Projection:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    texts = [_augment(lib.words[i], rng) for i in train_idx for _ in range(AUGMENTED_TEXTS)]
    text_vecs = torch.from_numpy(encoder.encode(texts)).view(len(train_idx), AUGMENTED_TEXTS, -1)
    targets = torch.from_numpy(lib.audio)[torch.from_numpy(train_idx)]
    model = Projection(text_vecs.shape[-1], targets.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scale = 1 / 0.07  # CLIP's initial temperature
    batch = min(64, len(train_idx))
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train_idx))
        total = 0.0
        for s in range(0, len(perm), batch):
            b = perm[s : s + batch]
            logits = scale * model(text_vecs[b, torch.randint(0, AUGMENTED_TEXTS, (len(b),))]) @ targets[b].T
            labels = torch.arange(len(b))
            loss = (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        if on_epoch:
            on_epoch(epoch, total / len(train_idx))
    return model.eval()


def recall_at_k(model: Projection, encoder: TextEncoder, lib: LibraryText, which: np.ndarray, k: int = 10) -> float:
    queries = [plain_text(lib.words[i]) for i in which]
    with torch.inference_mode():
        q = model(torch.from_numpy(encoder.encode(queries))).numpy()
    sims = q @ lib.audio.T
    hits = 0
    for row, i in zip(sims, which):
        top = np.argsort(-row, kind="stable")[:k]
        hits += int(i in top)
    return hits / len(which)


def checkpoint_path(data_dir: Path, model: str) -> Path:
    return data_dir / "text_projection" / f"{model}.pt"


def save(path: Path, result: TrainResult, *, audio_model: str, audio_version: str, encoder: TextEncoder) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    lin_in, lin_out = result.projection.net[0], result.projection.net[3]
    torch.save(
        {
            "format": FORMAT, "state_dict": result.projection.state_dict(),
            "in_dim": lin_in.in_features, "hidden": lin_in.out_features, "out_dim": lin_out.out_features,
            "audio_model": audio_model, "audio_version": audio_version,
            "text_encoder": f"{encoder.name}:{encoder.version}",
            "recall_at_10": result.recall_at_10, "chance_at_10": result.chance_at_10, "folds": result.folds,
            "n_tracks": result.n_tracks, "trained_at": time.time(),
        },
        tmp,
    )
    tmp.replace(path)


class TextProjector:
    """A loaded checkpoint: text -> unit vectors in the audio model's space."""

    def __init__(self, path: Path, encoder: TextEncoder):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
        if ckpt.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown checkpoint format {ckpt.get('format')}")
        if ckpt["text_encoder"] != f"{encoder.name}:{encoder.version}":
            raise ValueError(f"{path} was trained with text encoder {ckpt['text_encoder']}; run `sidecar train-text` again")
        self.meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
        self.model = Projection(ckpt["in_dim"], ckpt["out_dim"], ckpt["hidden"])
        self.model.load_state_dict(ckpt["state_dict"])
        self.model.eval()
        self.encoder = encoder

    def embed_text(self, texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(self.encoder.encode(texts))).numpy()

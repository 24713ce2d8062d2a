"""What the MusiCNN plugin keeps of its networks' per-patch outputs: the track vector, its similarity space and
the tags. numpy only; scripts/bench_quality.py scores the same functions on its cached per-patch outputs, so the
benchmark's figures are the plugin's.

The recipe (issue 13, chosen on the benchmark's dev albums, .cache/quality/REPORT.md): MSD_musicnn on the (at most
24) spread patches and MTT_vgg on every other of them. The vector is the raw concatenation

    [MSD dense pre-activation: patch mean (200) | patch std (200)
     | MTT_vgg pool5: patch mean (256) | patch std (256)
     | logit of the mean MSD tag probability (50) | logit of the mean MTT tag probability (50)]   = 1,012

(without MTT_vgg: [MSD mean | MSD std | MSD tag logits] = 450). The store z-scores every dimension over the
library and compares tracks block by block (`sidecar.plugins.Block`). The blocks and weights reproduce the
benchmark's recipe exactly: there each network's block was unit([unit(z mean), 0.5 unit(z std)]), whose cosine is
(cos_mean + 0.25 cos_std) / 1.25, and the tag block unit([unit(z MSD logits), unit(z MTT logits)]) at half a
network's weight; so a track pair's cosine is

    (0.8 cos_msd_mean + 0.2 cos_msd_std + 0.8 cos_vgg_mean + 0.2 cos_vgg_std + 0.25 cos_msd_tags + 0.25 cos_mtt_tags) / 2.5

With MSD_musicnn alone the tag block weighs 0.25 (the benchmark's "MSD: z, mean+std(0.5) + tags 0.5").
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sidecar.plugins import Block
from sidecar.text.vocabulary import MSD_TAGS, MTT_PREFIX, MTT_TAGS

__all__ = ["MSD", "MSD_TAGS", "MTT_PREFIX", "MTT_TAGS", "VGG", "space", "track_tags", "track_vector", "vgg_patches"]

MSD = "MSD_musicnn"
VGG = "MTT_vgg"

# the networks' tag names (musicnn/configuration.py) are the sidecar's vocabulary: one list, there

MSD_DIM, VGG_DIM, N_TAGS = 200, 256, 50
STD_SHARE = 0.2  # of a network's weight: (0.5 x patch std)^2 / (1 + 0.5^2), see the module doc
TAGS_WEIGHT = 0.25  # per network's tag logits, against 1 per network's embedding
PROB_EPS = 1e-6  # tag probabilities are clipped to [eps, 1 - eps] before the logit


def vgg_patches(n: int, budget: int) -> slice:
    """The patches MTT_vgg sees of the `n` MSD_musicnn sees: every k-th, k the smallest step that keeps at most
    `budget` (24 and 12: every other one)."""
    return slice(None, None, max(1, -(-n // budget)))


def space(vgg: bool) -> tuple[Block, ...]:
    """The blocks of `track_vector(..., vgg=...)`, in order."""
    nets = [("msd", MSD_DIM)] + ([("mtt_vgg", VGG_DIM)] if vgg else [])
    blocks = []
    for name, dim in nets:
        blocks += [Block(f"{name}_mean", dim, 1 - STD_SHARE), Block(f"{name}_std", dim, STD_SHARE)]
    blocks.append(Block("msd_tags", N_TAGS, TAGS_WEIGHT))
    if vgg:
        blocks.append(Block("mtt_tags", N_TAGS, TAGS_WEIGHT))
    return tuple(blocks)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, PROB_EPS, 1 - PROB_EPS)
    return np.log(p / (1 - p))


def track_vector(msd: Mapping[str, np.ndarray], vgg: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """The track vector (see the module doc) from per-patch outputs: `msd` holds MSD_musicnn's "dense_preact" (n,
    200) and "taggram" (n, 50); `vgg` MTT_vgg's "pool5" (m, 256) and "taggram" (m, 50) or None. float32."""
    embeddings = [np.asarray(msd["dense_preact"], np.float64)]
    taggrams = [np.asarray(msd["taggram"], np.float64)]
    if vgg is not None:
        embeddings.append(np.asarray(vgg["pool5"], np.float64))
        taggrams.append(np.asarray(vgg["taggram"], np.float64))
    parts = [p for e in embeddings for p in (e.mean(axis=0), e.std(axis=0))]
    parts += [_logit(t.mean(axis=0)) for t in taggrams]
    return np.concatenate(parts).astype(np.float32)


def track_tags(msd: Mapping[str, np.ndarray], vgg: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """Mean tag probabilities over the patches: the MSD tags by name, then the MTT tags as "mtt:<tag>"."""
    tags = dict(zip(MSD_TAGS, np.asarray(msd["taggram"], np.float64).mean(axis=0).tolist()))
    if vgg is not None:
        mtt = np.asarray(vgg["taggram"], np.float64).mean(axis=0).tolist()
        tags.update((MTT_PREFIX + t, p) for t, p in zip(MTT_TAGS, mtt))
    return tags

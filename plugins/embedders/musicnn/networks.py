"""The four pretrained networks of the `musicnn==0.1.0` wheel in PyTorch: MSD_musicnn, MTT_musicnn, MSD_vgg
and MTT_vgg (musicnn/models.py: `build_musicnn` and `vgg`). numpy-only checkpoint reading (`checkpoint.py`).

- MSD_musicnn and MTT_musicnn share one architecture (`model.MusicnnMSD`: front-end, mid-end, back-end,
  num_filt_midend=64, num_units_backend=200) and one checkpoint layout (`convert.tf_to_torch`); they differ
  in their weights and in the tags they predict (Million Song Dataset vs MagnaTagATune, 50 each).
- MSD_vgg and MTT_vgg are `MusicnnVGG` below: five 3x3 conv layers of 128 filters (conv -> ReLU -> BN ->
  max-pool), then dense 256 -> 50. Their "penultimate" representation is `pool5` flattened (2 time steps x
  128 filters = 256, the input of the output layer; musicnn's extractor exposes pool1..pool5).

All four take the same input as the product's MSD model (`preprocess.audio_to_patches`: (n, 187, 96)
log-mel patches), so one mel computation feeds every network. The plugin (`__init__.py`) runs MSD_musicnn and
MTT_vgg; `load_network(wheel, name)` loads any of the four, for scripts/bench_quality.py and the tests. Checkpoint
reading and the state-dict mapping are numpy-only, in `convert.py`; the ONNX export is `onnx_backend.export_model`.
Model, weights and tags: ISC licence, Music Technology Group, Universitat Pompeu Fabra.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .convert import NETWORKS, VGG_FILTERS, network_state, read_network_checkpoint, vgg_tf_to_torch
from .model import BN_EPS, MusicnnMSD, load_state
from .onnx_backend import output_names
from .recipe import MSD_TAGS, MTT_TAGS

__all__ = [
    "NETWORKS",
    "MSD_TAGS",
    "MTT_TAGS",
    "MusicnnVGG",
    "VggOutput",
    "vgg_tf_to_torch",
    "read_network_checkpoint",
    "network_state",
    "load_network",
    "load_weights",
    "network_outputs",
    "output_names",
    "tags_of",
]


def tags_of(network: str) -> tuple[str, ...]:
    return MTT_TAGS if network.startswith("MTT") else MSD_TAGS


# -------------------------------------------------------------------------------------------------- VGG
class VggOutput(NamedTuple):
    pool5: torch.Tensor  # (B, 256) flattened pool5 in TF's (time, freq, channel) order: the dense layer's input
    logits: torch.Tensor  # (B, 50)
    taggram: torch.Tensor  # (B, 50) sigmoid(logits)


# (time, freq) max-pool size and stride after each conv (musicnn/models.py: vgg); TF 'valid' pooling
VGG_POOLS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((4, 1), (2, 2)),
    ((2, 2), (2, 2)),
    ((2, 2), (2, 2)),
    ((2, 2), (2, 2)),
    ((4, 4), (4, 4)),
)


class MusicnnVGG(nn.Module):
    """musicnn's `vgg(x, is_training, 50, 128)`: input BN, then 5 x [3x3 conv 'same' + ReLU, BN, max-pool],
    flatten (2 x 1 x 128 = 256), dense 256 -> 50. Dropout is inactive at inference. Tensors are NCHW with
    H = time (187) and W = mel (96)."""

    def __init__(self, num_filters: int = VGG_FILTERS, num_classes: int = 50) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1, eps=BN_EPS)
        chans = [1] + [num_filters] * 5
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(5))
        self.bns = nn.ModuleList(nn.BatchNorm2d(num_filters, eps=BN_EPS) for _ in range(5))
        self.out = nn.Linear(2 * 1 * num_filters, num_classes)

    def forward(self, patches: torch.Tensor) -> VggOutput:
        x = self.input_bn(patches.unsqueeze(1))  # (B, 1, 187, 96)
        for conv, bn, (size, stride) in zip(self.convs, self.bns, VGG_POOLS):
            x = F.max_pool2d(bn(F.relu(conv(x))), size, stride)
        # (B, 128, 2, 1) -> TF flattens NHWC: (time, freq, channel)
        pool5 = x.permute(0, 2, 3, 1).flatten(1)
        logits = self.out(pool5)
        return VggOutput(pool5, logits, torch.sigmoid(logits))


# ----------------------------------------------------------------------------------------- checkpoints
def _with_state(network: str, state: dict[str, torch.Tensor]) -> nn.Module:
    model = load_state(MusicnnVGG() if "vgg" in network else MusicnnMSD(), state)
    return model.requires_grad_(False)


def load_network(wheel: Path, network: str) -> nn.Module:
    """`MusicnnMSD` (the two musicnn networks) or `MusicnnVGG`, weights read from the wheel and loaded strictly,
    in eval mode."""
    return _with_state(network, {k: torch.from_numpy(v) for k, v in network_state(wheel, network).items()})


def load_weights(path: Path, network: str) -> nn.Module:
    """The same from the weights `convert.convert_wheel` wrote (safetensors)."""
    from safetensors.torch import load_file

    return _with_state(network, load_file(str(path)))


def network_outputs(model: nn.Module, patches: np.ndarray, batch: int = 24) -> dict[str, np.ndarray]:
    """Per-patch outputs as float32 numpy: musicnn -> dense_preact, penultimate, logits, taggram (n, 200/50);
    vgg -> pool5 (n, 256), logits, taggram."""
    x = np.ascontiguousarray(patches, dtype=np.float32)
    outs: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch):
            o = model(torch.from_numpy(x[i : i + batch]))
            for k, v in o._asdict().items():
                outs.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}

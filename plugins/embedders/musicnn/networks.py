"""The four pretrained networks of the `musicnn==0.1.0` wheel in PyTorch: MSD_musicnn, MTT_musicnn, MSD_vgg
and MTT_vgg (musicnn/models.py: `build_musicnn` and `vgg`). numpy-only checkpoint reading (`checkpoint.py`).

- MSD_musicnn and MTT_musicnn share one architecture (`model.MusicnnMSD`: front-end, mid-end, back-end,
  num_filt_midend=64, num_units_backend=200) and one checkpoint layout (`convert.tf_to_torch`); they differ
  in their weights and in the tags they predict (Million Song Dataset vs MagnaTagATune, 50 each).
- MSD_vgg and MTT_vgg are `MusicnnVGG` below: five 3x3 conv layers of 128 filters (conv -> ReLU -> BN ->
  max-pool), then dense 256 -> 50. Their "penultimate" representation is `pool5` flattened (2 time steps x
  128 filters = 256, the input of the output layer; musicnn's extractor exposes pool1..pool5).

All four take the same input as the product's MSD model (`preprocess.audio_to_patches`: (n, 187, 96)
log-mel patches), so one mel computation feeds every network.

The existing MSD_musicnn plugin (`__init__.py`, `convert.convert_wheel`) is untouched; this module adds
`load_network(wheel, name)` for any of the four, used by scripts/bench_quality.py and tests/test_musicnn_networks.py.
Model, weights and tags: ISC licence, Music Technology Group, Universitat Pompeu Fabra.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, read_tensors
from .convert import DATA_NAME, INDEX_NAME, TF_MODEL_TENSORS, tf_to_torch
from .model import BN_EPS, MusicnnMSD, load_state

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
    "network_outputs",
    "output_names",
    "export_network_onnx",
    "tags_of",
]

NETWORKS = ("MSD_musicnn", "MTT_musicnn", "MSD_vgg", "MTT_vgg")

# musicnn/configuration.py
MTT_TAGS: tuple[str, ...] = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
    "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing", "vocals",
    "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal", "pop", "soft",
    "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice", "female vocal",
    "beats", "harp", "cello", "no voice", "weird", "country", "metal", "female voice", "choral",
)  # fmt: skip
MSD_TAGS: tuple[str, ...] = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul",
    "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies",
    "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop", "70s",
    "party", "country", "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal",
    "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy",
)  # fmt: skip


def tags_of(network: str) -> tuple[str, ...]:
    return MTT_TAGS if network.startswith("MTT") else MSD_TAGS


# -------------------------------------------------------------------------------------------------- VGG
class VggOutput(NamedTuple):
    pool5: torch.Tensor  # (B, 256) flattened pool5 in TF's (time, freq, channel) order: the dense layer's input
    logits: torch.Tensor  # (B, 50)
    taggram: torch.Tensor  # (B, 50) sigmoid(logits)


VGG_FILTERS = 128
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


# TF variable names: '1CNN'..'5CNN' (named in models.py), batch_normalization (input) .. batch_normalization_5
_VGG_BN = [("batch_normalization", "input_bn")] + [(f"batch_normalization_{i + 1}", f"bns.{i}") for i in range(5)]
_VGG_CONV = [(f"{i + 1}CNN", f"convs.{i}", (3, 3, 1 if i == 0 else VGG_FILTERS, VGG_FILTERS)) for i in range(5)]
_BN_FIELDS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
VGG_TF_TENSORS: frozenset[str] = frozenset(
    [f"{tf}/{f}" for tf, _ in _VGG_BN for f in _BN_FIELDS]
    + [f"{tf}/{f}" for tf, _, _ in _VGG_CONV for f in ("kernel", "bias")]
    + ["dense/kernel", "dense/bias"]
)


def vgg_tf_to_torch(tf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map the 34 TF tensors of a musicnn VGG checkpoint to a `MusicnnVGG` state dict."""
    missing = sorted(VGG_TF_TENSORS - tf.keys())
    if missing:
        raise CheckpointError(f"checkpoint lacks VGG tensors: {', '.join(missing)}")

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        a = np.asarray(tf[name], dtype=np.float32)
        if a.shape != shape:
            raise CheckpointError(f"{name}: shape {a.shape}, expected {shape}")
        return a

    out: dict[str, np.ndarray] = {}
    for tfn, tn in _VGG_BN:
        n = (1,) if tfn == "batch_normalization" else (VGG_FILTERS,)
        for tff, field in _BN_FIELDS.items():
            out[f"{tn}.{field}"] = get(f"{tfn}/{tff}", n)
    for tfn, tn, shape in _VGG_CONV:
        out[f"{tn}.weight"] = get(f"{tfn}/kernel", shape).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        out[f"{tn}.bias"] = get(f"{tfn}/bias", (shape[3],))
    out["out.weight"] = get("dense/kernel", (2 * VGG_FILTERS, 50)).T
    out["out.bias"] = get("dense/bias", (50,))
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------- checkpoints
def read_network_checkpoint(wheel: Path, network: str) -> dict[str, np.ndarray]:
    """The model tensors (crc-checked) of one network's checkpoint inside the musicnn wheel."""
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}: one of {', '.join(NETWORKS)}")
    folder = f"musicnn/{network}/"
    with zipfile.ZipFile(wheel) as zf:
        try:
            index_bytes, data_bytes = zf.read(folder + INDEX_NAME), zf.read(folder + DATA_NAME)
        except KeyError as e:
            raise CheckpointError(f"{Path(wheel).name} has no {folder} checkpoint ({e})") from None
    wanted = VGG_TF_TENSORS if "vgg" in network else TF_MODEL_TENSORS
    return read_tensors(index_bytes, data_bytes, keep=lambda name: name in wanted)


def network_state(wheel: Path, network: str) -> dict[str, np.ndarray]:
    """A torch state dict (numpy arrays) for `network`, read from the wheel."""
    tf = read_network_checkpoint(wheel, network)
    return vgg_tf_to_torch(tf) if "vgg" in network else tf_to_torch(tf)


def load_network(wheel: Path, network: str) -> nn.Module:
    """`MusicnnMSD` (the two musicnn networks) or `MusicnnVGG`, weights loaded strictly, in eval mode."""
    state = {k: torch.from_numpy(v) for k, v in network_state(wheel, network).items()}
    model = MusicnnVGG() if "vgg" in network else MusicnnMSD()
    model = load_state(model, state)
    model.requires_grad_(False)
    return model


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


# ------------------------------------------------------------------------------------------------ ONNX
def output_names(network: str) -> tuple[str, ...]:
    return VggOutput._fields if "vgg" in network else ("dense_preact", "penultimate", "logits", "taggram")


def export_network_onnx(model: nn.Module, network: str, dest: Path) -> Path:
    """Export one network to ONNX the way `onnx_backend.export_onnx` exports MSD_musicnn (dynamo exporter,
    constants folded), check it against PyTorch within 1e-4 on random log-mel-like input, write atomically."""
    import onnx
    import onnxscript.optimizer

    from .model import N_FRAMES, N_MELS
    from .onnx_backend import CHECK_TOL, INPUT, OPSET, _quiet_exporter, make_session

    names = output_names(network)

    class _Export(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, patches: torch.Tensor):
            o = self.m(patches)
            return tuple(getattr(o, k) for k in names)

    with _quiet_exporter():
        program = torch.onnx.export(
            _Export(model).eval(), (torch.zeros(2, N_FRAMES, N_MELS),), dynamo=True, opset_version=OPSET,
            input_names=[INPUT], output_names=list(names),
            dynamic_shapes={"patches": {0: torch.export.Dim("batch", min=1)}}, optimize=False, verbose=False,
        )  # fmt: skip
        program.model = onnxscript.optimizer.optimize(program.model, input_size_limit=1 << 24, output_size_limit=1 << 24)
        proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp.onnx")
    onnx.save_model(proto, str(tmp))
    x = np.random.default_rng(0).uniform(0.0, 4.0, (3, N_FRAMES, N_MELS)).astype(np.float32)
    got = dict(zip(names, make_session(tmp, threads=1).run(list(names), {INPUT: x})))
    with torch.inference_mode():
        want = model(torch.from_numpy(x))
    for k in names:
        err = float(np.abs(got[k] - getattr(want, k).numpy()).max())
        if not err <= CHECK_TOL:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"ONNX export of {network} differs from PyTorch on {k} by {err:.2e}")
    tmp.replace(dest)
    return dest

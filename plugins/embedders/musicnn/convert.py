"""Turn the TensorFlow checkpoints shipped in the `musicnn==0.1.0` wheel into safetensors files holding PyTorch
state dicts: MSD_musicnn and MTT_musicnn for `model.MusicnnMSD`, MSD_vgg and MTT_vgg for `networks.MusicnnVGG`.
numpy only (no TensorFlow, no torch).

The VGG networks' variables: '1CNN'..'5CNN' (named in musicnn/models.py: vgg), batch_normalization (input) ..
batch_normalization_5, dense (256 -> 50). The musicnn networks' variables, in the creation order of
`tf.compat.v1.layers` in musicnn/models.py (build_musicnn):

    batch_normalization          input BN (1 channel)
    conv2d   / batch_normalization_1    timbral 7x38  (204 filters, 'valid' after a 3+3 time pad)
    conv2d_1 / batch_normalization_2    timbral 7x67  (204 filters)
    conv2d_2 / batch_normalization_3    temporal 128x1 (51 filters, 'same')
    conv2d_3 / batch_normalization_4    temporal 64x1
    conv2d_4 / batch_normalization_5    temporal 32x1
    conv2d_5 / batch_normalization_6    mid-end conv 1: 7 x 561 -> 64
    conv2d_6 / batch_normalization_7    mid-end conv 2: 7 x 64 -> 64 (+ residual)
    conv2d_7 / batch_normalization_8    mid-end conv 3: 7 x 64 -> 64 (+ residual)
    batch_normalization_9        BN of the pooled features (1506)
    dense                        1506 -> 200 (the "dense pre-activation")
    batch_normalization_10       BN after ReLU (the "penultimate" features)
    dense_1                      200 -> 50 (logits)

The Adam slots (`*/Adam`, `*/Adam_1`, `beta1_power`, `beta2_power`) are not model tensors and are dropped.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, read_tensors

__all__ = [
    "NETWORKS", "WHEEL_CHECKPOINT_DIR", "TF_MODEL_TENSORS", "VGG_TF_TENSORS", "tf_to_torch", "vgg_tf_to_torch",
    "convert_checkpoint", "read_network_checkpoint", "network_state", "convert_wheel",
]  # fmt: skip

NETWORKS = ("MSD_musicnn", "MTT_musicnn", "MSD_vgg", "MTT_vgg")
WHEEL_CHECKPOINT_DIR = "musicnn/MSD_musicnn/"
INDEX_NAME = ".index"
DATA_NAME = ".data-00000-of-00001"

# (tf layer, torch module, kind)
_BN = [
    ("batch_normalization", "input_bn"),
    ("batch_normalization_1", "timbral74_bn"),
    ("batch_normalization_2", "timbral77_bn"),
    ("batch_normalization_3", "temporal128_bn"),
    ("batch_normalization_4", "temporal64_bn"),
    ("batch_normalization_5", "temporal32_bn"),
    ("batch_normalization_6", "mid1_bn"),
    ("batch_normalization_7", "mid2_bn"),
    ("batch_normalization_8", "mid3_bn"),
    ("batch_normalization_9", "pool_bn"),
    ("batch_normalization_10", "dense_bn"),
]
_CONV2D = [  # front-end convolutions over (time, mel) with one input channel: HWIO -> OIHW
    ("conv2d", "timbral74", (7, 38, 1, 204)),
    ("conv2d_1", "timbral77", (7, 67, 1, 204)),
    ("conv2d_2", "temporal128", (128, 1, 1, 51)),
    ("conv2d_3", "temporal64", (64, 1, 1, 51)),
    ("conv2d_4", "temporal32", (32, 1, 1, 51)),
]
_CONV1D = [  # mid-end: a (7, C) kernel over a (time, C, 1) map is a 1-d conv with C input channels
    ("conv2d_5", "mid1", (7, 561, 1, 64)),
    ("conv2d_6", "mid2", (7, 64, 1, 64)),
    ("conv2d_7", "mid3", (7, 64, 1, 64)),
]
_DENSE = [
    ("dense", "dense", (1506, 200)),
    ("dense_1", "out", (200, 50)),
]
_BN_FIELDS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}

TF_MODEL_TENSORS: frozenset[str] = frozenset(
    [f"{tf}/{f}" for tf, _ in _BN for f in _BN_FIELDS]
    + [f"{tf}/{f}" for tf, _, _ in _CONV2D + _CONV1D + _DENSE for f in ("kernel", "bias")]
)


def tf_to_torch(tf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map the 64 TF model tensors to a `MusicnnMSD` state dict (without BN `num_batches_tracked`)."""
    missing = sorted(TF_MODEL_TENSORS - tf.keys())
    if missing:
        raise CheckpointError(f"checkpoint lacks model tensors: {', '.join(missing)}")

    def get(name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        a = np.asarray(tf[name], dtype=np.float32)
        if shape is not None and a.shape != shape:
            raise CheckpointError(f"{name}: shape {a.shape}, expected {shape}")
        return a

    out: dict[str, np.ndarray] = {}
    for tfn, tn in _BN:
        n = get(f"{tfn}/gamma").shape
        for tff, tf_field in _BN_FIELDS.items():
            out[f"{tn}.{tf_field}"] = get(f"{tfn}/{tff}", n)
    for tfn, tn, shape in _CONV2D:
        out[f"{tn}.weight"] = get(f"{tfn}/kernel", shape).transpose(3, 2, 0, 1)
        out[f"{tn}.bias"] = get(f"{tfn}/bias", (shape[3],))
    for tfn, tn, shape in _CONV1D:
        out[f"{tn}.weight"] = get(f"{tfn}/kernel", shape)[:, :, 0, :].transpose(2, 1, 0)
        out[f"{tn}.bias"] = get(f"{tfn}/bias", (shape[3],))
    for tfn, tn, shape in _DENSE:
        out[f"{tn}.weight"] = get(f"{tfn}/kernel", shape).T
        out[f"{tn}.bias"] = get(f"{tfn}/bias", (shape[1],))
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def convert_checkpoint(index_bytes: bytes, data_bytes: bytes) -> dict[str, np.ndarray]:
    """Read (crc-checked) and map the MSD_musicnn checkpoint to a torch state dict of numpy arrays."""
    tf = read_tensors(index_bytes, data_bytes, keep=lambda name: name in TF_MODEL_TENSORS)
    return tf_to_torch(tf)


# ------------------------------------------------------------------------------------------------ VGG
VGG_FILTERS = 128
_VGG_BN = [("batch_normalization", "input_bn")] + [(f"batch_normalization_{i + 1}", f"bns.{i}") for i in range(5)]
_VGG_CONV = [(f"{i + 1}CNN", f"convs.{i}", (3, 3, 1 if i == 0 else VGG_FILTERS, VGG_FILTERS)) for i in range(5)]
VGG_TF_TENSORS: frozenset[str] = frozenset(
    [f"{tf}/{f}" for tf, _ in _VGG_BN for f in _BN_FIELDS]
    + [f"{tf}/{f}" for tf, _, _ in _VGG_CONV for f in ("kernel", "bias")]
    + ["dense/kernel", "dense/bias"]
)


def vgg_tf_to_torch(tf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map the 34 TF tensors of a musicnn VGG checkpoint to a `networks.MusicnnVGG` state dict."""
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


# ------------------------------------------------------------------------------------------------ wheel
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


def _save_atomic(tensors: dict[str, np.ndarray], dest: Path, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes the file 0600; weights are not secret
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def convert_wheel(wheel: Path, dest: Path, network: str = "MSD_musicnn") -> dict[str, np.ndarray]:
    """Extract one network from a musicnn wheel and write its torch state dict to `dest` (atomically)."""
    state = network_state(wheel, network)
    layout = "networks.MusicnnVGG" if "vgg" in network else "model.MusicnnMSD"
    _save_atomic(
        state,
        dest,
        metadata={
            "source": f"PyPI musicnn==0.1.0, musicnn/{network} (TensorFlow 1 checkpoint)",
            "layout": f"torch state dict for plugins.embedders.musicnn.{layout}",
            "licence": "ISC, Music Technology Group, Universitat Pompeu Fabra",
        },
    )
    return state

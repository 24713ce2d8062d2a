"""Turn the MSD_musicnn TensorFlow checkpoint shipped in the `musicnn==0.1.0` wheel into a safetensors file
holding a PyTorch state dict for `model.MusicnnMSD`. numpy only (no TensorFlow, no torch).

Variable names follow the creation order of `tf.compat.v1.layers` in musicnn/models.py (build_musicnn):

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

__all__ = ["WHEEL_CHECKPOINT_DIR", "tf_to_torch", "convert_checkpoint", "convert_wheel", "TF_MODEL_TENSORS"]

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


def convert_wheel(wheel: Path, dest: Path) -> dict[str, np.ndarray]:
    """Extract MSD_musicnn from a musicnn wheel and write the torch state dict to `dest` (atomically)."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            index_bytes = zf.read(WHEEL_CHECKPOINT_DIR + INDEX_NAME)
            data_bytes = zf.read(WHEEL_CHECKPOINT_DIR + DATA_NAME)
        except KeyError as e:
            raise CheckpointError(f"{wheel.name} has no {WHEEL_CHECKPOINT_DIR} checkpoint ({e})") from None
    state = convert_checkpoint(index_bytes, data_bytes)
    _save_atomic(
        state,
        dest,
        metadata={
            "source": "PyPI musicnn==0.1.0, musicnn/MSD_musicnn (TensorFlow 1 checkpoint)",
            "layout": "torch state dict for plugins.embedders.musicnn.model.MusicnnMSD",
            "licence": "ISC, Music Technology Group, Universitat Pompeu Fabra",
        },
    )
    return state

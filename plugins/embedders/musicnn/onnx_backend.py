"""MusiCNN on ONNX Runtime: export of the PyTorch networks (MSD_musicnn, MTT_vgg, any of the wheel's four) to ONNX
and the inference session.

The export (`export_model`) goes through `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript; the
TorchScript exporter is deprecated in torch 2.13) and then folds constants with onnxscript's optimizer with
size limits large enough for the front-end convolutions, so that the sign flips of the max-before-activation
rewrite (`MusicnnMSD._block`) end up in the stored conv weights rather than as run-time Mul nodes. The file
is validated with `onnx.checker` and against the PyTorch model on a small batch, then moved into place
atomically. Its metadata records the network and the export revision (not the plugin's version: the file
depends on the network alone, so processes configured differently can share a models folder); `onnx_is_current`
tells a file that must be exported again.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from sidecar.plugins import EmbedderUnavailable, option_env

log = logging.getLogger(__name__)

#: ONNX opset of the export: supported by onnxruntime >= 1.14 and the lowest the torch.export-based exporter
#: writes natively (lower ones go through the ONNX version converter)
OPSET = 18
INPUT = "patches"
OUTPUTS: tuple[str, ...] = ("dense_preact", "penultimate", "logits", "taggram")  # fields of model.MusicnnOutput
VGG_OUTPUTS: tuple[str, ...] = ("pool5", "logits", "taggram")  # fields of networks.VggOutput
#: bump when the exported graph changes (opset, outputs, folding, the ports) so that existing files are exported again
EXPORT_REVISION = "2"
META_NETWORK = "sidecar.musicnn.network"
META_EXPORT = "sidecar.musicnn.export_revision"
#: agreement with PyTorch demanded of a fresh export (the TF parity tolerance)
CHECK_TOL = 1e-4


def output_names(network: str) -> tuple[str, ...]:
    return VGG_OUTPUTS if "vgg" in network else OUTPUTS


def onnx_path(models_dir: Path, network: str = "MSD_musicnn") -> Path:
    return Path(models_dir) / "musicnn" / f"{network.lower()}.onnx"


def _metadata(path: Path) -> dict[str, str] | None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # truncated or not an ONNX file
        return None
    return {p.key: p.value for p in model.metadata_props}


def onnx_is_current(path: Path, weights: Path, network: str, metadata: dict[str, str] | None = None) -> bool:
    """True if `path` exists, is not older than the weights and was exported from this network at this revision."""
    path, weights = Path(path), Path(weights)
    if not path.exists():
        return False
    if path.stat().st_mtime_ns < weights.stat().st_mtime_ns:
        return False
    meta = _metadata(path) if metadata is None else metadata
    return meta is not None and meta.get(META_NETWORK) == network and meta.get(META_EXPORT) == EXPORT_REVISION


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs a warning per missing torchvision op and emits deprecation warnings from torch
    internals; none of them concern this model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _export_proto(model, names: tuple[str, ...]):
    """The ONNX ModelProto of `model` (a network whose output is a NamedTuple), outputs `names`, constants folded."""
    import torch

    from .model import N_FRAMES, N_MELS

    try:
        import onnxscript.optimizer
    except ImportError as e:
        raise EmbedderUnavailable(
            "the MusiCNN ONNX backend needs the onnxscript package to export the model "
            f"(pip install onnxscript), or set {option_env('musicnn', 'backend')}=torch"
        ) from e

    class _Export(torch.nn.Module):  # a tuple of tensors, in `names` order
        def __init__(self, m) -> None:
            super().__init__()
            self.m = m

        def forward(self, patches: torch.Tensor):
            o = self.m(patches)
            return tuple(getattr(o, k) for k in names)

    example = torch.zeros(2, N_FRAMES, N_MELS)
    with _quiet_exporter():
        program = torch.onnx.export(
            _Export(model).eval(),
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=list(names),
            dynamic_shapes={"patches": {0: torch.export.Dim("batch", min=1)}},
            optimize=False,
            verbose=False,
        )
        # the default limits (8192 elements) leave the conv weights' sign flips as run-time Mul nodes
        program.model = onnxscript.optimizer.optimize(program.model, input_size_limit=1 << 24, output_size_limit=1 << 24)
        proto = program.model_proto
    # Drop what only concerns the export: per-node stack traces (with local paths) and value_info entries for
    # initializers (onnxruntime's quantiser transposes Gemm weights and then trips over the stale shapes).
    initializers = {t.name for t in proto.graph.initializer}
    keep = [vi for vi in proto.graph.value_info if vi.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    for node in proto.graph.node:
        del node.metadata_props[:]
    return proto


def export_onnx(weights: Path, dest: Path, network: str = "MSD_musicnn") -> Path:
    """Export `network` from its converted weights (safetensors) to `dest`. EmbedderUnavailable on failure."""
    from .networks import load_weights

    try:
        model = load_weights(Path(weights), network)
    except Exception as e:
        raise EmbedderUnavailable(f"could not load the {network} weights at {weights} to export them: {e}") from e
    return export_model(model, network, dest)


def export_model(model, network: str, dest: Path) -> Path:
    """Export a loaded network (`networks.load_network`/`load_weights`) to `dest`, stamped with its name and the
    export revision, validated (structure, and numbers against PyTorch), atomically. EmbedderUnavailable on failure."""
    dest = Path(dest)
    names = output_names(network)
    try:
        proto = _export_proto(model, names)
    except EmbedderUnavailable:
        raise
    except Exception as e:
        raise EmbedderUnavailable(f"could not export {network} to ONNX: {type(e).__name__}: {e}") from e
    proto.producer_name = "music-sidecar"
    proto.doc_string = f"{network} (musicnn 0.1.0, ISC licence, MTG-UPF): log-mel patches (batch, 187, 96) in"
    del proto.metadata_props[:]
    for key, value in ((META_NETWORK, network), (META_EXPORT, EXPORT_REVISION)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        _write_validated(proto, model, names, dest)
    except EmbedderUnavailable:
        raise
    except OSError as e:
        raise EmbedderUnavailable(f"could not write the {network} ONNX model to {dest}: {e}") from e
    except Exception as e:  # onnx.checker, shape inference or onnxruntime refusing the file
        raise EmbedderUnavailable(f"the exported {network} ONNX model is invalid: {type(e).__name__}: {e}") from e
    log.info("%s ONNX model written to %s", network, dest)
    return dest


def _write_validated(proto, model, names: tuple[str, ...], dest: Path) -> None:
    """Save to a temporary file beside `dest`, check it (structure and numbers), then rename it into place."""
    import onnx
    import torch

    from .model import N_FRAMES, N_MELS

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.stem}-", suffix=".onnx.tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        onnx.save_model(proto, str(tmp))
        tmp.chmod(0o644)  # mkstemp makes it private; the weights next to it are not
        onnx.checker.check_model(str(tmp), full_check=True)
        # numbers, not just structure: a batch of 3 (the export used 2) of log-mel-like values
        x = np.random.default_rng(0).uniform(0.0, 4.0, (3, N_FRAMES, N_MELS)).astype(np.float32)
        got = dict(zip(names, make_session(tmp, threads=1).run(list(names), {INPUT: x})))
        with torch.inference_mode():
            expected = model(torch.from_numpy(x))
        for k in names:
            err = float(np.abs(got[k] - getattr(expected, k).numpy()).max())
            if not err <= CHECK_TOL:
                raise EmbedderUnavailable(f"the exported ONNX model {dest.name} differs from PyTorch on {k} by {err:.2e}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def make_session(path: Path, threads: int = 1):
    """A CPU InferenceSession (thread-safe `run`): `threads` intra-op threads, sequential, all optimisations."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise EmbedderUnavailable(
            "the MusiCNN ONNX backend needs onnxruntime (pip install onnxruntime), "
            f"or set {option_env('musicnn', 'backend')}=torch"
        ) from e
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    # memory patterns plan each input shape's buffers ahead and keep them: 0.5 GB more, and no faster here
    so.enable_mem_pattern = False
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])

"""MusiCNN (Pons & Serra, musicnn 0.1.0) as an embedder plugin: MSD_musicnn and MTT_vgg in PyTorch or ONNX Runtime.

`prepare` downloads the `musicnn==0.1.0` wheel from PyPI (no dependencies: the package pins numpy<1.17 and
TensorFlow, neither of which is used), reads its TensorFlow-1 checkpoints with numpy alone and writes
`<models_dir>/musicnn/msd_musicnn.safetensors` and `mtt_vgg.safetensors` (PyTorch state dicts, ~3.2 and ~2.4 MB).

`embed` computes the log-mel patches once, runs MSD_musicnn on them and MTT_vgg on every other one, and returns
(recipe.py, chosen on the labelled benchmark of scripts/bench_quality.py):
- `vector`: [MSD dense pre-activation patch mean | patch std | MTT_vgg pool5 patch mean | patch std | logits of
  the mean MSD and MTT tag probabilities] (1,012-d), compared through `space` (per-library z-scores, blocks);
- `tags`: the mean probability of the 50 Million Song Dataset tags under their names, and of the 50
  MagnaTagATune tags as "mtt:<tag>".

Options (SIDECAR_PLUGINS__MUSICNN__<OPTION>):
  backend      "onnx" (default) or "torch": with "onnx", `prepare` also exports both networks to ONNX beside
               their weights and inference runs on ONNX Runtime (CPU), about twice as fast as torch here. Both
               backends agree with the TensorFlow reference within 1e-4, so they share one `version`.
  threads      ONNX Runtime intra-op threads per inference (default 1; the torch backend follows the
               process-wide torch thread setting).
  patches      at most this many 3-second patches analysed per track, spread evenly over it (default 24; 0:
               every patch). The mean of 24 spread patches stayed within cosine 0.996 of the whole-track vector
               on 59 real full-length tracks (docs/PERFORMANCE.md), well inside the 0.99 bound that lets both
               share one `version`; a 4-minute track has 80 patches, so this is about a third of the model work.
  vgg_patches  MTT_vgg runs on at most this many of those patches, every k-th (default 12: every other one of
               24, +12% analysis time); like `patches`, a budget that keeps the version. 0 turns MTT_vgg off:
               the vector is then [MSD mean | MSD std | MSD tag logits] (450-d), another version and space.

Model, weights and tags: ISC licence, Music Technology Group, Universitat Pompeu Fabra.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from schemas.embedding import EmbedResult
from sidecar.plugins import CaseInsensitive, Embedder, EmbedderUnavailable, PluginOptions

from .onnx_backend import INPUT as ONNX_INPUT
from .onnx_backend import output_names
from .preprocess import SAMPLE_RATE, audio_to_patches
from .recipe import MSD, MSD_TAGS, MTT_TAGS, VGG, space, track_tags, track_vector, vgg_patches

__all__ = ["MusicnnEmbedder", "MSD_TAGS", "MTT_TAGS", "download_wheel", "weights_path"]

log = logging.getLogger(__name__)

PACKAGE = "musicnn==0.1.0"
# patches per forward pass. ONNX Runtime's arena keeps the largest pass's buffers for good: with both networks,
# 16 patches left 1.37 GB resident after a few tracks and 4 leave 0.28 GB, at the same speed (2026-12-06)
BATCH = 4
#: default patch budget per track: the smallest multiple of 8 whose mean vector stayed within cosine 0.995 of
#: the whole track's on every one of 59 real tracks (scripts/bench_ingest.py prints the figures per budget)
PATCHES = 24
#: MTT_vgg's default share of them: every other patch kept nearly all of MTT_vgg's gain (.cache/quality/REPORT.md)
VGG_PATCHES = 12
MAX_PATCHES = 100_000
#: bump the number when the vector changes; the name says which networks make it (the option `vgg_patches`)
VERSIONS = {False: "msd-musicnn-2", True: "msd-musicnn+mtt-vgg-2"}


def weights_path(models_dir: Path, network: str = MSD) -> Path:
    return Path(models_dir) / "musicnn" / f"{network.lower()}.safetensors"


def download_wheel(dest_dir: Path) -> Path:
    """`pip download --no-deps musicnn==0.1.0` into `dest_dir`; returns the wheel. EmbedderUnavailable on failure.

    Never lets pip resolve dependencies (the package pins numpy<1.17 and TensorFlow); only the wheel's
    checkpoint files are used.
    """
    dest_dir = Path(dest_dir)
    found = sorted(dest_dir.glob("musicnn-0.1.0-*.whl"))
    if found:
        return found[0]
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", PACKAGE, "-d", str(dest_dir),
    ]  # fmt: skip
    log.info("downloading %s from the package index (weights only, no dependencies)", PACKAGE)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EmbedderUnavailable(f"could not download {PACKAGE} for the MusiCNN weights: {e}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-800:]
        raise EmbedderUnavailable(
            f"could not download {PACKAGE} for the MusiCNN weights (pip exit {proc.returncode}): {tail}"
        )
    found = sorted(dest_dir.glob("musicnn-0.1.0-*.whl"))
    if not found:
        raise EmbedderUnavailable(f"pip download of {PACKAGE} produced no wheel in {dest_dir}")
    return found[0]


class MusicnnEmbedder(Embedder):
    name = "musicnn"
    sample_rate = SAMPLE_RATE

    class Options(PluginOptions):
        backend: Annotated[Literal["onnx", "torch"], CaseInsensitive] = Field(
            "onnx", description="MusiCNN backend: onnx (ONNX Runtime, about twice as fast here) or torch"
        )
        threads: int = Field(1, ge=1, le=256, description="ONNX Runtime intra-op threads per inference")
        patches: int = Field(
            PATCHES, ge=0, le=MAX_PATCHES, description="3-second patches analysed per track, spread over it; 0: every patch"
        )
        vgg_patches: int = Field(
            VGG_PATCHES, ge=0, le=MAX_PATCHES,
            description="of those, at most this many (every k-th) also through MTT_vgg; 0: MSD_musicnn alone",
        )  # fmt: skip

    options: Options

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}  # torch backend: network -> nn.Module
        self._sessions: dict[str, Any] = {}  # onnx backend: network -> onnxruntime.InferenceSession
        super().__init__()

    def configure(self, options: Mapping[str, str]) -> None:
        super().configure(options)
        vgg = self.options.vgg_patches > 0
        self.networks: tuple[str, ...] = (MSD, VGG) if vgg else (MSD,)
        self.version = VERSIONS[vgg]
        self.space = space(vgg)
        self.dim = sum(b.size for b in self.space)

    # ---------------------------------------------------------------------------------------------- setup
    def prepare(self, models_dir: Path) -> None:
        self._prepare_weights(models_dir)
        if self.options.backend == "onnx":
            from .onnx_backend import export_onnx, onnx_is_current, onnx_path

            for net in self.networks:
                weights, dest = weights_path(models_dir, net), onnx_path(models_dir, net)
                if not onnx_is_current(dest, weights, net):
                    export_onnx(weights, dest, net)

    def _prepare_weights(self, models_dir: Path) -> None:
        missing = [net for net in self.networks if not weights_path(models_dir, net).exists()]
        if not missing:
            return
        from .checkpoint import CheckpointError
        from .convert import convert_wheel

        with tempfile.TemporaryDirectory(prefix="musicnn-wheel-") as tmp:
            wheel = download_wheel(Path(tmp))
            for net in missing:
                dest = weights_path(models_dir, net)
                try:
                    convert_wheel(wheel, dest, net)
                except (CheckpointError, OSError, ValueError, zipfile.BadZipFile) as e:
                    raise EmbedderUnavailable(f"could not convert the {net} checkpoint from {wheel.name}: {e}") from e
                log.info("%s weights written to %s", net, dest)

    def load(self, models_dir: Path) -> None:
        for net in self.networks:
            path = weights_path(models_dir, net)
            if not path.exists():
                raise EmbedderUnavailable(f"MusiCNN weights ({net}) not found at {path}: run `sidecar setup`")
        if self.options.backend == "onnx":
            self._sessions, self._models = {net: self._load_session(models_dir, net) for net in self.networks}, {}
            return
        from .networks import load_weights

        models = {}
        for net in self.networks:
            path = weights_path(models_dir, net)
            try:
                models[net] = load_weights(path, net)
            except Exception as e:  # a truncated or foreign file
                raise EmbedderUnavailable(
                    f"MusiCNN weights at {path} are unreadable ({e}): delete the file and run `sidecar setup`"
                ) from e
        self._models, self._sessions = models, {}

    def _load_session(self, models_dir: Path, net: str):
        from .onnx_backend import make_session, onnx_is_current, onnx_path

        path = onnx_path(models_dir, net)
        if not path.exists():
            raise EmbedderUnavailable(f"MusiCNN ONNX model not found at {path}: run `sidecar setup`")
        try:
            session = make_session(path, self.options.threads)
        except EmbedderUnavailable:
            raise
        except Exception as e:
            raise EmbedderUnavailable(
                f"MusiCNN ONNX model at {path} is unreadable ({e}): delete the file and run `sidecar setup`"
            ) from e
        meta = dict(session.get_modelmeta().custom_metadata_map)
        if not onnx_is_current(path, weights_path(models_dir, net), net, meta):
            raise EmbedderUnavailable(
                f"MusiCNN ONNX model at {path} is older than the weights or from another network or export: run `sidecar setup`"
            )
        names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if names[0] != [ONNX_INPUT] or not set(output_names(net)) <= set(names[1]):
            raise EmbedderUnavailable(f"MusiCNN ONNX model at {path} has unexpected inputs/outputs {names}")
        return session

    # ---------------------------------------------------------------------------------------------- inference
    def infer(self, patches: np.ndarray, network: str = MSD) -> dict[str, np.ndarray]:
        """Run (n, 187, 96) log-mel patches through one network, in batches. float32 arrays: MSD_musicnn gives
        dense_preact (n, 200), penultimate (n, 200), logits (n, 50), taggram (n, 50); MTT_vgg pool5 (n, 256),
        logits, taggram."""
        session, model = self._sessions.get(network), self._models.get(network)
        if session is None and model is None:
            raise EmbedderUnavailable(f"MusiCNN ({network}) is not loaded: call load() first")
        x = np.ascontiguousarray(patches, dtype=np.float32)
        if x.ndim != 3 or x.shape[0] == 0 or x.shape[1:] != (187, 96):
            raise ValueError(f"expected patches of shape (n >= 1, 187, 96), got {x.shape}")
        names = output_names(network)
        outs: dict[str, list[np.ndarray]] = {k: [] for k in names}
        if session is not None:  # InferenceSession.run is thread-safe
            for i in range(0, x.shape[0], BATCH):
                for k, v in zip(names, session.run(list(names), {ONNX_INPUT: x[i : i + BATCH]})):
                    outs[k].append(v)
        else:
            import torch

            with torch.inference_mode():
                for i in range(0, x.shape[0], BATCH):
                    o = model(torch.from_numpy(x[i : i + BATCH]))
                    for k in names:
                        outs[k].append(getattr(o, k).numpy())
        return {k: np.concatenate(v, axis=0) for k, v in outs.items()}

    def embed(self, audio: np.ndarray) -> EmbedResult:
        if not self._sessions and not self._models:
            raise EmbedderUnavailable("MusiCNN is not loaded: call load() first")
        patches = audio_to_patches(audio, self.options.patches)
        msd = self.infer(patches)
        vgg = None
        if VGG in self.networks:
            vgg = self.infer(patches[vgg_patches(len(patches), self.options.vgg_patches)], VGG)
        return EmbedResult(vector=track_vector(msd, vgg), tags=track_tags(msd, vgg))

"""MusiCNN (MSD_musicnn, Pons & Serra, musicnn 0.1.0) as an embedder plugin, in PyTorch.

`prepare` downloads the `musicnn==0.1.0` wheel from PyPI (no dependencies: the package pins numpy<1.17 and
TensorFlow, neither of which is used), reads its TensorFlow-1 checkpoint with numpy alone and writes
`<models_dir>/musicnn/msd_musicnn.safetensors` (a PyTorch state dict, ~3.2 MB). `embed` returns the mean of
the per-patch dense(1506->200) pre-activations (the vector AudioMuse-AI averages), the per-patch vectors as
segments, and the mean sigmoid probability of the 50 Million Song Dataset tags.

Options (SIDECAR_PLUGINS__MUSICNN__<OPTION>):
  backend  "onnx" (default) or "torch": with "onnx", `prepare` also exports the model to
           `<models_dir>/musicnn/msd_musicnn.onnx` and inference runs on ONNX Runtime (CPU), about twice as
           fast as torch here. Both backends agree with the TensorFlow reference within 1e-4, so they share
           one `version`.
  threads  ONNX Runtime intra-op threads per inference (default 1; the torch backend follows the process-wide
           torch thread setting).
  patches  at most this many 3-second patches analysed per track, spread evenly over it (default 24; 0: every
           patch). The mean of 24 spread patches stayed within cosine 0.996 of the whole-track vector on 59
           real full-length tracks (docs/PERFORMANCE.md), well inside the 0.99 bound that lets both share one
           `version`; a 4-minute track has 80 patches, so this is about a third of the model work.

Model, weights and tags: ISC licence, Music Technology Group, Universitat Pompeu Fabra.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from schemas.embedding import EmbedResult
from sidecar.plugins import CaseInsensitive, Embedder, EmbedderUnavailable, PluginOptions

from .onnx_backend import INPUT as ONNX_INPUT
from .onnx_backend import OUTPUTS as OUTPUT_NAMES  # the fields of MusicnnOutput
from .preprocess import SAMPLE_RATE, audio_to_patches

__all__ = ["MusicnnEmbedder", "MSD_TAGS", "download_wheel", "weights_path"]

log = logging.getLogger(__name__)

PACKAGE = "musicnn==0.1.0"
WEIGHTS_FILE = "msd_musicnn.safetensors"
BATCH = 16  # patches per forward pass
#: default patch budget per track: the smallest multiple of 8 whose mean vector stayed within cosine 0.995 of
#: the whole track's on every one of 59 real tracks (scripts/bench_ingest.py prints the figures per budget)
PATCHES = 24
MAX_PATCHES = 100_000

MSD_TAGS: tuple[str, ...] = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul",
    "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies",
    "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop", "70s",
    "party", "country", "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal",
    "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy",
)  # fmt: skip


def weights_path(models_dir: Path) -> Path:
    return Path(models_dir) / "musicnn" / WEIGHTS_FILE


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
    version = "msd-musicnn-1"
    dim = 200
    sample_rate = SAMPLE_RATE

    class Options(PluginOptions):
        backend: Annotated[Literal["onnx", "torch"], CaseInsensitive] = Field(
            "onnx", description="MusiCNN backend: onnx (ONNX Runtime, about twice as fast here) or torch"
        )
        threads: int = Field(1, ge=1, le=256, description="ONNX Runtime intra-op threads per inference")
        patches: int = Field(
            PATCHES, ge=0, le=MAX_PATCHES, description="3-second patches analysed per track, spread over it; 0: every patch"
        )

    options: Options

    def __init__(self) -> None:
        self._model = None  # torch backend
        self._session = None  # onnx backend: an onnxruntime.InferenceSession
        super().__init__()

    # ---------------------------------------------------------------------------------------------- setup
    def prepare(self, models_dir: Path) -> None:
        self._prepare_weights(models_dir)
        if self.options.backend == "onnx":
            from .onnx_backend import export_onnx, onnx_is_current, onnx_path

            weights, dest = weights_path(models_dir), onnx_path(models_dir)
            if not onnx_is_current(dest, weights, self.version):
                export_onnx(weights, dest, self.version)

    def _prepare_weights(self, models_dir: Path) -> None:
        dest = weights_path(models_dir)
        if dest.exists():
            return
        from .checkpoint import CheckpointError
        from .convert import convert_wheel

        with tempfile.TemporaryDirectory(prefix="musicnn-wheel-") as tmp:
            wheel = download_wheel(Path(tmp))
            try:
                convert_wheel(wheel, dest)
            except (CheckpointError, OSError, ValueError, zipfile.BadZipFile) as e:
                raise EmbedderUnavailable(f"could not convert the MusiCNN checkpoint from {wheel.name}: {e}") from e
        log.info("MusiCNN weights written to %s", dest)

    def load(self, models_dir: Path) -> None:
        path = weights_path(models_dir)
        if not path.exists():
            raise EmbedderUnavailable(f"MusiCNN weights not found at {path}: run `sidecar setup`")
        if self.options.backend == "onnx":
            self._load_onnx(models_dir)
            return
        from safetensors.torch import load_file

        from .model import MusicnnMSD, load_state

        try:
            state = load_file(str(path))
            model = load_state(MusicnnMSD(), state)
        except Exception as e:  # a truncated or foreign file
            raise EmbedderUnavailable(
                f"MusiCNN weights at {path} are unreadable ({e}): delete the file and run `sidecar setup`"
            ) from e
        model.requires_grad_(False)
        self._model, self._session = model, None

    def _load_onnx(self, models_dir: Path) -> None:
        from .onnx_backend import make_session, onnx_is_current, onnx_path

        path = onnx_path(models_dir)
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
        if not onnx_is_current(path, weights_path(models_dir), self.version, meta):
            raise EmbedderUnavailable(
                f"MusiCNN ONNX model at {path} is older than the weights or from another version: run `sidecar setup`"
            )
        names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if names[0] != [ONNX_INPUT] or not set(OUTPUT_NAMES) <= set(names[1]):
            raise EmbedderUnavailable(f"MusiCNN ONNX model at {path} has unexpected inputs/outputs {names}")
        self._model, self._session = None, session

    # ---------------------------------------------------------------------------------------------- inference
    def infer(self, patches: np.ndarray) -> dict[str, np.ndarray]:
        """Run (n, 187, 96) log-mel patches through the model, in batches.

        Returns float32 arrays: dense_preact (n, 200), penultimate (n, 200), logits (n, 50), taggram (n, 50).
        """
        if self._model is None and self._session is None:
            raise EmbedderUnavailable("MusiCNN is not loaded: call load() first")
        x = np.ascontiguousarray(patches, dtype=np.float32)
        if x.ndim != 3 or x.shape[0] == 0 or x.shape[1:] != (187, 96):
            raise ValueError(f"expected patches of shape (n >= 1, 187, 96), got {x.shape}")
        outs: dict[str, list[np.ndarray]] = {k: [] for k in OUTPUT_NAMES}
        if self._session is not None:
            session = self._session  # InferenceSession.run is thread-safe
            for i in range(0, x.shape[0], BATCH):
                for k, v in zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {ONNX_INPUT: x[i : i + BATCH]})):
                    outs[k].append(v)
        else:
            import torch

            model = self._model
            with torch.inference_mode():
                for i in range(0, x.shape[0], BATCH):
                    o = model(torch.from_numpy(x[i : i + BATCH]))
                    for k in outs:
                        outs[k].append(getattr(o, k).numpy())
        return {k: np.concatenate(v, axis=0) for k, v in outs.items()}

    def embed(self, audio: np.ndarray) -> EmbedResult:
        if self._model is None and self._session is None:
            raise EmbedderUnavailable("MusiCNN is not loaded: call load() first")
        out = self.infer(audio_to_patches(audio, self.options.patches))
        preact = out["dense_preact"]
        probs = out["taggram"].mean(axis=0)
        return EmbedResult(
            vector=preact.mean(axis=0).astype(np.float32),
            segments=preact.astype(np.float32, copy=False),
            tags={t: float(p) for t, p in zip(MSD_TAGS, probs)},
        )

"""MERT (m-a-p/MERT-v1-95M, MERT-v1-330M; Li et al. 2023) as an embedder plugin, through transformers.

Weights are never downloaded: point SIDECAR_PLUGINS__MERT__CHECKPOINT at a local copy of a MERT checkpoint
directory as published (config.json with its `auto_map`, configuration_MERT.py, modeling_MERT.py,
preprocessor_config.json, the weights). It is loaded with
`AutoModel.from_pretrained(dir, trust_remote_code=True, local_files_only=True)` and
`Wav2Vec2FeatureExtractor.from_pretrained(dir, local_files_only=True)`. trust_remote_code runs the Python
files in that directory: use an unmodified copy of the official repository. Its code imports only hubert
classes from transformers (nnAudio only for the CQT variant). Needs transformers < 5 (on 5.x MERT's
`output_hidden_states=True` returns None; `load` detects that and says so).

What `embed` computes (mono float32 at the feature extractor's rate, 24 kHz for MERT v1):

- Windows: `window_s` seconds (default 5: MERT v1 was pre-trained on 5-second crops, so that is the context
  its attention has seen), at most `max_windows` of them (default 12, i.e. a minute of audio), spread
  evenly over the whole track, the first at the start and the last at the end (see `_windows.py`). A track
  shorter than one window is one window. Each window is normalised by the feature extractor (zero mean,
  unit variance, as MERT was trained) and run with `output_hidden_states=True`; 4 windows per forward pass.
- Layers (`layers`): `hidden_states` has num_hidden_layers + 1 entries (0 = the projected CNN features,
  i = transformer layer i). The option is a comma-separated list of blocks; a block is one layer (`6`),
  the mean of a range of layers (`4-9`), or `all` (the mean of every entry). Default `all`: MERT's own model
  card aggregates all 25 layers with learned weights, and the MARBLE results show no single layer is best
  across tasks (genre and tagging peak in the middle layers, pitch and key in lower ones); with no task to
  learn weights on, the uniform mean is the robust choice and keeps the vector small. `6,12` or `8-16`
  pick the MARBLE-style middle layers instead.
- Pooling (`pooling`): `meanstd` (default) gives, per block, the mean and the standard deviation of the
  frames (75 per second) - within a window for a segment, over all frames of all windows for the track (the
  law of total variance, so the track's spread includes how the windows differ); `mean` keeps the means only.
  The standard deviation also cancels the large constant offsets some transformer dimensions carry, which
  otherwise dominate a cosine similarity of plain means.
- Normalisation: each block statistic (a hidden_size-long piece) is L2-normalised, then the whole vector is
  divided by sqrt(number of pieces), so it is a unit vector in which every layer block and statistic counts
  equally in a cosine similarity (no layer or statistic drowns the others by scale).

dim = hidden_size x blocks x (2 for meanstd, 1 for mean): with the defaults 2048 for MERT-v1-330M
(1024-d, 24 layers) and 1536 for MERT-v1-95M. It is computed in `load` and must stay <= 32,768 (Milvus's
limit; at 1024-d that is 16 blocks with meanstd). Segments: one vector per window, same dim and recipe as
the track vector (store_segments). `version` names the checkpoint (a fingerprint of its configs and weight
files), layers, pooling and windowing, so changing any of them re-embeds the library.

Other options: `device` (default `cpu`, e.g. `cuda`). MERT v1's weights are published under CC-BY-NC-4.0
(non-commercial; see the model card).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from schemas.embedding import EmbedResult
from sidecar.plugins import Embedder, EmbedderUnavailable, option_env

from ._windows import (
    checkpoint_dir, checkpoint_fingerprint, l2_normalize, number_option, pooled_mean_std, split_windows,
)  # fmt: skip

__all__ = ["MertEmbedder", "parse_layers", "MAX_DIM"]

log = logging.getLogger(__name__)

MAX_DIM = 32_768  # Milvus's FLOAT_VECTOR limit
BATCH = 4  # windows per forward pass (does not change the output: no padding, per-sample GroupNorm, eval mode)
MIN_SECONDS = 1.0
POOLINGS = ("meanstd", "mean")
DEFAULTS = {"layers": "all", "pooling": "meanstd", "window_s": 5.0, "max_windows": 12, "device": "cpu"}

_BLOCK = re.compile(r"^(all|\d+|\d+-\d+)$")


def parse_layers(spec: str) -> list[str]:
    """Split and check the syntax of a `layers` option: ["all"], ["6", "12"], ["4-9"]... (ranges checked in load)."""
    blocks = [b.strip().lower() for b in str(spec).split(",") if b.strip()]
    if not blocks or not all(_BLOCK.match(b) for b in blocks):
        raise EmbedderUnavailable(
            f"{option_env('mert', 'layers')}={spec!r}: expected a comma-separated list of layer numbers, "
            "ranges (4-9, the mean of those layers) or `all` (the mean of every layer)"
        )
    if len(set(blocks)) != len(blocks):
        raise EmbedderUnavailable(f"{option_env('mert', 'layers')}={spec!r} names a block twice")
    return blocks


def _resolve(blocks: list[str], n_states: int) -> list[tuple[int, ...]]:
    """Blocks as tuples of hidden-state indices (0..n_states-1); EmbedderUnavailable if out of range."""
    out = []
    for b in blocks:
        if b == "all":
            idx = tuple(range(n_states))
        elif "-" in b:
            lo, hi = (int(x) for x in b.split("-"))
            idx = tuple(range(lo, hi + 1))
        else:
            idx = (int(b),)
        if not idx or idx[-1] >= n_states or idx[0] > idx[-1]:
            raise EmbedderUnavailable(
                f"{option_env('mert', 'layers')}: block {b!r} is not within 0-{n_states - 1} "
                f"(this checkpoint has {n_states - 1} transformer layers; 0 is the CNN feature projection)"
            )
        out.append(idx)
    return out


class MertEmbedder(Embedder):
    name = "mert"
    version = "mert-unloaded"
    dim = 0
    sample_rate = 24_000  # replaced in load() by the feature extractor's rate
    supports_text = False
    store_segments = True

    def __init__(self) -> None:
        self.options: dict[str, str] = {}
        self._model = None
        self._fe = None
        self._blocks: list[tuple[int, ...]] = []
        self._device = None
        self.configure({})

    # ---------------------------------------------------------------------------------------------- options
    def configure(self, options) -> None:
        """Check every option's syntax (the checkpoint directory itself is checked in prepare/load)."""
        self.options = {k.lower(): str(v) for k, v in dict(options).items()}
        o = self.options
        self.layers = parse_layers(o.get("layers") or DEFAULTS["layers"])
        self.pooling = (o.get("pooling") or DEFAULTS["pooling"]).strip().lower()
        if self.pooling not in POOLINGS:
            raise EmbedderUnavailable(f"{option_env(self.name, 'pooling')}={self.pooling!r}: use one of {', '.join(POOLINGS)}")
        self.window_s = number_option(self.name, o, "window_s", DEFAULTS["window_s"], kind=float, minimum=1.0)
        self.max_windows = number_option(self.name, o, "max_windows", DEFAULTS["max_windows"], kind=int, minimum=1)
        self.device = (o.get("device") or DEFAULTS["device"]).strip()

    def _checkpoint(self) -> Path:
        return checkpoint_dir(self.name, self.options, required_files=("config.json", "preprocessor_config.json"))

    # ---------------------------------------------------------------------------------------------- setup
    def prepare(self, models_dir: Path) -> None:
        """Nothing to download (weights come from the configured directory); checks that it is there."""
        self._checkpoint()

    def load(self, models_dir: Path) -> None:
        path = self._checkpoint()
        env = option_env(self.name, "checkpoint")
        import torch
        from transformers import AutoModel, Wav2Vec2FeatureExtractor

        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError) as e:
            raise EmbedderUnavailable(f"{option_env(self.name, 'device')}={self.device!r}: {e}") from None
        try:
            fe = Wav2Vec2FeatureExtractor.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), trust_remote_code=True, local_files_only=True)
        except Exception as e:  # missing files, foreign checkpoint, modeling code that fails to import
            raise EmbedderUnavailable(f"cannot load the MERT checkpoint in {path} ({env}): {type(e).__name__}: {e}") from e
        sr = int(fe.sampling_rate)
        try:  # one short dry run: the real layer count and width, and a check that hidden states come back
            model.eval().requires_grad_(False).to(device)
            with torch.inference_mode():
                probe = fe([np.zeros(sr, dtype=np.float32)], sampling_rate=sr, return_tensors="pt")
                out = model(probe["input_values"].to(device), output_hidden_states=True)
        except Exception as e:  # an unusable device, a checkpoint whose code does not run on this transformers
            raise EmbedderUnavailable(
                f"the MERT checkpoint in {path} ({env}) does not run on {option_env(self.name, 'device')}={self.device}: "
                f"{type(e).__name__}: {e}"
            ) from e
        states = getattr(out, "hidden_states", None)
        if not states:
            import transformers

            raise EmbedderUnavailable(
                f"the MERT model in {path} returned no hidden states (transformers {transformers.__version__}; "
                "MERT needs transformers<5)"
            )
        blocks = _resolve(self.layers, len(states))
        hidden = int(states[-1].shape[-1])
        n_stats = 2 if self.pooling == "meanstd" else 1
        dim = hidden * len(blocks) * n_stats
        if dim > MAX_DIM:
            raise EmbedderUnavailable(
                f"{option_env(self.name, 'layers')}={','.join(self.layers)} with pooling {self.pooling} gives "
                f"{dim}-d vectors ({len(blocks)} blocks x {hidden} x {n_stats}); the limit is {MAX_DIM}: "
                "use fewer blocks, ranges (4-9) or pooling=mean"
            )
        self._fe, self._model, self._device, self._blocks = fe, model, device, blocks
        self.sample_rate = sr
        self.dim = dim
        self.version = (
            f"mert-{checkpoint_fingerprint(path)}-h{hidden}x{len(states) - 1}-layers={','.join(self.layers)}"
            f"-{self.pooling}-w{self.window_s:g}sx{self.max_windows}-1"
        )
        log.info("MERT loaded from %s: %d Hz, %d-d (%s)", path, sr, dim, self.version)

    # ---------------------------------------------------------------------------------------------- inference
    def window_stats(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-window frame statistics of each layer block: means (n, B, H), variances (n, B, H), frames (n,)."""
        import torch

        model, fe, device, blocks = self._model, self._fe, self._device, self._blocks
        means, vars_, counts = [], [], []
        with torch.inference_mode():
            for i in range(0, len(windows), BATCH):
                batch = list(windows[i : i + BATCH])
                x = fe(batch, sampling_rate=self.sample_rate, return_tensors="pt")["input_values"].to(device)
                states = model(x, output_hidden_states=True).hidden_states
                per_block = [torch.stack([states[j] for j in idx]).mean(0) if len(idx) > 1 else states[idx[0]] for idx in blocks]
                h = torch.stack(per_block, dim=1).float()  # (b, B, T, H)
                means.append(h.mean(dim=2).cpu().numpy())
                vars_.append(h.var(dim=2, unbiased=False).cpu().numpy())
                counts += [h.shape[2]] * h.shape[0]
        return np.concatenate(means), np.concatenate(vars_), np.asarray(counts)

    def _vector(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """(..., B, H) statistics -> (..., dim) unit vectors: each piece L2-normalised, equal weights."""
        pieces = [l2_normalize(mean)] + ([l2_normalize(std)] if self.pooling == "meanstd" else [])
        v = np.concatenate(pieces, axis=-2)  # (..., B * n_stats, H)
        v = v / np.sqrt(v.shape[-2])
        return v.reshape(*v.shape[:-2], -1).astype(np.float32)

    def embed(self, audio: np.ndarray) -> EmbedResult:
        if self._model is None:
            raise EmbedderUnavailable("MERT is not loaded: call load() first")
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or len(audio) < MIN_SECONDS * self.sample_rate:
            raise ValueError(f"MERT needs mono audio of at least {MIN_SECONDS:g} s at {self.sample_rate} Hz")
        if not np.all(np.isfinite(audio)):
            raise ValueError("audio contains NaN or infinite samples")
        windows = split_windows(audio, int(round(self.window_s * self.sample_rate)), self.max_windows)
        means, vars_, counts = self.window_stats(windows)
        segments = self._vector(means, np.sqrt(vars_))
        n, B, H = means.shape
        t_mean, t_std = pooled_mean_std(means.reshape(n, -1), vars_.reshape(n, -1), counts)
        vector = self._vector(t_mean.reshape(B, H), t_std.reshape(B, H))
        return EmbedResult(vector=vector, segments=segments)

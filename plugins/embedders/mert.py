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
from typing import Annotated

import numpy as np
from pydantic import BeforeValidator, Field

from sidecar.plugins import EmbedderUnavailable, option_env

from ._checkpoint import MAX_DIM, CheckpointEmbedder, CheckpointOptions, Pooling, WindowSeconds, checkpoint_fingerprint

__all__ = ["MertEmbedder", "parse_layers", "MAX_DIM"]

log = logging.getLogger(__name__)

_BLOCK = re.compile(r"^(all|\d+|\d+-\d+)$")


def parse_layers(spec: str | tuple[str, ...]) -> tuple[str, ...]:
    """Split and check the syntax of a `layers` option: ("all",), ("6", "12"), ("4-9",)... (ranges checked in load)."""
    if isinstance(spec, tuple):
        return spec
    blocks = tuple(b.strip().lower() for b in str(spec).split(",") if b.strip())
    if not blocks or not all(_BLOCK.match(b) for b in blocks):
        raise ValueError(
            "expected a comma-separated list of layer numbers, ranges (4-9, the mean of those layers) "
            "or `all` (the mean of every layer)"
        )
    if len(set(blocks)) != len(blocks):
        raise ValueError("a block is named twice")
    return blocks


def _resolve(blocks: tuple[str, ...], n_states: int) -> list[tuple[int, ...]]:
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


class MertEmbedder(CheckpointEmbedder):
    name = "mert"
    title = "MERT"
    version = "mert-unloaded"
    dim = 0
    sample_rate = 24_000  # replaced in load() by the feature extractor's rate
    checkpoint_files = (("config.json",), ("preprocessor_config.json",))

    class Options(CheckpointOptions):
        layers: Annotated[tuple[str, ...], BeforeValidator(parse_layers)] = Field(
            ("all",), description="comma-separated layer blocks: a layer (6), the mean of a range (4-9), or all"
        )
        pooling: Pooling = "meanstd"
        window_s: WindowSeconds = 5.0

    options: Options

    def __init__(self) -> None:
        self._fe = None
        self._blocks: list[tuple[int, ...]] = []
        super().__init__()

    def load(self, models_dir: Path) -> None:
        path = self.checkpoint()
        env = option_env(self.name, "checkpoint")
        import torch
        from transformers import AutoModel, Wav2Vec2FeatureExtractor

        device = self.torch_device()
        try:
            fe = Wav2Vec2FeatureExtractor.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), trust_remote_code=True, local_files_only=True)
        except Exception as e:  # missing files, foreign checkpoint, modeling code that fails to import
            raise EmbedderUnavailable(f"cannot load the MERT checkpoint in {path} ({env}): {type(e).__name__}: {e}") from e
        sr = int(fe.sampling_rate)
        with self.dry_run(path):  # the real layer count and width, and a check that hidden states come back
            model.eval().requires_grad_(False).to(device)
            with torch.inference_mode():
                probe = fe([np.zeros(sr, dtype=np.float32)], sampling_rate=sr, return_tensors="pt")
                out = model(probe["input_values"].to(device), output_hidden_states=True)
        states = getattr(out, "hidden_states", None)
        if not states:
            import transformers

            raise EmbedderUnavailable(
                f"the MERT model in {path} returned no hidden states (transformers {transformers.__version__}; "
                "MERT needs transformers<5)"
            )
        layers, pooling = self.options.layers, self.options.pooling
        blocks = _resolve(layers, len(states))
        hidden = int(states[-1].shape[-1])
        n_stats = 2 if pooling == "meanstd" else 1
        dim = hidden * len(blocks) * n_stats
        if dim > MAX_DIM:
            raise EmbedderUnavailable(
                f"{option_env(self.name, 'layers')}={','.join(layers)} with pooling {pooling} gives "
                f"{dim}-d vectors ({len(blocks)} blocks x {hidden} x {n_stats}); the limit is {MAX_DIM}: "
                "use fewer blocks, ranges (4-9) or pooling=mean"
            )
        self._fe, self._model, self._device, self._blocks = fe, model, device, blocks
        self.sample_rate = sr
        self.dim = dim
        self.version = (
            f"mert-{checkpoint_fingerprint(path)}-h{hidden}x{len(states) - 1}-layers={','.join(layers)}"
            f"-{pooling}-w{self.options.window_s:g}sx{self.options.max_windows}-1"
        )
        log.info("MERT loaded from %s: %d Hz, %d-d (%s)", path, sr, dim, self.version)

    def frames(self, windows: np.ndarray):
        """(b, samples) -> (b, blocks, frames, hidden): each block the mean of its layers' hidden states."""
        import torch

        x = self._fe(list(windows), sampling_rate=self.sample_rate, return_tensors="pt")["input_values"].to(self._device)
        states = self._model(x, output_hidden_states=True).hidden_states
        per_block = [torch.stack([states[j] for j in idx]).mean(0) if len(idx) > 1 else states[idx[0]] for idx in self._blocks]
        return torch.stack(per_block, dim=1)

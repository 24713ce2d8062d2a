"""MuQ and MuQ-MuLan (Zhu et al. 2025, tencent-ailab, `muq` 0.1.0) as embedder plugins.

Weights are never downloaded. The MuQ and MuQ-MuLan weights are licensed CC-BY-NC-4.0 (non-commercial use
only); the `muq` code is MIT. How `muq` is imported without torchaudio, and how its checkpoints are read
and checked: loading.py. MuQ-MuLan, the joint audio-text model: mulan.py. Both take the option `device`
(default cpu, e.g. cuda).

MuQ (`muq`; SIDECAR_PLUGINS__MUQ__CHECKPOINT = a local copy of OpenMuQ/MuQ-large-msd-iter: config.json and
model.safetensors or pytorch_model.bin). Loaded like `MuQ.from_pretrained(dir)` does (MuQ(config) from
config.json, then the state dict), but checked: a weight file that lacks any tensor of the feature path
(conv front end, conformer) is refused instead of silently leaving random weights, and nothing is printed.

- Input: 24 kHz mono. Windows of `window_s` seconds (default 10: the clip length the authors feed MuQ in
  MuQ-MuLan, 250 frames of context), at most `max_windows` of them (default 6, i.e. a minute of audio, the
  budget of the MERT plugin), spread evenly over the track, first at the start and last at the end
  (`_windows.py`); a track shorter than one window is one window (at least 1 s). Four windows per forward
  pass. Cost: MuQ-large (330M parameters) takes about 0.6 s of CPU time per second of audio on 2 cores,
  so about 40 s a track with the defaults on such a machine (well under a second on a GPU: `device`).
- Layer (`layer`, default 7): `hidden_states` has encoder_depth + 1 entries (0 = the conv front end,
  i = conformer layer i, the last one also passes the encoder's final LayerNorm); negative numbers count from
  the end. Layer 7 of 12 is what the MusicFM authors use for the same 25 Hz, 12-layer wav2vec2-conformer
  design that MuQ reuses, and middle layers are the ones that carry genre, mood and instrumentation in
  MARBLE-style probing, while the last layer is specialised towards predicting the Mel-RVQ tokens. Every
  conformer layer ends in a LayerNorm, so the middle layers have no huge outlier dimensions.
- Pooling (`pooling`): `meanstd` (default), the mean and the standard deviation of the 25 Hz frames of that
  layer - within a window for a segment, over all frames of all windows for the track (the law of total
  variance, so the track's spread includes how its windows differ; well defined for a one-window track);
  `mean` keeps the means only. Each statistic is L2-normalised and the pair divided by sqrt(2), so vectors
  are unit length and both count equally in a cosine similarity (the recipe of the MERT plugin).
- dim = hidden size x 2 (2048 for MuQ-large), computed in `load` from the checkpoint. Segments: one vector
  per window, same dim and recipe (store_segments). `version` names the checkpoint (a fingerprint of its
  config and weight files), layer, pooling and windowing.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import Field

from sidecar.plugins import EmbedderUnavailable, option_env

from .._checkpoint import MAX_DIM, CheckpointEmbedder, CheckpointOptions, MaxWindows, Pooling, WindowSeconds, checkpoint_fingerprint
from .loading import LICENCE_NOTE, MUQ_UNUSED, WEIGHT_FILES, build_muq, import_muq, load_checked, read_config, read_weights
from .mulan import MuqMulanEmbedder

__all__ = ["MuqEmbedder", "MuqMulanEmbedder", "import_muq", "build_muq", "read_config", "read_weights"]

log = logging.getLogger(__name__)


class MuqEmbedder(CheckpointEmbedder):
    name = "muq"
    title = "MuQ"
    version = "muq-unloaded"
    dim = 0
    sample_rate = 24_000
    checkpoint_files = (("config.json",), WEIGHT_FILES)
    checkpoint_hint = f"a local copy of OpenMuQ/MuQ-large-msd-iter: config.json + model.safetensors; {LICENCE_NOTE}"

    class Options(CheckpointOptions):
        layer: int = Field(
            7, description="the hidden layer: 0 the conv front end, 1-12 the conformer layers of MuQ-large; -1 the last"
        )
        pooling: Pooling = "meanstd"
        window_s: WindowSeconds = 10.0
        max_windows: MaxWindows = 6

    options: Options

    def __init__(self) -> None:
        self._layer_index = 0
        super().__init__()

    def load(self, models_dir: Path) -> None:
        path = self.checkpoint()
        env = option_env(self.name, "checkpoint")
        import torch

        device = self.torch_device()
        model = build_muq(read_config(path, env), path, env)
        load_checked(model, read_weights(path, env), MUQ_UNUSED, path, env)
        model.eval().requires_grad_(False).to(device)
        with self.dry_run(path), torch.inference_mode():  # also gives the layer count and width
            out = model(torch.zeros(1, self.sample_rate, device=device), output_hidden_states=True)
        states = getattr(out, "hidden_states", None)
        if not states:
            raise EmbedderUnavailable(f"the MuQ model in {path} returned no hidden states (needs transformers<5)")
        o, n = self.options, len(states)
        if not -n <= o.layer < n:
            raise EmbedderUnavailable(
                f"{option_env(self.name, 'layer')}={o.layer}: this checkpoint has layers 0-{n - 1} "
                f"(0 = the conv front end, {n - 1} = the last conformer layer; negative counts from the end)"
            )
        hidden = int(states[-1].shape[-1])
        dim = hidden * (2 if o.pooling == "meanstd" else 1)
        if dim > MAX_DIM:
            raise EmbedderUnavailable(f"MuQ's hidden size {hidden} gives {dim}-d vectors, over Milvus's {MAX_DIM}")
        self._model, self._device, self._layer_index = model, device, o.layer % n
        self.dim = dim
        self.version = (
            f"muq-{checkpoint_fingerprint(path)}-h{hidden}x{n - 1}-layer{self._layer_index}-{o.pooling}"
            f"-w{o.window_s:g}sx{o.max_windows}-1"
        )
        log.info("MuQ loaded from %s: %d-d (%s); %s", path, dim, self.version, LICENCE_NOTE)

    def frames(self, windows: np.ndarray):
        """(b, samples) -> (b, frames, hidden): the chosen layer's 25 Hz frames."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(windows)).to(self._device)
        return self._model(x, output_hidden_states=True).hidden_states[self._layer_index]

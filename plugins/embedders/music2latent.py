"""Music2Latent (Pasini, Lattner & Fazekas, ISMIR 2024; Sony CSL Paris, `music2latent` 0.1.8) as an embedder.

The encoder of Music2Latent's consistency autoencoder: 44.1 kHz audio -> 64-channel latents at about 10.8 Hz,
or, before its bottleneck, 8192-channel features (which the authors recommend for downstream tasks).
Code and weights: CC-BY-NC-4.0 (non-commercial use only).

Weights are never downloaded. Set SIDECAR_PLUGINS__MUSIC2LATENT__CHECKPOINT to a local copy of
`music2latent.pt` (from SonyCSLParis/music2latent on Hugging Face), or to a directory holding it. The
package's own `EncoderDecoder(load_path_inference=...)` cannot be used offline: its constructor first calls
`download_model()`, which looks only in the package's own folder and otherwise downloads. So `load` builds the
package's `Encoder` class itself and loads the `encoder.*` part of the checkpoint's `gen_state_dict`
strictly (the decoder is never built). The file is read with `torch.load(weights_only=True)` when it can
be; the released file holds more than tensors, so it may need `weights_only=False`, i.e. full unpickling,
which runs code from the file: point the option only at a file you trust (the official release).

`embed` (mono float32 at 44.1 kHz):

- Windows of `window_s` seconds (default 10, at most 60 as the package encodes up to 60 s in one piece),
  at most `max_windows` (default 4), spread evenly over the track, first at the start and last at the end
  (`_windows.py`); a track shorter than one window is one window (at least 1 s). Each window is encoded as
  the package's `encode_audio_inference` does (crop to a multiple of the downsampling, STFT representation,
  encoder); the encoder's GroupNorms see one window at a time. The encoder is slow on CPU (about 1 s of
  compute per second of audio on 2 cores), hence the modest defaults.
- `representation`: `latents` (default: the 64-channel bottleneck the decoder uses, divided by the
  package's sigma_rescale) or `features` (`extract_features=True`: the 8192-channel pre-bottleneck
  features; richer, but 16,384-d track vectors).
- Pooling (`pooling`): `meanstd` (default), the mean and standard deviation over time of every channel -
  within a window for a segment, over all frames of all windows for the track (law of total variance);
  `mean` keeps the means. Each statistic is L2-normalised and the pair divided by sqrt(2) (unit vectors in
  which mean and spread count equally, as the MERT and MuQ plugins do).

dim = channels x 2: 128 for latents, 16,384 for features (computed in `load` from the model). Segments: one
vector per window, same dim and recipe (store_segments). `version` names the checkpoint file (name and size),
representation, pooling and windowing. Option `device` (default cpu, e.g. cuda).
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from sidecar.plugins import CaseInsensitive, EmbedderUnavailable, option_env

from ._checkpoint import MAX_DIM, CheckpointEmbedder, CheckpointOptions, MaxWindows, Pooling, WindowSeconds, checkpoint_fingerprint

__all__ = ["Music2LatentEmbedder", "CHECKPOINT_FILE", "read_checkpoint", "encoder_state"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "music2latent.pt"
LICENCE_NOTE = "Music2Latent's code and weights are licensed CC-BY-NC-4.0 (non-commercial use only)"
MAX_WINDOW_S = 60.0  # the package's max_waveform_length_encode: one piece, no chunking inside a window
_PREFIXES = ("module.", "_orig_mod.")


def read_checkpoint(path: Path, env: str) -> dict:
    """The checkpoint as a dict: `torch.load(weights_only=True)`, else full unpickling (trusted files only)."""
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # not a pickle at all: truncated or foreign file
            raise EmbedderUnavailable(f"cannot read the Music2Latent checkpoint {path} ({env}): {e}") from e
        log.warning(
            "%s holds more than tensors (%s); loading it with weights_only=False, which runs code from the "
            "file: use only the official release", path, str(e).splitlines()[0][:200],
        )  # fmt: skip
        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e2:
            raise EmbedderUnavailable(f"cannot read the Music2Latent checkpoint {path} ({env}): {type(e2).__name__}: {e2}") from e2
    except Exception as e:  # truncated file, not a torch file...
        raise EmbedderUnavailable(f"cannot read the Music2Latent checkpoint {path} ({env}): {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise EmbedderUnavailable(f"{path} ({env}) is not a Music2Latent checkpoint (not a dict)")
    return ckpt


def encoder_state(ckpt: dict, path: Path, env: str) -> dict:
    """The encoder's tensors from the checkpoint's `gen_state_dict` (or a bare state dict), prefix removed."""
    state = ckpt.get("gen_state_dict", ckpt)
    if not isinstance(state, dict):
        raise EmbedderUnavailable(f"{path} ({env}) is not a Music2Latent checkpoint (no gen_state_dict)")
    out = {}
    for k, v in state.items():
        key = str(k)
        for p in _PREFIXES:
            if key.startswith(p):
                key = key[len(p) :]
        if key.startswith("encoder."):
            out[key[len("encoder.") :]] = v
    if not out:
        raise EmbedderUnavailable(f"{path} ({env}) is not a Music2Latent checkpoint: no encoder.* tensors in gen_state_dict")
    return out


class Music2LatentEmbedder(CheckpointEmbedder):
    name = "music2latent"
    title = "Music2Latent"
    version = "music2latent-unloaded"
    dim = 0
    sample_rate = 44_100
    checkpoint_hint = f"the {CHECKPOINT_FILE} file of SonyCSLParis/music2latent; {LICENCE_NOTE}"
    batch = 2

    class Options(CheckpointOptions):
        checkpoint: Path | None = Field(None, description=f"the local {CHECKPOINT_FILE}, or a directory holding it")
        representation: Annotated[Literal["latents", "features"], CaseInsensitive] = Field(
            "latents", description="latents: the 64-channel bottleneck; features: the 8192-channel pre-bottleneck features"
        )
        pooling: Pooling = "meanstd"
        window_s: Annotated[WindowSeconds, Field(le=MAX_WINDOW_S)] = 10.0
        max_windows: MaxWindows = 4

    options: Options

    def __init__(self) -> None:
        self._consts: tuple[int, int, float] = (512, 8, 0.06)
        super().__init__()

    def checkpoint(self) -> Path:
        """The `checkpoint` option as the checkpoint file (given, or in the given directory)."""
        env, raw = option_env(self.name, "checkpoint"), self.options.checkpoint
        if raw is None:
            raise self.unavailable(f"the music2latent embedder needs a local checkpoint: set {env}=/path/to/{CHECKPOINT_FILE}")
        path = raw.expanduser()
        if path.is_dir():
            if not (path / CHECKPOINT_FILE).is_file():
                raise self.unavailable(f"{env}={raw}: no {CHECKPOINT_FILE} in that directory")
            path = path / CHECKPOINT_FILE
        elif not path.is_file():
            raise self.unavailable(f"{env}={raw}: no such file or directory")
        return path

    def load(self, models_dir: Path) -> None:
        path = self.checkpoint()
        env = option_env(self.name, "checkpoint")
        import torch

        try:
            from music2latent import hparams_inference
            from music2latent import models as m2l
        except Exception as e:
            raise EmbedderUnavailable(f"cannot import music2latent ({type(e).__name__}: {e}): pip install music2latent==0.1.8") from e
        device = self.torch_device()
        state = encoder_state(read_checkpoint(path, env), path, env)
        with torch.random.fork_rng(devices=[]):  # building draws random initial weights: leave the global RNG be
            encoder = m2l.Encoder()
        try:
            encoder.load_state_dict(state, strict=True)
        except Exception as e:  # missing/unexpected keys, shape mismatches, non-tensor entries
            raise EmbedderUnavailable(
                f"the encoder weights in {path} ({env}) do not fit music2latent's Encoder: {str(e)[:600]}"
            ) from e
        encoder.eval().requires_grad_(False).to(device)
        hop = int(m2l.hop)
        down = 2 ** list(m2l.freq_downsample_list).count(0)
        self._model, self._device = encoder, device
        self._consts = (hop, down, float(hparams_inference.sigma_rescale))
        with self.dry_run(path):
            probe = self._encode(np.zeros((1, self.sample_rate), dtype=np.float32))
        channels = int(probe.shape[1])
        o = self.options
        dim = channels * (2 if o.pooling == "meanstd" else 1)
        if dim > MAX_DIM:
            self._model = None
            raise EmbedderUnavailable(f"{channels}-channel {o.representation} give {dim}-d vectors, over Milvus's {MAX_DIM}")
        self.dim = dim
        self.version = (
            f"music2latent-{checkpoint_fingerprint(path)}-{o.representation}{channels}-{o.pooling}-w{o.window_s:g}sx{o.max_windows}-1"
        )
        log.info("Music2Latent encoder loaded from %s: %d-d (%s); %s", path, dim, self.version, LICENCE_NOTE)

    # ---------------------------------------------------------------------------------------------- inference
    def _encode(self, windows: np.ndarray):
        """(n, samples) float32 -> (n, channels, frames) float32 tensor, as music2latent's encode_audio_inference."""
        import torch
        from music2latent.audio import to_representation_encoder

        hop, down, sigma_rescale = self._consts
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self._device)
        length = x.shape[-1]
        cropped = ((((length - 3 * hop) // hop) // down) * hop * down) + 3 * hop
        features = self.options.representation == "features"
        with torch.inference_mode():
            r = to_representation_encoder(x[:, :cropped])
            z = self._model(r, extract_features=features)
            if not features:
                z = z / sigma_rescale
        return z.float()

    def frames(self, windows: np.ndarray):
        return self._encode(windows).transpose(1, 2)  # (b, frames, channels)

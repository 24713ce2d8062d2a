"""The base of the embedders that run a checkpoint the user points them at (MERT, CLAP, MuQ, MuQ-MuLan,
Music2Latent). Weights are never downloaded: `checkpoint` names a local copy.

What `CheckpointEmbedder` gives them:

- Options (`CheckpointOptions`): `checkpoint` (checked by `prepare` and `load` through `checkpoint()`: an
  existing directory holding `checkpoint_files`, every message naming the variable and `checkpoint_hint`),
  `device` (a torch device, checked by `torch_device()`) and `max_windows`. `WindowSeconds`, `MaxWindows` and
  `Pooling` are the option types of the plugins that have those options; each plugin gives its own default.
- `embed`: checks the audio (mono, finite, at least MIN_SECONDS), cuts it into at most `max_windows` windows of
  `window_samples()` (`_windows.py`) and passes them to `embed_windows`. The default `embed_windows` pools
  frame statistics: `frames(batch)` gives the hidden states of `batch` windows as (b, [blocks,] frames,
  features); a segment is a window's mean and standard deviation over its frames, the track's are over all
  frames of all windows (the law of total variance), made unit vectors by `mean_spread_vector`.
- `dry_run(path)`: around load's trial forward pass, so that a device that is not there or code that does not
  run on this transformers fails at start-up, naming the checkpoint and the device, not on the first track.
- Thread safety: after `load`, `embed` and `embed_text` run on several worker threads at once. Modules in eval
  mode under inference_mode may be called concurrently; a Hugging Face fast tokenizer may not ("Already
  borrowed" when its padding settings change), so tokenising holds `tokenizer_lock` (it is cheap).
"""
from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from schemas.embedding import EmbedResult
from sidecar.plugins import CaseInsensitive, Embedder, EmbedderUnavailable, PluginOptions, option_env

from ._windows import mean_spread_vector, pooled_mean_std, split_windows

__all__ = [
    "CheckpointEmbedder", "CheckpointOptions", "MaxWindows", "Pooling", "WindowSeconds", "MAX_DIM", "MIN_SECONDS",
    "checkpoint_fingerprint", "missing_files",
]  # fmt: skip

MAX_DIM = 32_768  # Milvus's FLOAT_VECTOR limit
MIN_SECONDS = 1.0

WindowSeconds = Annotated[float, Field(ge=MIN_SECONDS, allow_inf_nan=False, description="seconds of audio per window")]
MaxWindows = Annotated[int, Field(ge=1, le=10_000, description="at most this many windows per track, spread evenly over it")]
Pooling = Annotated[
    Literal["meanstd", "mean"], CaseInsensitive,
    Field(description="meanstd: the mean and the standard deviation of the frames; mean: the mean alone"),
]  # fmt: skip


class CheckpointOptions(PluginOptions):
    checkpoint: Path | None = Field(None, description="the local checkpoint (weights are never downloaded)")
    device: str = Field("cpu", description="the torch device to run on: cpu, cuda, cuda:1...")
    max_windows: MaxWindows = 12


def missing_files(directory: Path, required: tuple[tuple[str, ...], ...]) -> list[str]:
    """The entries of `required` (each a tuple of alternatives) of which `directory` holds no file, as text."""
    return [" or ".join(names) for names in required if not any((directory / n).is_file() for n in names)]


def checkpoint_fingerprint(path: Path, *more: Path) -> str:
    """8 hex digits naming a checkpoint, for `version`: pointing the option at another checkpoint (95M -> 330M, a
    new release) re-embeds the library. Cheap: weights are not read.

    A directory: its JSON configs and Python files (contents) and weight files (names and sizes); two
    fine-tunes with identical configs and file sizes would collide. A file: its name and size. Several paths
    (a checkpoint and its towers): a digest of their fingerprints.
    """
    if more:
        parts = [checkpoint_fingerprint(p) for p in (path, *more)]
        return hashlib.blake2b("\0".join(parts).encode(), digest_size=4).hexdigest()
    path = Path(path)
    if path.is_file():
        return hashlib.blake2b(f"{path.name}\0{path.stat().st_size}".encode(), digest_size=4).hexdigest()
    h = hashlib.blake2b(digest_size=4)
    for f in sorted(path.iterdir()):
        if not f.is_file():
            continue
        if f.suffix in (".json", ".py"):
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
        elif f.suffix in (".safetensors", ".bin", ".pt", ".ckpt", ".pth"):
            h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
    return h.hexdigest()


class CheckpointEmbedder(Embedder):
    """See the module doc. A subclass sets `name`, `title`, `checkpoint_hint`, `checkpoint_files`, its `Options`,
    and implements `load` (setting `self._model`, `sample_rate`, `dim`, `version`) and `frames` or `embed_windows`."""

    Options = CheckpointOptions
    options: CheckpointOptions
    store_segments = True
    #: the model's name in messages
    title: str = ""
    #: what `checkpoint` should be (and the licence), added to every message about it
    checkpoint_hint: str = ""
    #: the files the checkpoint directory must hold, each a tuple of alternatives
    checkpoint_files: tuple[tuple[str, ...], ...] = (("config.json",),)
    #: windows per forward pass (equal lengths, no padding: batching does not change the output)
    batch: int = 4

    def __init__(self) -> None:
        self._model = None
        self._device = None
        self.tokenizer_lock = threading.Lock()
        super().__init__()

    # ---------------------------------------------------------------------------------------------- setup
    def unavailable(self, message: str) -> EmbedderUnavailable:
        """An EmbedderUnavailable about the checkpoint, with `checkpoint_hint`."""
        return EmbedderUnavailable(f"{message} ({self.checkpoint_hint})" if self.checkpoint_hint else message)

    def checkpoint(self) -> Path:
        """The `checkpoint` option as an existing directory holding `checkpoint_files`; EmbedderUnavailable if not."""
        env, raw = option_env(self.name, "checkpoint"), self.options.checkpoint
        if raw is None:
            raise self.unavailable(f"the {self.name} embedder needs a local checkpoint directory: set {env}=/path/to/checkpoint")
        path = raw.expanduser()
        if not path.is_dir():
            raise self.unavailable(f"{env}={raw}: no such directory")
        missing = missing_files(path, self.checkpoint_files)
        if missing:
            raise self.unavailable(f"{env}={raw} is not a checkpoint directory for {self.name}: {', '.join(missing)} missing")
        return path

    def prepare(self, models_dir: Path) -> None:
        """Nothing to download (the weights come from the configured checkpoint); checks that it is there."""
        self.checkpoint()

    def torch_device(self):
        """The `device` option as a torch.device this torch build can use; EmbedderUnavailable naming it if not."""
        import torch

        spec = self.options.device
        try:
            device = torch.device(spec)
            torch.empty(0, device=device)  # a device this build cannot use (cuda on a CPU wheel) fails here
        except (RuntimeError, ValueError, AssertionError) as e:
            raise EmbedderUnavailable(f"{option_env(self.name, 'device')}={spec}: {e}") from None
        return device

    @contextlib.contextmanager
    def dry_run(self, path: Path) -> Iterator[None]:
        """Around load's trial forward pass (see the module doc); the model stays unloaded if it fails."""
        try:
            yield
        except Exception as e:
            self._model = None
            if isinstance(e, EmbedderUnavailable):
                raise
            raise EmbedderUnavailable(
                f"the {self.title} checkpoint in {path} ({option_env(self.name, 'checkpoint')}) does not run on "
                f"{option_env(self.name, 'device')}={self.options.device}: {type(e).__name__}: {e}"
            ) from e

    # ---------------------------------------------------------------------------------------------- inference
    def window_samples(self) -> int:
        """Samples per window: `window_s` seconds (a plugin whose model fixes its own input length overrides it)."""
        return int(round(self.options.window_s * self.sample_rate))

    def embed(self, audio: np.ndarray) -> EmbedResult:
        if self._model is None:
            raise EmbedderUnavailable(f"{self.title} is not loaded: call load() first")
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or len(audio) < MIN_SECONDS * self.sample_rate:
            raise ValueError(f"{self.title} needs mono audio of at least {MIN_SECONDS:g} s at {self.sample_rate} Hz")
        if not np.all(np.isfinite(audio)):
            raise ValueError("audio contains NaN or infinite samples")
        return self.embed_windows(split_windows(audio, self.window_samples(), self.options.max_windows))

    def embed_windows(self, windows: np.ndarray) -> EmbedResult:
        """Frame-statistics pooling (see the module doc): one segment a window, and the track vector."""
        means, vars_, counts = self.window_stats(windows)
        if means.ndim == 2:  # frames without blocks: one block
            means, vars_ = means[:, None], vars_[:, None]
        n, shape = len(means), means.shape[1:]
        t_mean, t_std = pooled_mean_std(means.reshape(n, -1), vars_.reshape(n, -1), counts)
        return EmbedResult(
            vector=mean_spread_vector(t_mean.reshape(shape), t_std.reshape(shape), self.options.pooling),
            segments=mean_spread_vector(means, np.sqrt(vars_), self.options.pooling),
        )

    def window_stats(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per window, over its frames: means and population variances ((n, [blocks,] features)), frame counts (n,)."""
        import torch

        means, vars_, counts = [], [], []
        with torch.inference_mode():
            for i in range(0, len(windows), self.batch):
                h = self.frames(windows[i : i + self.batch]).float()
                means.append(h.mean(dim=-2).cpu().numpy())
                vars_.append(h.var(dim=-2, unbiased=False).cpu().numpy())
                counts += [h.shape[-2]] * h.shape[0]
        return np.concatenate(means), np.concatenate(vars_), np.asarray(counts)

    def frames(self, windows: np.ndarray):
        """(b, samples) float32 windows -> a (b, [blocks,] frames, features) tensor, for `window_stats`."""
        raise NotImplementedError(f"{type(self).__name__} pools no frames: it overrides embed_windows")

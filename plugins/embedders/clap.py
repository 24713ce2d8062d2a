"""CLAP (LAION, e.g. laion/larger_clap_music) as an embedder plugin with a text tower, through transformers.

Weights are never downloaded: point SIDECAR_PLUGINS__CLAP__CHECKPOINT at a local checkpoint directory in
transformers format (config.json, the weights, preprocessor_config.json and the RoBERTa tokenizer files:
vocab.json, merges.txt, tokenizer_config.json...; what `ClapModel.save_pretrained` plus
`ClapProcessor.save_pretrained` write, and what laion/larger_clap_music ships). Loaded with
`ClapModel.from_pretrained(dir, local_files_only=True)` and `ClapProcessor.from_pretrained(dir,
local_files_only=True)`; the laion-clap package is not used (it forces numpy<1 and torchvision).

Audio (mono float32 at the feature extractor's rate, 48 kHz): windows of the model's own input length
(`max_length_s` of the feature extractor: 10 s for HTSAT), at most `max_windows` of them (default 12), spread
evenly over the whole track, the first at the start and the last at the end (see `_windows.py`). Windows are
never longer than the model's input, so the feature extractor never takes a random crop and the result is
deterministic; a track shorter than 10 s is one window, which the feature extractor pads its own way
(`repeatpad` for the LAION checkpoints). Each window goes through `get_audio_features` (the projection into
the joint space), is L2-normalised, and is a segment (store_segments); the track vector is the L2-normalised
mean of the window vectors. `embed_text` returns `get_text_features`, L2-normalised, in the same space, so
a cosine between a text and a track is what CLAP was trained to score.

dim = the model's projection_dim (512 for the LAION checkpoints), read in `load`. `version` names the
checkpoint (a fingerprint of its configs and weight files) and the window cap. Other options: `device`
(default `cpu`). Weights: see the checkpoint's model card for its licence.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from schemas.embedding import EmbedResult
from sidecar.plugins import Embedder, EmbedderUnavailable, option_env

from ._windows import checkpoint_dir, checkpoint_fingerprint, l2_normalize, number_option, split_windows

__all__ = ["ClapEmbedder"]

log = logging.getLogger(__name__)

BATCH = 4  # audio windows per forward pass
TEXT_BATCH = 32
MIN_SECONDS = 1.0
DEFAULTS = {"max_windows": 12, "device": "cpu"}


class ClapEmbedder(Embedder):
    name = "clap"
    version = "clap-unloaded"
    dim = 512  # replaced in load() by the checkpoint's projection_dim
    sample_rate = 48_000  # replaced in load() by the feature extractor's rate
    supports_text = True
    store_segments = True

    def __init__(self) -> None:
        self.options: dict[str, str] = {}
        self._model = None
        self._fe = None
        self._tokenizer = None
        self._device = None
        # a fast tokenizer's Rust object refuses concurrent use ("Already borrowed") when padding/truncation
        # settings are applied; tokenisation is cheap, so it is serialised. The model itself is not.
        self._tok_lock = threading.Lock()
        self.configure({})

    def configure(self, options) -> None:
        self.options = {k.lower(): str(v) for k, v in dict(options).items()}
        self.max_windows = number_option(self.name, self.options, "max_windows", DEFAULTS["max_windows"], kind=int, minimum=1)
        self.device = (self.options.get("device") or DEFAULTS["device"]).strip()

    def _checkpoint(self) -> Path:
        return checkpoint_dir(self.name, self.options, required_files=("config.json", "preprocessor_config.json"))

    # ---------------------------------------------------------------------------------------------- setup
    def prepare(self, models_dir: Path) -> None:
        """Nothing to download (weights come from the configured directory); checks that it is there."""
        self._checkpoint()

    def load(self, models_dir: Path) -> None:
        path = self._checkpoint()
        env = option_env(self.name, "checkpoint")
        if not ((path / "tokenizer.json").is_file() or all((path / f).is_file() for f in ("vocab.json", "merges.txt"))):
            raise EmbedderUnavailable(
                f"{env}={path} has no tokenizer (vocab.json and merges.txt, or tokenizer.json): ClapProcessor "
                "needs the RoBERTa tokenizer files saved with the checkpoint; copy them from its repository"
            )
        import torch
        from transformers import ClapModel, ClapProcessor

        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError) as e:
            raise EmbedderUnavailable(f"{option_env(self.name, 'device')}={self.device!r}: {e}") from None
        try:
            processor = ClapProcessor.from_pretrained(str(path), local_files_only=True)
            model = ClapModel.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # missing tokenizer files, a foreign checkpoint...
            raise EmbedderUnavailable(
                f"cannot load the CLAP checkpoint in {path} ({env}; it needs the model, preprocessor_config.json "
                f"and the RoBERTa tokenizer files): {type(e).__name__}: {e}"
            ) from e
        fe, tok = processor.feature_extractor, processor.tokenizer
        text_positions = int(getattr(model.config.text_config, "max_position_embeddings", 514))
        self._max_tokens = max(8, min(int(tok.model_max_length or 512), text_positions - 2))  # RoBERTa offsets by 2
        self._window = int(fe.nb_max_samples)
        self._fe, self._tokenizer, self._model, self._device = fe, tok, model, device
        self.sample_rate = int(fe.sampling_rate)
        self.dim = int(model.config.projection_dim)
        try:  # one short dry run of both towers: catches a device that is not there, or a feature extractor
            # whose mel layout does not fit the model (fused "fusion" mels for an unfused model...)
            model.eval().requires_grad_(False).to(device)
            probe = self.audio_windows(np.zeros((1, self.sample_rate), dtype=np.float32))
            self.embed_text(["music"])
        except Exception as e:
            self._model = None
            raise EmbedderUnavailable(
                f"the CLAP checkpoint in {path} ({env}) does not run on {option_env(self.name, 'device')}={self.device}: "
                f"{type(e).__name__}: {e}"
            ) from e
        if probe.shape != (1, self.dim):
            self._model = None
            raise EmbedderUnavailable(f"the CLAP checkpoint in {path} makes {probe.shape[1]}-d audio vectors, not {self.dim}")
        self.version = f"clap-{checkpoint_fingerprint(path)}-w{self._window / self.sample_rate:g}sx{self.max_windows}-1"
        log.info("CLAP loaded from %s: %d Hz, %d-d (%s)", path, self.sample_rate, self.dim, self.version)

    # ---------------------------------------------------------------------------------------------- inference
    def audio_windows(self, windows: np.ndarray) -> np.ndarray:
        """(n, samples) windows, each at most the model's input length -> (n, dim) unit vectors."""
        import torch

        model, fe, device = self._model, self._fe, self._device
        out = []
        with torch.inference_mode():
            for i in range(0, len(windows), BATCH):
                feats = fe(list(windows[i : i + BATCH]), sampling_rate=self.sample_rate, return_tensors="pt")
                kwargs = {"input_features": feats["input_features"].to(device)}
                if "is_longer" in feats:
                    kwargs["is_longer"] = torch.as_tensor(feats["is_longer"]).to(device)
                out.append(model.get_audio_features(**kwargs).float().cpu().numpy())
        return l2_normalize(np.concatenate(out))

    def embed(self, audio: np.ndarray) -> EmbedResult:
        if self._model is None:
            raise EmbedderUnavailable("CLAP is not loaded: call load() first")
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or len(audio) < MIN_SECONDS * self.sample_rate:
            raise ValueError(f"CLAP needs mono audio of at least {MIN_SECONDS:g} s at {self.sample_rate} Hz")
        if not np.all(np.isfinite(audio)):
            raise ValueError("audio contains NaN or infinite samples")
        segments = self.audio_windows(split_windows(audio, self._window, self.max_windows))
        return EmbedResult(vector=l2_normalize(segments.mean(axis=0)), segments=segments)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors in the audio vectors' space."""
        if self._model is None:
            raise EmbedderUnavailable("CLAP is not loaded: call load() first")
        import torch

        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model, device = self._model, self._device
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), TEXT_BATCH):
                with self._tok_lock:
                    tokens = self._tokenizer(
                        texts[i : i + TEXT_BATCH], padding=True, truncation=True, max_length=self._max_tokens,
                        return_tensors="pt",
                    )
                emb = model.get_text_features(
                    input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
                )
                out.append(emb.float().cpu().numpy())
        return l2_normalize(np.concatenate(out))
